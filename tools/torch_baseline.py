#!/usr/bin/env python3
"""PyTorch timings of a NEMESIS training step, to stand beside `nemesis bench step`.

Times forward, backward and AdamW of the model in tools/torch_reference.py
(the same SPEC presets) on random 0..1 superpatches with dual masks and
noise, eager float32, with PyTorch's fused attention path. Prints the median
of the timed steps after warm-up.

    python tools/torch_baseline.py --preset small --batch 4 --threads 2
    python tools/torch_baseline.py --preset paper --batch 4 --threads 2 --steps 3

CPU only for now; the GPU modes (autocast bf16, torch.compile) come with the
CUDA backend's speed work.
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
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    ref.FAST_ATTENTION = True
    torch.manual_seed(0)
    cfg = ref.make_config(preset=args.preset)
    model = ref.NemesisMAE(cfg).float()
    model.set_dropout(float(cfg["dropout"]))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    D, H, W = cfg["superpatch_size"]
    x = torch.rand(args.batch, 1, D, H, W)
    times = []
    for s in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        ids_keep, mask = ref.sample_dual_mask(cfg, args.batch)
        noisy = x + 0.03 * torch.randn_like(x)
        pred, _ = model(noisy, ids_keep)
        loss = ref.masked_loss(pred, x, mask, cfg["patch_size"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if s >= args.warmup:
            times.append(dt)
        print(f"step {s}: {dt:.3f} s{' (warm-up)' if s < args.warmup else ''}", file=sys.stderr)
    med = statistics.median(times)
    print(
        f"torch {torch.__version__} eager fp32, {args.preset}, batch {args.batch}, {args.threads} threads: "
        f"median step {med:.3f} s (min {min(times):.3f}, max {max(times):.3f}), {args.batch / med:.2f} superpatches/s"
    )


if __name__ == "__main__":
    main()
