#!/usr/bin/env python3
"""Data-parallel scaling of the `paper` preset, on paper (docs/SCALING.md).

A small model: per optimizer step each GPU computes `batch` superpatches
at a fraction of its bf16 rate, then the gradients are summed by NCCL in
buckets that start while the backward pass is still running (as DDP
does). What the backward pass cannot hide is exposed and lowers the
scaling efficiency. Inputs measured by this project are passed as flags
(defaults: the figures of docs/BENCHMARKS.md and `nemesis flops`); the
hardware figures are vendor numbers, and the achieved bus bandwidths and
the rate fraction are assumptions until a GPU run measures them.

    python3 tools/scaling_model.py                 # the table of docs/SCALING.md
    python3 tools/scaling_model.py --step-ms 31.5  # with a measured step time
"""

import argparse


def ring_allreduce_s(bytes_, ranks, bus_bw):
    """A ring all-reduce moves 2(n-1)/n of the data through each link
    (nccl-tests' definition of bus bandwidth)."""
    if ranks <= 1:
        return 0.0
    return 2.0 * (ranks - 1) / ranks * bytes_ / bus_bw


def allreduce_s(bytes_, gpus, gpus_per_node, nvlink_bw, node_bw):
    """Within a node over NVLink; across nodes, each node's share through
    its network adapters (NCCL's hierarchical rings), the two in sequence."""
    nodes = max(1, gpus // gpus_per_node)
    local = min(gpus, gpus_per_node)
    return ring_allreduce_s(bytes_, local, nvlink_bw) + ring_allreduce_s(bytes_, nodes, node_bw)


def efficiency(a, batch, gpus, grad_bytes, bucket_bytes):
    step = a.step_ms / 1e3 * batch / a.step_batch if a.step_ms else batch * a.flops / (a.mfu * a.peak)
    backward = step * a.backward_share
    buckets = max(1, -(-int(grad_bytes) // int(bucket_bytes)))
    latency = a.call_latency if gpus > 1 else 0.0
    comm = allreduce_s(grad_bytes, gpus, a.gpus_per_node, a.nvlink_bw, a.node_bw) + buckets * latency
    # The buckets overlap the backward pass; the last bucket cannot.
    last = allreduce_s(min(bucket_bytes, grad_bytes), gpus, a.gpus_per_node, a.nvlink_bw, a.node_bw) + latency
    exposed = max(0.0, comm - backward) + (last if gpus > 1 else 0.0)
    return step, comm, exposed, step / (step + exposed)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Measured by this project (docs/BENCHMARKS.md, `nemesis flops --preset paper`, `nemesis init`).
    p.add_argument("--params", type=float, default=57_568_259, help="parameters of the paper preset")
    p.add_argument("--flops", type=float, default=747.42e9, help="training FLOPs per superpatch")
    p.add_argument("--loader-rate", type=float, default=110.0, help="superpatches/s from the cache on 2 cores")
    p.add_argument("--loader-cores", type=float, default=2.0)
    p.add_argument("--step-ms", type=float, default=None, help="a measured step time (replaces the FLOP model)")
    p.add_argument("--step-batch", type=float, default=4.0, help="the batch of --step-ms")
    # Vendor figures and assumptions.
    p.add_argument("--peak", type=float, default=989e12, help="dense bf16 tensor-core rate (H100/H200 SXM)")
    p.add_argument("--mfu", type=float, default=0.40, help="fraction of --peak a step reaches")
    p.add_argument("--backward-share", type=float, default=2.0 / 3.0, help="backward's share of the step")
    p.add_argument("--nvlink-bw", type=float, default=360e9, help="achieved NCCL bus bandwidth in a node (B/s)")
    p.add_argument("--node-bw", type=float, default=80e9, help="achieved bus bandwidth between nodes (B/s), 4x200 Gb/s IB")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--call-latency", type=float, default=50e-6, help="fixed cost of one NCCL all-reduce (s)")
    a = p.parse_args()

    print("| gradients | batch per GPU | bucket | GPUs | step (ms) | all-reduce (ms) | exposed (ms) | efficiency |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype, size in (("fp32", 4), ("bf16", 2)):
        grad_bytes = a.params * size
        for batch in (1, 2, 4, 8):
            for bucket_mb in (25,):
                for gpus in (8, 64):
                    step, comm, exposed, eff = efficiency(a, batch, gpus, grad_bytes, bucket_mb * 1e6)
                    print(
                        f"| {dtype} | {batch} | {bucket_mb} MB | {gpus} | {step * 1e3:.1f} | {comm * 1e3:.2f} "
                        f"| {exposed * 1e3:.2f} | {eff * 100:.0f} % |"
                    )
    print()
    print("buckets, fp32 gradients, batch 4 per GPU, 64 GPUs:")
    print()
    print("| bucket | exposed (ms) | efficiency |")
    print("|---|---|---|")
    for bucket_mb in (1, 5, 25, 100):
        _, _, exposed, eff = efficiency(a, 4, 64, a.params * 4, bucket_mb * 1e6)
        print(f"| {bucket_mb} MB | {exposed * 1e3:.2f} | {eff * 100:.0f} % |")
    per_gpu = a.peak * a.mfu / a.flops if not a.step_ms else a.step_batch / (a.step_ms / 1e3)
    per_core = a.loader_rate / a.loader_cores
    print()
    print(
        f"data: each GPU consumes {per_gpu:.0f} superpatches/s; the cache loader makes {per_core:.0f} per core, "
        f"so each GPU needs {per_gpu / per_core:.1f} loader cores ({a.gpus_per_node * per_gpu / per_core:.0f} "
        f"for a node of {a.gpus_per_node})"
    )


if __name__ == "__main__":
    main()
