#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention at the paper model's attention
shapes, to stand beside `nemesis bench kernels --only attention`.

Times forward and backward of F.scaled_dot_product_attention on q, k, v
already laid out as [sequences, heads, length, head dim] (the gather of the
strided depth stream is not timed, which favours PyTorch), in bf16 on the
GPU by default. Synchronised, mean of the timed iterations after warm-up.

    python tools/torch_attention.py                  # cuda, bf16, paper shapes
    python tools/torch_attention.py --device cpu --dtype fp32 --quick
"""

import argparse
import time

import torch
import torch.nn.functional as F

# (name, sequences, length, heads, head dim): batch 4, grid 16 × 16 × 16,
# E = 768 in 8 heads; 64 visible tokens per slice in the masked encoder;
# 16 rows (8 axial rows + 8 NEMESIS tokens) of width 96 in the patch embedding.
PAPER = [
    ("encoder spatial (L=64)", 4 * 16, 64, 8, 96),
    ("encoder depth (T=16, strided)", 4 * 64, 16, 8, 96),
    ("decoder spatial (L=256)", 4 * 16, 256, 8, 96),
    ("decoder depth (T=16, strided)", 4 * 256, 16, 8, 96),
    ("patch embedding (16 rows)", 4 * 1024, 16, 8, 12),
]
QUICK = [("spatial (quick)", 2, 16, 2, 16), ("depth (quick)", 8, 4, 2, 12)]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device, iters, f):
    f()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        f()
    sync(device)
    return (time.perf_counter() - t0) / iters


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="tiny shapes, to check the tool")
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    dev = args.device
    print(f"torch {torch.__version__} scaled_dot_product_attention, {args.dtype}, {dev}")
    print(f"{'shape':<32} {'pass':<8} {'time (ms)':>10} {'TFLOP/s':>10}")
    for name, seqs, length, heads, dh in QUICK if args.quick else PAPER:
        q, k, v = (
            torch.randn(seqs, heads, length, dh, device=dev, dtype=dtype, requires_grad=True) for _ in range(3)
        )
        dout = torch.randn(seqs, heads, length, dh, device=dev, dtype=dtype)
        per_head = seqs * heads * length * length * dh

        def fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v)

        def fwd_bwd():
            y = F.scaled_dot_product_attention(q, k, v)
            torch.autograd.grad(y, (q, k, v), dout)

        tf = timed(dev, args.iters, fwd)
        tfb = timed(dev, args.iters, fwd_bwd)
        tb = max(tfb - tf, 0.0)
        for pass_, t, flops in [("fwd", tf, 4 * per_head), ("bwd", tb, 8 * per_head)]:
            rate = flops / t / 1e12 if t > 0 else float("nan")
            print(f"{name:<32} {pass_:<8} {t * 1e3:>10.3f} {rate:>10.2f}")
    print("bwd = (forward + backward) − forward; FLOPs as in nemesis bench kernels")


if __name__ == "__main__":
    main()
