#!/usr/bin/env python3
"""Independent PyTorch implementation of the segmentation model of SPEC §14.

The encoder is tools/torch_reference.py's (written from docs/MODEL.md); the
UNETR-style decoder, the Dice + cross-entropy loss and the BatchNorm running
update are written here from SPEC §14 alone, sharing no code with the Rust
engine. The fixtures it writes under tests/fixtures/ are what the engine's
segmentation model tests compare against.

Usage (torch, numpy and safetensors installed outside the repository):

    python tools/torch_seg_reference.py --self-test
    python tools/torch_seg_reference.py --out tests/fixtures

Everything is float64; dropout is off in the fixtures.
"""

import argparse
import os
import sys
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import Encoder, config_json, make_config, patchify  # noqa: E402

torch.set_default_dtype(torch.float64)

PAPER_CHANNELS = (192, 96, 48)


def scaled_channels(E):
    """The paper's widths scaled by E/768, rounded half up, at least 4."""
    return [max(4, (c * E + 384) // 768) for c in PAPER_CHANNELS]


def skip_blocks(depth):
    """Encoder blocks whose outputs are the skips, deeper first."""
    return [min(b, max(depth - 1, 0)) for b in (depth // 2, depth // 6)]


class UpBlock(nn.Module):
    """Trilinear ×2, then twice Conv3d 3³ (no bias) + BatchNorm3d + ReLU."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.ModuleList([
            nn.Sequential(nn.Conv3d(cin if j == 0 else cout, cout, 3, padding=1, bias=False),
                          nn.BatchNorm3d(cout), nn.ReLU())
            for j in range(2)
        ])

    def forward(self, x):
        D, H, W = x.shape[2:]
        x = F.interpolate(x, size=(2 * D, 2 * H, 2 * W), mode="trilinear", align_corners=False)
        for layer in self.conv:
            x = layer(x)
        return x


class SegDecoder(nn.Module):
    def __init__(self, E, channels, classes):
        super().__init__()
        ins = [E, channels[0], channels[1]]
        self.up_blocks = nn.ModuleList([UpBlock(ins[i], channels[i]) for i in range(3)])
        self.skip_projs = nn.ModuleList([nn.Conv3d(E, channels[i], 1) for i in range(2)])
        self.head = nn.Conv3d(channels[2], classes, 1)

    def forward(self, last, skips, grid, size):
        def to_grid(t):
            B, N, E = t.shape
            return t.transpose(1, 2).reshape(B, E, *grid)

        x = to_grid(last)
        for i, up in enumerate(self.up_blocks):
            x = up(x)
            if i < 2:
                s = self.skip_projs[i](to_grid(skips[i]))
                s = F.interpolate(s, size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)
                x = x + s
        x = self.head(x)
        if tuple(x.shape[2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)
        return x


class NemesisSeg(nn.Module):
    def __init__(self, cfg, classes, channels=None):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.channels = list(channels or scaled_channels(cfg["embed_dim"]))
        self.decoder = SegDecoder(cfg["embed_dim"], self.channels, classes)

    def encode(self, x):
        """Final tokens after encoder.norm and the tapped blocks' outputs."""
        enc = self.encoder
        tokens = patchify(x, self.cfg["patch_size"])
        h0 = enc.adaptive_agg(tokens) if enc.use_tokens else enc.patch_embed(tokens)
        h = h0 + enc.pe_scale * enc.pe
        Dp, Hp, Wp = enc.grid
        outs = []
        for blk in enc.blocks:
            h = blk(h, Dp, Hp * Wp)
            outs.append(h)
        taps = skip_blocks(len(enc.blocks))
        return enc.norm(h), [outs[t] for t in taps]

    def forward(self, x):
        last, skips = self.encode(x)
        return self.decoder(last, skips, self.encoder.grid, x.shape[2:])


def dice_ce(logits, labels, smooth=1e-5):
    """Dice (softmax, one-hot, background left out, per item and class,
    then the mean) + mean cross-entropy over voxels."""
    C = logits.shape[1]
    ce = F.cross_entropy(logits, labels)
    p = torch.softmax(logits, 1)
    onehot = F.one_hot(labels, C).permute(0, 4, 1, 2, 3).to(p.dtype)
    p, onehot = p[:, 1:], onehot[:, 1:]
    dims = (2, 3, 4)
    inter = (p * onehot).sum(dims)
    den = p.sum(dims) + onehot.sum(dims)
    dice = 1.0 - (2.0 * inter + smooth) / (den + smooth)
    return dice.mean() + ce


FIXTURES = {
    # Patch 4³: the decoder's ×8 overshoots the input, the logits are resized back.
    "seg_resize": dict(config=dict(superpatch_size=[16, 16, 16], patch_size=[4, 4, 4], embed_dim=24, depth=3,
                                   num_heads=2, decoder_depth=1, decoder_num_heads=2, num_nemesis_tokens=4,
                                   ffn_dim=40),
                       classes=3, channels=[12, 8, 6], batch=2, seed=31),
    # Patch 8: the decoder lands on the input exactly; linear patch embedding.
    "seg_exact": dict(config=dict(superpatch_size=[16, 8, 24], patch_size=[8, 4, 8], embed_dim=18, depth=2,
                                  num_heads=3, decoder_depth=1, decoder_num_heads=3, num_nemesis_tokens=2,
                                  ffn_dim=20, use_nemesis_tokens=False),
                      classes=4, channels=None, batch=2, seed=47),
}


def _perturb_all(model, gen, scale=0.05):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(1.0 + 0.2 * torch.rand(m.running_var.shape, generator=gen))


def build_fixture(spec):
    cfg = make_config(spec["config"])
    torch.manual_seed(spec["seed"])
    model = NemesisSeg(cfg, spec["classes"], spec["channels"])
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    _perturb_all(model, gen)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
    out = OrderedDict()
    for name, p in model.named_parameters():
        out[f"param.{name}"] = p.detach().clone()
    for name, b in model.named_buffers():
        if "running" in name:
            out[f"buffer.{name}"] = b.detach().clone()

    B, (D, H, W) = spec["batch"], cfg["superpatch_size"]
    x = torch.rand(B, 1, D, H, W, generator=gen)
    labels = torch.randint(0, spec["classes"], (B, D, H, W), generator=gen)

    model.eval()
    with torch.no_grad():
        out["out.eval_logits"] = model(x)
    model.train()
    model.zero_grad()
    logits = model(x)
    loss = dice_ce(logits, labels)
    loss.backward()
    out["input.x"] = x
    out["input.labels"] = labels.to(torch.int64)
    out["out.train_logits"] = logits.detach()
    out["out.loss"] = loss.detach()
    for name, b in model.named_buffers():
        if "running" in name:
            out[f"out.{name}"] = b.detach().clone()
    for name, p in model.named_parameters():
        if p.grad is None:
            raise RuntimeError(f"parameter {name} received no gradient")
        out[f"grad.{name}"] = p.grad.detach().clone()
    meta = dict(cfg)
    meta["num_classes"] = spec["classes"]
    meta["decoder_channels"] = model.channels
    return OrderedDict((k, v.contiguous()) for k, v in out.items()), meta


def self_test():
    # The decoder's output size, the scaled widths and the loss's limits.
    assert scaled_channels(768) == [192, 96, 48]
    assert scaled_channels(192) == [48, 24, 12]
    assert scaled_channels(64) == [16, 8, 4]
    assert skip_blocks(6) == [3, 1] and skip_blocks(2) == [1, 0]
    labels = torch.tensor([[[[0, 1, 1, 0]]]])
    sure = torch.tensor([[[[30.0, -30, -30, 30]]], [[[-30.0, 30, 30, -30]]]]).unsqueeze(0)
    assert float(dice_ce(sure, labels)) < 1e-6
    for spec in FIXTURES.values():
        t, _ = build_fixture(spec)
        assert t["out.train_logits"].shape[2:] == t["input.x"].shape[2:]
    print("self-test passed")


def write_fixtures(out_dir):
    import json
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    for name, spec in FIXTURES.items():
        tensors, meta = build_fixture(spec)
        cfg_json = json.loads(config_json(make_config(spec["config"])))
        cfg_json["num_classes"] = meta["num_classes"]
        cfg_json["decoder_channels"] = meta["decoder_channels"]
        path = os.path.join(out_dir, f"{name}.safetensors")
        save_file(dict(tensors), path + ".tmp", metadata={"config": json.dumps(cfg_json)})
        os.chmod(path + ".tmp", 0o644)
        os.replace(path + ".tmp", path)
        print(f"{path}: {len(tensors)} tensors, loss {float(tensors['out.loss']):.12g}, "
              f"{os.path.getsize(path):,} bytes")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--out", help="write the fixtures into this folder")
    a = ap.parse_args(argv)
    if a.self_test:
        self_test()
    if a.out:
        write_fixtures(a.out)
    if not (a.self_test or a.out):
        ap.print_help()


if __name__ == "__main__":
    main()
