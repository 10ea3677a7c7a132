#!/usr/bin/env python3
"""Write the `.pt` fixtures of tests/convert.rs with torch itself, and each
good fixture's conversion by tools/convert_checkpoint.py (the cross-check):

    python3 tools/make_pt_fixtures.py tests/fixtures/pt

Two small models (16³ superpatches, 4³ patches, width 16, one block each;
with and without NEMESIS tokens) under the official parameter names, their
values seeded. The fixtures cover the containers and layouts torch.save
writes and the release uses:

- train_zip.pt: a training checkpoint in the zip format (PyTorch ≥ 1.6):
  model_state_dict beside a real AdamW state, a scheduler state, the epoch
  and a string; f32; the scalars saved with shape [1].
- bare_legacy.pt: a bare state dict in the legacy format (before 1.6),
  names with nn.DataParallel's `module.` prefix, storages in f16, bf16 and
  f64, and tensors that are views (a transpose, a slice at an offset).
- bad_global.pt: a state dict holding an object of a class of its own.
- foreign_args.pt: a training checkpoint with an argparse.Namespace beside
  the state dict (as training scripts often save their arguments).
- bad_layout.pt: neither a training checkpoint nor a bare state dict.

Needs torch and safetensors (any torch since 1.13).
"""
import argparse
import os
import sys
from types import SimpleNamespace

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import convert_checkpoint as conv  # noqa: E402
import torch_reference as ref  # noqa: E402

MICRO = dict(superpatch_size=[16, 16, 16], patch_size=[4, 4, 4], embed_dim=16, depth=1, num_heads=2,
             decoder_depth=1, decoder_num_heads=2, num_nemesis_tokens=2, ffn_dim=32)


def state_dict(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(shape, generator=g) * 0.1) for name, shape in ref.param_shapes(cfg).items()}


class Thing:
    """Not a tensor: the reader must refuse it by name."""

    def __init__(self):
        self.x = 1


def expected(src, out, extra):
    # Our own files: the full unpickler may read them (torch 1.13's restricted
    # one lacks some opcodes).
    args = conv.parse_args([src, out, "--num-heads", "2", "--decoder-num-heads", "2",
                            "--superpatch-size", "16", "16", "16", "--trust-pickle"] + extra)
    conv.convert(args)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/pt"
    os.makedirs(out, exist_ok=True)
    a = ref.make_config(MICRO)
    b = ref.make_config(dict(MICRO, use_nemesis_tokens=False))

    # A training checkpoint, zip format, as the release saves one.
    sd = state_dict(a, 1)
    for name in ("encoder.pe_scale", "decoder.pe_scale", "encoder.adaptive_agg.alpha"):
        sd[name] = sd[name].reshape(1)
    params = [torch.nn.Parameter(v.clone()) for v in sd.values()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    loss = sum((p * p).sum() for p in params)
    loss.backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    ckpt = {"epoch": 7, "model_state_dict": sd, "optimizer_state_dict": opt.state_dict(),
            "scheduler_state_dict": sched.state_dict(), "best_loss": 0.123, "note": "MAE_768_0.5"}
    torch.save(ckpt, os.path.join(out, "train_zip.pt"))
    expected(os.path.join(out, "train_zip.pt"), os.path.join(out, "train_zip.expected.safetensors"), [])

    # A bare state dict, legacy format, DataParallel names, mixed storages, views.
    sd = state_dict(b, 2)
    kinds = [torch.float16, torch.bfloat16, torch.float64]
    for i, name in enumerate(sorted(sd)):
        if sd[name].dim() == 2 and i % 4 == 0:
            # A transposed view: its storage holds the transpose.
            sd[name] = sd[name].t().contiguous().t()
        elif sd[name].dim() == 1 and i % 4 == 1:
            # A slice at an offset of a longer storage.
            n = sd[name].numel()
            sd[name] = torch.cat([torch.full((3,), 9.0), sd[name], torch.full((2,), 9.0)])[3:3 + n]
        else:
            sd[name] = sd[name].to(kinds[i % 3])
    sd = {f"module.{k}": v for k, v in sd.items()}
    torch.save(sd, os.path.join(out, "bare_legacy.pt"), _use_new_zipfile_serialization=False)
    expected(os.path.join(out, "bare_legacy.pt"), os.path.join(out, "bare_legacy.expected.safetensors"), [])

    bad = state_dict(a, 3)
    bad["encoder.norm.weight"] = Thing()
    torch.save({"model_state_dict": bad}, os.path.join(out, "bad_global.pt"))
    torch.save({"weights": [1, 2, 3], "epoch": 1}, os.path.join(out, "bad_layout.pt"))
    torch.save({"model_state_dict": state_dict(a, 4), "args": argparse.Namespace(lr=1e-4, epochs=50)},
               os.path.join(out, "foreign_args.pt"))
    for f in sorted(os.listdir(out)):
        print(f, os.path.getsize(os.path.join(out, f)))


if __name__ == "__main__":
    main()
