#!/usr/bin/env python3
"""Two runs of `nemesis pretrain` side by side: how far apart their losses,
gradient norms and final weights are. With --init (the weights both started
from), the final weights' difference is also given relative to how far the
first run moved from them: the effect of a change on the update.

    python3 tools/compare_runs.py RUN_A RUN_B [--init W.safetensors]

Standard library only (reads safetensors' f32 tensors itself).
"""
import argparse
import array
import json
import math
import struct
import sys
from pathlib import Path


def weights(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {t['dtype']}, only F32 is read")
        start, end = t["data_offsets"]
        a = array.array("f")
        a.frombytes(raw[8 + n + start : 8 + n + end])
        out[name] = a
    return out


def train_lines(run):
    lines = [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return {l["step"]: l for l in lines if l.get("kind") == "train"}


def val_lines(run):
    lines = [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return {l["step"]: l["val_loss"] for l in lines if l.get("kind") == "val"}


def dist(a, b):
    return math.sqrt(sum(sum((x - y) ** 2 for x, y in zip(a[k], b[k])) for k in a))


def norm(a):
    return math.sqrt(sum(sum(x * x for x in v) for v in a.values()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--init", help="the weights both runs started from")
    args = p.parse_args()
    ta, tb = train_lines(args.a), train_lines(args.b)
    steps = sorted(set(ta) & set(tb))
    if not steps:
        sys.exit("the runs share no training step")
    rel = lambda x, y: abs(x - y) / max(abs(y), 1e-30)
    dl = [rel(tb[s]["loss"], ta[s]["loss"]) for s in steps]
    dg = [rel(tb[s]["grad_norm"], ta[s]["grad_norm"]) for s in steps]
    print(f"steps compared: {len(steps)} ({steps[0]}..{steps[-1]})")
    print(f"loss: largest relative difference {max(dl):.2e} (step {steps[dl.index(max(dl))]}), last {dl[-1]:.2e}")
    print(f"gradient norm: first step {dg[0]:.2e}, median {sorted(dg)[len(dg) // 2]:.2e}, largest {max(dg):.2e}")
    va, vb = val_lines(args.a), val_lines(args.b)
    for s in sorted(set(va) & set(vb)):
        print(f"validation loss at step {s}: {va[s]:.6f} vs {vb[s]:.6f} ({rel(vb[s], va[s]):.2e})")
    la = json.loads((Path(args.a) / "latest.json").read_text())
    lb = json.loads((Path(args.b) / "latest.json").read_text())
    wa, wb = weights(Path(args.a) / la["weights"]), weights(Path(args.b) / lb["weights"])
    d = dist(wa, wb)
    print(f"weights at step {la['step']}: ‖B − A‖ / ‖A‖ = {d / norm(wa):.2e}")
    if args.init:
        w0 = weights(args.init)
        moved = dist(wa, w0)
        print(f"  relative to A's own update ‖A − init‖: {d / moved:.2e}")


if __name__ == "__main__":
    main()
