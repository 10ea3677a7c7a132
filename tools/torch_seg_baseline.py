#!/usr/bin/env python3
"""PyTorch timings of a segmentation training step, to stand beside `nemesis bench seg-step`.

Times forward, backward and AdamW of SPEC §14's model in
tools/torch_seg_reference.py (the encoder of tools/torch_reference.py at a
preset, the UNETR-style decoder with widths scaled by E/768) on random 0..1
superpatches and random labels, Dice + CE, in eager fp32 (or autocast bf16
on a GPU). Prints the median of the timed steps after warm-up.

    python tools/torch_seg_baseline.py --preset small --batch 2 --threads 2
    python tools/torch_seg_baseline.py --device cuda --preset paper --batch 2 --mode autocast
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402
import torch_seg_reference as seg  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=["paper", "small", "tiny"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--classes", type=int, default=9)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--freeze-encoder", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--mode", default="eager", choices=["eager", "autocast"])
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
    model = seg.NemesisSeg(cfg, args.classes).float().to(dev)
    model.train()
    if args.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5)
    D, H, W = cfg["superpatch_size"]
    x = torch.rand(args.batch, 1, D, H, W, device=dev)
    labels = torch.randint(0, args.classes, (args.batch, D, H, W), device=dev)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    times = []
    for s in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device_type=args.device, dtype=torch.bfloat16, enabled=args.mode == "autocast"):
            logits = model(x)
        loss = seg.dice_ce(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        dt = time.perf_counter() - t0
        if s >= args.warmup:
            times.append(dt)
        print(f"step {s}: {dt:.3f} s, loss {float(loss):.4f}{' (warm-up)' if s < args.warmup else ''}",
              file=sys.stderr)
    med = statistics.median(times)
    mode = {"eager": "eager fp32", "autocast": "autocast bf16"}[args.mode]
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} threads"
    print(
        f"torch {torch.__version__} {mode}, segmentation {args.preset}, batch {args.batch}, {args.classes} classes"
        f"{', encoder frozen' if args.freeze_encoder else ''}, {where}: median step {med:.3f} s "
        f"(min {min(times):.3f}, max {max(times):.3f}), {args.batch / med:.2f} crops/s"
    )


if __name__ == "__main__":
    main()
