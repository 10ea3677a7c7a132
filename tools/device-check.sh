#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (../shared/ENGINEERING.md,
# "Running on a GPU"). Build here, copy the binary to .device/, then run this
# there through the device tool with carry [".device"]. Every part has its own
# time bound; logs go to $OUT; a summary table comes last.
#
#   cargo build --release && mkdir -p .device && cp target/release/nemesis .device/
#   (device tool) bash tools/device-check.sh check    # then: ... speed
set -uo pipefail
cd "$(dirname "$0")/.."
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

if [ ! -x "$BIN" ]; then
    echo "no binary at $BIN: build here and copy target/release/nemesis into .device/ first"
    exit 2
fi
WHAT="${1:-all}"   # check | speed | all (each fits one 10-minute device call)
echo "== nemesis ($WHAT)"
part version 10 "$BIN" --version
if [ "$WHAT" = check ] || [ "$WHAT" = all ]; then
    # Kernels, flash attention cases and whole training steps (tiny and
    # small, fp32 and bf16) against the CPU.
    part check-cuda 240 "$BIN" check --device cuda --seed 1
    if ! grep -q " 0 failed" "$OUT/check-cuda.log"; then
        # Isolate cuBLASLt and the flash kernels.
        part check-cuda-cublas 120 env NEMESIS_GEMM=cublas NEMESIS_ATTENTION=plain "$BIN" check --device cuda --seed 1 --steps tiny
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
    if command -v python3 >/dev/null && python3 -c "import torch" 2>/dev/null; then
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
    grep -h 'cuBLASLt refused' "$OUT"/*.log 2>/dev/null | head -n 1
fi
echo
echo "== summary"
printf '%s\n' "${SUMMARY[@]}"
