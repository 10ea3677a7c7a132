#!/usr/bin/env bash
# The one prepared script for a lent GPU machine. Build here, put the binary
# and the precompiled kernels in .device/, then run this there through the
# device tool with carry [".device"]. Every part has its own time bound;
# logs go to $OUT; a summary table comes last. docs/BENCHMARKS.md, "A first
# GPU run", says what each part prints and what to look for.
#
#   tools/device-check.sh prepare      # here: build, copy, precompile (CI's NVRTC 13.0)
#   (device tool) bash tools/device-check.sh check    # ~5 min; then:
#   (device tool) bash tools/device-check.sh speed    # ~8 min
set -uo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:-check}"   # prepare | check | speed | all

if [ "$WHAT" = prepare ]; then
    # NVRTC of the GPU machine's CUDA (13.0), as CI installs it.
    cache="${NEMESIS_CI_CACHE:-$HOME/.cache/nemesis-ci}/nvrtc-13.0"
    if ! ls "$cache"/nvidia/*/lib/libnvrtc.so.* >/dev/null 2>&1; then
        python3 -m pip install --quiet --disable-pip-version-check --target "$cache" "nvidia-cuda-nvrtc==13.0.*" || exit 1
    fi
    lib=$(ls "$cache"/nvidia/*/lib/libnvrtc.so.1* | head -n 1)
    cargo build --release || exit 1
    rm -rf .device && mkdir -p .device/kernels
    # Without its debug info (64 MB with, 6 without): the device tool
    # carries at most 64 MiB.
    strip -o .device/nemesis target/release/nemesis 2>/dev/null || cp target/release/nemesis .device/
    LD_LIBRARY_PATH="$(dirname "$lib")" NEMESIS_NVRTC="$lib" .device/nemesis compile-kernels --arch sm_90 --out .device/kernels || exit 1
    du -sh .device
    exit 0
fi

OUT="${OUT:-$(mktemp -d)}"
BIN="${NEMESIS_BIN:-.device/nemesis}"
declare -a SUMMARY

part() {
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    SUMMARY+=("$(printf '%-28s rc=%-4s %4ss  %s' "$name" "$rc" "$((SECONDS - start))" "$OUT/$name.log")")
    tail -n 5 "$OUT/$name.log"
    return $rc
}

echo "== machine"
part nvidia-smi 30 nvidia-smi
# NVRTC of the machine's own CUDA, so the code it emits matches the driver.
NVRTC=$(ldconfig -p 2>/dev/null | awk '/libnvrtc\.so\.[0-9]+ /{print $NF; exit}')
if [ -z "$NVRTC" ] && command -v nvcc >/dev/null; then
    NVRTC=$(ls "$(dirname "$(dirname "$(command -v nvcc)")")"/lib64/libnvrtc.so.* 2>/dev/null | head -n 1)
fi
[ -n "$NVRTC" ] && export NEMESIS_NVRTC="$NVRTC" && export LD_LIBRARY_PATH="$(dirname "$NVRTC")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "NVRTC: ${NVRTC:-none found}"
# Kernels compiled here by CI's NVRTC 13.0 (tools/device-check.sh prepare):
# used when the machine's NVRTC is 13.0 too, else compiled on first use.
[ -d .device/kernels ] && export NEMESIS_KERNEL_CACHE="$PWD/.device/kernels"
echo "precompiled kernels: $(ls .device/kernels 2>/dev/null | wc -l) files"

if [ ! -x "$BIN" ]; then
    echo "no binary at $BIN: run tools/device-check.sh prepare here first"
    exit 2
