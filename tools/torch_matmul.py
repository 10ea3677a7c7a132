#!/usr/bin/env python3
"""torch.matmul at the GEMM shapes of a training step, to stand beside `nemesis bench gemm`.

The same products as `nemesis bench gemm` prints (the QKV, out and FFN
projections at `--rows` tokens, forward, and the backward's transposed
products for QKV and the first FFN projection), f32, the median of
`--reps` runs after one warm-up. `nemesis bench gemm` prints the command
with the right sizes.

    python tools/torch_matmul.py --rows 2048 --embed 192 --ffn 768 --threads 2
"""

import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--embed", type=int, default=192)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    r, e, f = a.rows, a.embed, a.ffn
    # (name, A's shape as stored, B's shape as stored, transpose A, transpose B)
    shapes = [
        ("qkv  x·Wᵀ", (r, e), (3 * e, e), False, True),
        ("qkv  dY·W", (r, 3 * e), (3 * e, e), False, False),
        ("qkv  dYᵀ·X", (r, 3 * e), (r, e), True, False),
        ("out  x·Wᵀ", (r, e), (e, e), False, True),
        ("ffn1 x·Wᵀ", (r, e), (f, e), False, True),
        ("ffn1 dY·W", (r, f), (f, e), False, False),
        ("ffn1 dYᵀ·X", (r, f), (r, e), True, False),
        ("ffn2 x·Wᵀ", (r, f), (e, f), False, True),
    ]
    print(f"torch {torch.__version__}, {a.threads} threads, f32, median of {a.reps} runs")
    print(f"{'product':<12} {'m':>6} {'k':>6} {'n':>6} {'ms':>10} {'GFLOP/s':>10}")
    for name, sa, sb, ta, tb in shapes:
        A, B = torch.rand(*sa), torch.rand(*sb)
        opa = A.t() if ta else A
        opb = B.t() if tb else B
        m, k, n = opa.shape[0], opa.shape[1], opb.shape[1]
        torch.matmul(opa, opb)
        times = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            torch.matmul(opa, opb)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"{name:<12} {m:>6} {k:>6} {n:>6} {1e3 * med:>10.3f} {2 * m * k * n / med / 1e9:>10.1f}")


if __name__ == "__main__":
    main()
