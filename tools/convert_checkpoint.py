#!/usr/bin/env python3
"""Convert an official NEMESIS PyTorch checkpoint into the engine's weights file.

Input: a PyTorch pickle, either a training checkpoint (a dict whose
``model_state_dict`` holds the official parameter names, beside optimizer and
scheduler state, e.g. ``MAE_768_0.5.pt``) or a bare state dict.

Output (docs/MODEL.md 10): a safetensors file of float32 tensors under the official
names (scalars stay 0-d), with metadata key ``config`` holding the model
configuration JSON (every MODEL.md §9 key).

The configuration comes from ``--config model.json``, from ``--preset``, or is
inferred from the tensor shapes.  Shapes do not fix the attention head counts,
the superpatch size, the mask ratios or the dropout: those come from flags,
defaulting to the paper values.  Explicit flags override a file or preset.

    python tools/convert_checkpoint.py MAE_768_0.5.pt nemesis-paper.safetensors
    python tools/convert_checkpoint.py ckpt.pt out.safetensors --preset small
"""

import argparse
import json
import math
import os
import re
import sys
import tempfile

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import torch_reference as ref  # noqa: E402


class ConvertError(Exception):
    pass


def note(msg):
    print(f"convert_checkpoint: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def load_state_dict(path, trust_pickle):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # restricted unpickler refused something
        if not trust_pickle:
            raise ConvertError(
                f"{path}: the restricted loader (weights_only=True) refused this file ({exc}). "
                "If you trust its origin, rerun with --trust-pickle, which unpickles it in full "
                "(a pickle can run arbitrary code).") from exc
        note("loading with weights_only=False (--trust-pickle)")
        obj = torch.load(path, map_location="cpu", weights_only=False)

    if isinstance(obj, dict) and "model_state_dict" in obj:
        sd = obj["model_state_dict"]
        others = sorted(k for k in obj if k != "model_state_dict")
        if others:
            note(f"taking model_state_dict; ignoring {', '.join(map(str, others))}")
    elif isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        sd = obj
        note("input is a bare state dict")
    else:
        keys = sorted(map(str, obj.keys())) if isinstance(obj, dict) else type(obj).__name__
        raise ConvertError(f"{path}: neither a checkpoint with model_state_dict nor a bare "
                           f"state dict (found {keys})")
    if not isinstance(sd, dict):
        raise ConvertError("model_state_dict is not a dict")
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        raise ConvertError(f"non-tensor entries in the state dict: {bad}")

    if any(k.startswith("module.") for k in sd):
        if not all(k.startswith("module.") for k in sd):
            raise ConvertError("some names carry the DataParallel prefix 'module.' and some do not")
        sd = {k[len("module."):]: v for k, v in sd.items()}
        note("stripped the DataParallel prefix 'module.'")
    return dict(sd)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

def _block_count(sd, prefix):
    idx = set()
    pat = re.compile(re.escape(prefix) + r"\.blocks\.(\d+)\.")
    for k in sd:
        m = pat.match(k)
        if m:
            idx.add(int(m.group(1)))
    if not idx:
        return 0
    n = max(idx) + 1
    if idx != set(range(n)):
        raise ConvertError(f"{prefix}.blocks has gaps: indices {sorted(idx)}")
    return n


def _shape(sd, name):
    if name not in sd:
        raise ConvertError(f"cannot infer the configuration: {name} is missing")
    return tuple(sd[name].shape)


def infer_config(sd, args):
    """Configuration fields that the shapes determine."""
    cfg = {}
    C = args.in_channels if args.in_channels is not None else 1
    cfg["in_channels"] = C
    if "encoder.adaptive_agg.linear.weight" in sd:
        cfg["use_nemesis_tokens"] = True
    elif "encoder.patch_embed.weight" in sd:
        cfg["use_nemesis_tokens"] = False
    else:
        raise ConvertError("cannot infer the configuration: neither encoder.adaptive_agg.linear.weight "
                           "nor encoder.patch_embed.weight is present")

    E = _shape(sd, "decoder.mask_token")[-1]
    P = _shape(sd, "decoder.head.weight")[0]
    cfg["embed_dim"] = E

    if cfg["use_nemesis_tokens"]:
        a = "encoder.adaptive_agg"
        _, pd, e = _shape(sd, f"{a}.pos_embed")
        _, K, _ = _shape(sd, f"{a}.mt")
        row = _shape(sd, f"{a}.embed.weight")[1]
        cfg["num_nemesis_tokens"] = K
        if args.patch_size is not None:
            patch = list(args.patch_size)
        else:
            if row % C:
                raise ConvertError(f"embed input width {row} is not a multiple of in_channels {C}")
            side = math.isqrt(row // C)
            if side * side * C != row:
                raise ConvertError(f"in-plane patch area {row // C} is not a square: pass --patch-size")
            patch = [pd, side, side]
        if patch[0] != pd:
            raise ConvertError(f"patch depth {patch[0]} disagrees with pos_embed ({pd} rows)")
    else:
        if args.num_nemesis_tokens is not None:
            cfg["num_nemesis_tokens"] = args.num_nemesis_tokens
        if args.patch_size is not None:
            patch = list(args.patch_size)
        else:
            if P % C:
                raise ConvertError(f"patch vector length {P} is not a multiple of in_channels {C}")
            side = round((P // C) ** (1.0 / 3.0))
            if side ** 3 * C != P:
                raise ConvertError(f"patch volume {P // C} is not a cube: pass --patch-size")
            patch = [side, side, side]
            note(f"patch size {patch} assumed cubic from the head's {P} outputs "
                 "(no NEMESIS-token embedding to read it from)")
    if math.prod(patch) * C != P:
        raise ConvertError(f"patch size {patch} × in_channels {C} ≠ decoder.head outputs {P}")
    cfg["patch_size"] = patch

    cfg["depth"] = _block_count(sd, "encoder")
    cfg["decoder_depth"] = _block_count(sd, "decoder")
    for prefix in ("encoder.blocks.0", "decoder.blocks.0"):
        if f"{prefix}.ffn.0.weight" in sd:
            cfg["ffn_dim"] = _shape(sd, f"{prefix}.ffn.0.weight")[0]
            break
    return cfg


def build_config(sd, args):
    explicit = {}
    if args.superpatch_size is not None:
        explicit["superpatch_size"] = list(args.superpatch_size)
    if args.patch_size is not None:
        explicit["patch_size"] = list(args.patch_size)
    for key in ("in_channels", "num_heads", "decoder_num_heads", "num_nemesis_tokens",
                "plane_mask_ratio", "axis_mask_ratio", "dropout"):
        v = getattr(args, key)
        if v is not None:
            explicit[key] = v

    if args.config:
        with open(args.config) as f:
            base = json.load(f)
        if not isinstance(base, dict):
            raise ConvertError(f"{args.config}: not a JSON object")
        base.update(explicit)
        return ref.make_config(base)
    if args.preset:
        return ref.make_config(explicit, preset=args.preset)

    inferred = infer_config(sd, args)
    guessed = []
    for key, flag in (("num_heads", "--num-heads"), ("decoder_num_heads", "--decoder-num-heads"),
                      ("superpatch_size", "--superpatch-size")):
        if key not in explicit:
            guessed.append(f"{key} = {ref.DEFAULT_CONFIG[key]} ({flag})")
    for key in ("plane_mask_ratio", "axis_mask_ratio", "dropout"):
        if key not in explicit:
            guessed.append(f"{key} = {ref.DEFAULT_CONFIG[key]}")
    if guessed:
        note("shapes do not fix these; taking the paper values: " + "; ".join(guessed))
    inferred.update(explicit)
    note("inferred from shapes: " + ", ".join(
        f"{k} = {inferred[k]}" for k in ("embed_dim", "patch_size", "depth", "decoder_depth",
                                         "num_nemesis_tokens", "ffn_dim", "use_nemesis_tokens")
        if k in inferred))
    return ref.make_config(inferred)


# ---------------------------------------------------------------------------
# Checking and writing
# ---------------------------------------------------------------------------

def check_and_cast(sd, cfg, drop):
    for name in drop:
        if name not in sd:
            raise ConvertError(f"--drop {name}: no such entry")
        del sd[name]
        note(f"dropped {name}")
    expected = ref.param_shapes(cfg)
    missing = [k for k in expected if k not in sd]
    unexpected = sorted(k for k in sd if k not in expected)
    problems = []
    if missing:
        problems.append(f"missing ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected ({len(unexpected)}): " + ", ".join(unexpected))
    out = {}
    for name, shape in expected.items():
        if name not in sd:
            continue
        t = sd[name]
        if not t.is_floating_point():
            problems.append(f"{name}: dtype {t.dtype} is not floating point")
            continue
        if tuple(t.shape) != shape:
            if shape == () and t.numel() == 1:
                note(f"{name}: shape {tuple(t.shape)} stored as a 0-d scalar")
                t = t.reshape(())
            else:
                problems.append(f"{name}: shape {tuple(t.shape)}, expected {shape}")
                continue
        t = t.detach().to(torch.float32).contiguous()
        if not torch.isfinite(t).all():
            problems.append(f"{name}: non-finite values")
            continue
        out[name] = t
    if problems:
        raise ConvertError("the state dict does not match the configuration "
                           f"{json.dumps(cfg)}:\n  " + "\n  ".join(problems))
    return out


def write_safetensors(tensors, cfg, path):
    from safetensors.torch import save_file

    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".convert-", suffix=".safetensors.tmp", dir=d)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"config": ref.config_json(cfg)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def convert(args):
    sd = load_state_dict(args.input, args.trust_pickle)
    cfg = build_config(sd, args)
    tensors = check_and_cast(sd, cfg, args.drop or [])
    write_safetensors(tensors, cfg, args.output)
    n = sum(t.numel() for t in tensors.values())
    note(f"wrote {args.output}: {len(tensors)} tensors, {n:,} parameters, config {ref.config_json(cfg)}")
    return cfg


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("input", help="official checkpoint (.pt) or bare state dict")
    ap.add_argument("output", help="safetensors file to write")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--config", help="model configuration JSON (MODEL.md §9 keys)")
    src.add_argument("--preset", choices=sorted(ref.PRESETS))
    ap.add_argument("--num-heads", type=int, help="encoder heads (default 8 when inferring)")
    ap.add_argument("--decoder-num-heads", type=int, help="decoder heads (default 8 when inferring)")
    ap.add_argument("--superpatch-size", type=int, nargs=3, metavar=("D", "H", "W"),
                    help="default 128 128 128 when inferring")
    ap.add_argument("--patch-size", type=int, nargs=3, metavar=("PD", "PH", "PW"),
                    help="needed only where shapes leave it open")
    ap.add_argument("--in-channels", type=int)
    ap.add_argument("--num-nemesis-tokens", type=int,
                    help="K, recorded for a checkpoint without NEMESIS tokens")
    ap.add_argument("--plane-mask-ratio", type=float)
    ap.add_argument("--axis-mask-ratio", type=float)
    ap.add_argument("--dropout", type=float)
    ap.add_argument("--drop", action="append", metavar="NAME",
                    help="discard this state-dict entry before checking (repeatable)")
    ap.add_argument("--trust-pickle", action="store_true",
                    help="unpickle in full if the restricted loader refuses the file")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        convert(args)
    except (ConvertError, ref.ConfigError, OSError) as exc:
        print(f"convert_checkpoint: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