fi
echo "== nemesis ($WHAT)"
part version 10 "$BIN" --version
if [ "$WHAT" = check ] || [ "$WHAT" = all ]; then
    # Kernels, the tensor-core fragment probes, flash attention cases and
    # whole training steps (tiny and small, fp32 and bf16) against the CPU;
    # cuBLASLt says why it refuses anything.
    if ! part check-cuda 240 env CUBLASLT_LOG_LEVEL=1 "$BIN" check --device cuda --seed 1; then
        # Once more with every launch waited for, so a fault is blamed on
        # the kernel that made it; then cuBLAS and the plain attention
        # kernels in place of cuBLASLt and the flash kernels.
        part check-cuda-sync 180 env CUDA_LAUNCH_BLOCKING=1 NEMESIS_CUDA_SYNC=1 CUBLASLT_LOG_LEVEL=1 \
            "$BIN" check --device cuda --seed 1 --steps tiny
        part check-cuda-cublas 120 env NEMESIS_GEMM=cublas NEMESIS_ATTENTION=plain \
            "$BIN" check --device cuda --seed 1 --steps tiny
    fi
    # The data-parallel path: one GPU rank started as torchrun would,
    # joined through NCCL (the image's pip wheel nvidia-nccl-cu13 has
    # libnccl.so.2), its gradients all-reduced every step. 12 tiny steps.
    if [ -z "${NEMESIS_NCCL:-}" ] && command -v python3 >/dev/null; then
        NEMESIS_NCCL=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
        [ -n "$NEMESIS_NCCL" ] && export NEMESIS_NCCL
    fi
    echo "NCCL: ${NEMESIS_NCCL:-none given, the library path}"
    part nccl-one-rank 120 "$BIN" pretrain --preset tiny --batch 2 --steps 12 --val-every 6 --device cuda \
        --nproc-per-node 1 --collective-timeout 60 --out "$OUT/nccl-run"
    grep -h "NCCL [0-9]\|world:\|finished" "$OUT/nccl-one-rank.log" 2>/dev/null
    if command -v compute-sanitizer >/dev/null; then
        part sanitizer-memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
            "$BIN" check --device cuda --seed 1 --steps tiny
        part sanitizer-racecheck 150 compute-sanitizer --tool racecheck --error-exitcode 9 --kernel-name kns=flash \
            "$BIN" check --device cuda --seed 1 --steps none
    else
        echo "compute-sanitizer: not on this machine"
    fi
fi
if [ "$WHAT" = speed ] || [ "$WHAT" = all ]; then
    part bench-kernels 150 "$BIN" bench kernels --device cuda --only all --iters 20
    part ours-paper-fp32 120 "$BIN" bench step --preset paper --batch 4 --steps 5 --device cuda
    part ours-paper-bf16 120 "$BIN" bench step --preset paper --batch 4 --steps 5 --device cuda --bf16
    # The same without step graphs (every step call by call), for their effect.
    part ours-paper-bf16-nographs 120 "$BIN" bench step --preset paper --batch 4 --steps 5 --device cuda --bf16 --no-graphs
    # And keeping f32 values beside every bf16 activation, for what storing
    # bf16 alone buys (time and the device memory peak).
    part ours-paper-bf16-f32kept 90 env NEMESIS_BF16_ACTIVATIONS=0 "$BIN" bench step --preset paper --batch 4 --steps 3 --device cuda --bf16
    # The segmentation step (SPEC §14) at the paper's shapes, batch 2.
    part ours-seg-paper-fp32 120 "$BIN" bench seg-step --preset paper --batch 2 --steps 3 --device cuda
    if command -v python3 >/dev/null && python3 -c "import torch" 2>/dev/null; then
        part torch-seg-paper-eager 120 python3 tools/torch_seg_baseline.py --device cuda --preset paper --batch 2 --steps 3
        part torch-sdpa 90 python3 tools/torch_attention.py --device cuda --dtype bf16 --iters 20
        for mode in eager autocast compile; do
            part "torch-paper-$mode" 240 python3 tools/torch_baseline.py --device cuda --preset paper --batch 4 --steps 5 --mode "$mode"
        done
    fi
    median() { grep -o 'median step [0-9.]* s' "$OUT/$1.log" 2>/dev/null | awk '{print $3}' | tail -n 1; }
    echo
    echo "== paper preset, batch 4: step time and ratio (PyTorch time / ours)"
    ours=$(median ours-paper-bf16)
    for run in ours-paper-fp32 ours-paper-bf16 ours-paper-bf16-nographs ours-paper-bf16-f32kept torch-paper-eager torch-paper-autocast torch-paper-compile; do
        t=$(median "$run")
        if [ -n "$t" ] && [ -n "$ours" ]; then
            printf '%-24s %8s s   ours bf16 is %sx faster\n' "$run" "$t" "$(awk -v a="$t" -v b="$ours" 'BEGIN{printf "%.2f", a/b}')"
        else
            printf '%-24s %8s\n' "$run" "${t:-n/a}"
        fi
    done
    grep -H 'device memory: peak' "$OUT"/ours-paper-*.log 2>/dev/null
    grep -h 'no bf16-output algorithm' "$OUT"/*.log 2>/dev/null | sort -u | head -n 3
fi
echo
echo "== summary"
printf '%s\n' "${SUMMARY[@]}"
grep -h " passed, .* failed" "$OUT"/check-*.log 2>/dev/null
grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$OUT"/sanitizer-*.log 2>/dev/null
