#!/usr/bin/env python3
"""PyTorch timings of a NEMESIS training step, to stand beside `nemesis bench step`.

Times forward, backward and AdamW of the model in tools/torch_reference.py
(the same presets, MODEL.md §9) on random 0..1 superpatches with dual masks and
noise, with PyTorch's fused attention path: eager fp32, autocast bf16, or
torch.compile with autocast bf16. Prints the median of the timed steps after
warm-up (synchronised on the GPU).

    python tools/torch_baseline.py --preset small --batch 4 --threads 2
    python tools/torch_baseline.py --preset paper --batch 4 --threads 2 --steps 3
    python tools/torch_baseline.py --device cuda --preset paper --batch 4 --mode autocast
    python tools/torch_baseline.py --device cuda --preset paper --batch 4 --mode compile
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=["paper", "small", "tiny"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--mode", default="eager", choices=["eager", "autocast", "compile"],
                    help="eager fp32; autocast bf16; torch.compile with autocast bf16")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    ref.FAST_ATTENTION = True
    torch.manual_seed(0)
    cfg = ref.make_config(preset=args.preset)
    model = ref.NemesisMAE(cfg).float().to(dev)
    model.set_dropout(float(cfg["dropout"]))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    D, H, W = cfg["superpatch_size"]
    x = torch.rand(args.batch, 1, D, H, W, device=dev)
    forward = torch.compile(model) if args.mode == "compile" else model
    autocast = args.mode in ("autocast", "compile")

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    times = []
    warmup = max(args.warmup, 2) if args.mode == "compile" else args.warmup
    for s in range(warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        ids_keep, mask = ref.sample_dual_mask(cfg, args.batch)
        ids_keep, mask = ids_keep.to(dev), mask.to(dev)
        noisy = x + 0.03 * torch.randn_like(x)
        with torch.autocast(device_type=args.device, dtype=torch.bfloat16, enabled=autocast):
            pred, _ = forward(noisy, ids_keep)
            loss = ref.masked_loss(pred.float(), x, mask, cfg["patch_size"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        dt = time.perf_counter() - t0
        if s >= warmup:
            times.append(dt)
        print(f"step {s}: {dt:.3f} s{' (warm-up)' if s < warmup else ''}", file=sys.stderr)
    med = statistics.median(times)
    mode = {"eager": "eager fp32", "autocast": "autocast bf16", "compile": "torch.compile + autocast bf16"}[args.mode]
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} threads"
    print(
        f"torch {torch.__version__} {mode}, {args.preset}, batch {args.batch}, {where}: "
        f"median step {med:.3f} s (min {min(times):.3f}, max {max(times):.3f}), {args.batch / med:.2f} superpatches/s"
    )


if __name__ == "__main__":
    main()
