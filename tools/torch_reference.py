#!/usr/bin/env python3
"""Independent PyTorch implementation of the NEMESIS model described in docs/MODEL.md.

This file is written from docs/MODEL.md alone and shares no code with the Rust
engine; the fixtures it writes under tests/fixtures/ are what the engine's
model tests compare against.

Usage (torch, numpy and safetensors installed in a virtual environment
outside the repository):

    python tools/torch_reference.py --self-test
    python tools/torch_reference.py --out tests/fixtures
    python tools/torch_reference.py --flops

Everything is computed in float64.  Dropout is controllable through
``NemesisMAE.set_dropout``; the fixtures are made with dropout off while
masking and noise stay on.
"""

import argparse
import json
import math
import os
import sys
from collections import OrderedDict

import torch
import torch.nn as nn

torch.set_default_dtype(torch.float64)

# ---------------------------------------------------------------------------
# Configuration (MODEL.md §9)
# ---------------------------------------------------------------------------

DEFAULT_CONFIG = OrderedDict(
    [
        ("superpatch_size", [128, 128, 128]),
        ("patch_size", [8, 8, 8]),
        ("in_channels", 1),
        ("embed_dim", 768),
        ("depth", 6),
        ("num_heads", 8),
        ("decoder_depth", 3),
        ("decoder_num_heads", 8),
        ("num_nemesis_tokens", 8),
        ("ffn_dim", 1024),
        ("plane_mask_ratio", 0.5),
        ("axis_mask_ratio", 0.5),
        ("dropout", 0.1),
        ("use_nemesis_tokens", True),
    ]
)

PRESETS = {
    "paper": dict(superpatch_size=[128, 128, 128], patch_size=[8, 8, 8], embed_dim=768, depth=6,
                  num_heads=8, decoder_depth=3, decoder_num_heads=8, num_nemesis_tokens=8,
                  ffn_dim=1024),
    "small": dict(superpatch_size=[64, 64, 64], patch_size=[8, 8, 8], embed_dim=192, depth=4,
                  num_heads=6, decoder_depth=2, decoder_num_heads=6, num_nemesis_tokens=8,
                  ffn_dim=768),
    "tiny": dict(superpatch_size=[32, 32, 32], patch_size=[8, 8, 8], embed_dim=64, depth=2,
                 num_heads=4, decoder_depth=1, decoder_num_heads=4, num_nemesis_tokens=4,
                 ffn_dim=128),
}

PRESET_PARAM_COUNTS = {"paper": 57_568_259, "small": 3_761_795, "tiny": 219_395}


class ConfigError(ValueError):
    pass


def make_config(overrides=None, preset=None):
    """Full configuration: defaults, then a preset, then explicit overrides.

    Unknown keys are an error; missing keys take the default (MODEL.md §9)."""
    cfg = OrderedDict((k, list(v) if isinstance(v, list) else v) for k, v in DEFAULT_CONFIG.items())
    layers = []
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r} (expected one of {sorted(PRESETS)})")
        layers.append(PRESETS[preset])
    if overrides:
        layers.append(overrides)
    for layer in layers:
        unknown = sorted(set(layer) - set(DEFAULT_CONFIG))
        if unknown:
            raise ConfigError(f"unknown configuration keys: {unknown}")
        for k, v in layer.items():
            cfg[k] = list(v) if isinstance(v, (list, tuple)) else v
    validate_config(cfg)
    return cfg


def validate_config(cfg):
    for key in ("superpatch_size", "patch_size"):
        v = cfg[key]
        if len(v) != 3 or not all(isinstance(x, int) and x > 0 for x in v):
            raise ConfigError(f"{key} must be three positive integers, got {v}")
    for key in ("in_channels", "embed_dim", "num_heads", "decoder_num_heads", "num_nemesis_tokens",
                "ffn_dim"):
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")
    for key in ("depth", "decoder_depth"):
        if not isinstance(cfg[key], int) or cfg[key] < 0:
            raise ConfigError(f"{key} must be a non-negative integer, got {cfg[key]!r}")
    for key in ("plane_mask_ratio", "axis_mask_ratio"):  # the clamps of MODEL.md §4 cover 1
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= 1.0):
            raise ConfigError(f"{key} must be in [0, 1], got {v!r}")
    v = cfg["dropout"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v < 1.0):
        raise ConfigError(f"dropout must be in [0, 1), got {v!r}")
    if not isinstance(cfg["use_nemesis_tokens"], bool):
        raise ConfigError("use_nemesis_tokens must be a boolean")
    for s, p, axis in zip(cfg["superpatch_size"], cfg["patch_size"], "DHW"):
        if s % p != 0:
            raise ConfigError(f"patch size {p} does not divide superpatch size {s} along {axis}")
    E = cfg["embed_dim"]
    for key in ("num_heads", "decoder_num_heads"):
        if E % cfg[key] != 0:
            raise ConfigError(f"embed_dim {E} is not divisible by {key} {cfg[key]}")
    if cfg["use_nemesis_tokens"]:
        K = cfg["num_nemesis_tokens"]
        if E % K != 0:
            raise ConfigError(f"embed_dim {E} is not divisible by num_nemesis_tokens {K}")
        if (E // K) % cfg["num_heads"] != 0:
            raise ConfigError(f"token width {E // K} is not divisible by num_heads {cfg['num_heads']}")


def config_json(cfg):
    return json.dumps(cfg)


def grid_of(cfg):
    return tuple(s // p for s, p in zip(cfg["superpatch_size"], cfg["patch_size"]))


def patch_dim(cfg):
    pd, ph, pw = cfg["patch_size"]
    return pd * ph * pw * cfg["in_channels"]


# ---------------------------------------------------------------------------
# Positional table (MODEL.md §5.3)
# ---------------------------------------------------------------------------

def sincos_row(p, m):
    """[sin(p f_0) .. sin(p f_{half-1}), cos(p f_0) .. cos(p f_{half-1})], zero-padded to m."""
    half = m // 2
    row = [0.0] * m
    for j in range(half):
        f = 10000.0 ** (-j / half)
        row[j] = math.sin(p * f)
        row[half + j] = math.cos(p * f)
    return row


def positional_table(grid, E, dtype=None):
    """N×E table; values computed in double precision, returned in dtype
    (default: torch's default dtype, float64 in this file)."""
    Dp, Hp, Wp = grid
    Ex = E // 3
    Ey = E // 3
    Ez = E - 2 * (E // 3)
    rows = []
    for dp in range(Dp):
        for hp in range(Hp):
            for wp in range(Wp):
                rows.append(sincos_row(dp, Ez) + sincos_row(hp, Ey) + sincos_row(wp, Ex))
    return torch.tensor(rows, dtype=torch.float64).to(dtype or torch.get_default_dtype())


def check_positional_table():
    pe = positional_table((2, 3, 4), 10)
    expected = torch.tensor([0, 0, 1, 1, .8415, .5403, 0, .8415, .5403, 0], dtype=torch.float64)
    assert pe.shape == (24, 10), pe.shape
    assert torch.allclose(pe[5], expected, atol=5e-5), (pe[5], expected)


# ---------------------------------------------------------------------------
# Patchify / unpatchify (MODEL.md §1)
# ---------------------------------------------------------------------------

def patchify(x, patch_size):
    """B×C×D×H×W → B×N×P, token n = (dp·Hp + hp)·Wp + wp, vector order [kd][kh][kw][c]."""
    B, C, D, H, W = x.shape
    pd, ph, pw = patch_size
    Dp, Hp, Wp = D // pd, H // ph, W // pw
    assert Dp * pd == D and Hp * ph == H and Wp * pw == W
    t = x.reshape(B, C, Dp, pd, Hp, ph, Wp, pw)
    t = t.permute(0, 2, 4, 6, 3, 5, 7, 1)  # B, Dp, Hp, Wp, pd, ph, pw, C
    return t.reshape(B, Dp * Hp * Wp, pd * ph * pw * C)


def unpatchify(tokens, patch_size, grid, in_channels):
    B = tokens.shape[0]
    pd, ph, pw = patch_size
    Dp, Hp, Wp = grid
    C = in_channels
    t = tokens.reshape(B, Dp, Hp, Wp, pd, ph, pw, C)
    t = t.permute(0, 7, 1, 4, 2, 5, 3, 6)  # B, C, Dp, pd, Hp, ph, Wp, pw
    return t.reshape(B, C, Dp * pd, Hp * ph, Wp * pw)


# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------

def _mha(dim, heads, dropout):
    return nn.MultiheadAttention(dim, heads, dropout=dropout, bias=True, batch_first=True)


# Timing runs (tools/torch_baseline.py) switch this on to use PyTorch's
# fused scaled-dot-product path; the fixtures and the FLOP counter keep the
# explicit bmm path.
FAST_ATTENTION = False


def _attend(mha, x):
    # Self-attention, no mask.  need_weights stays at its default so that the
    # attention products go through explicit bmm calls (also what the FLOP
    # counter sees).
    if FAST_ATTENTION:
        return mha(x, x, x, need_weights=False)[0]
    return mha(x, x, x)[0]


class AdaptiveAggregation(nn.Module):
    """MODEL.md §5.1: linear path, NEMESIS-token path and the sigmoid gate."""

    def __init__(self, cfg):
        super().__init__()
        pd, ph, pw = cfg["patch_size"]
        C = cfg["in_channels"]
        E = cfg["embed_dim"]
        K = cfg["num_nemesis_tokens"]
        e = E // K
        self.pd, self.row, self.K, self.e = pd, ph * pw * C, K, e
        self.linear = nn.Linear(pd * ph * pw * C, E)
        self.embed = nn.Linear(ph * pw * C, e)
        self.pos_embed = nn.Parameter(torch.empty(1, pd, e))
        self.mt = nn.Parameter(torch.empty(1, K, e))
        self.norm_qkv = nn.LayerNorm(e, eps=1e-5)
        self.attn = _mha(e, cfg["num_heads"], cfg["dropout"])
        self.proj = nn.Linear(e, e)
        self.alpha = nn.Parameter(torch.tensor(0.5))
        nn.init.trunc_normal_(self.pos_embed, std=0.01, a=-2.0, b=2.0)
        nn.init.xavier_uniform_(self.mt)

    def forward(self, x):
        B, Nv, P = x.shape
        lin = self.linear(x)
        rows = x.reshape(B * Nv, self.pd, self.row)
        u = self.embed(rows) + self.pos_embed
        t = self.mt.expand(B * Nv, self.K, self.e)
        z = torch.cat([u, t], dim=1)
        z = self.norm_qkv(z)
        a = _attend(self.attn, z)
        a = self.proj(a)  # on all pd + K rows
        tok = a[:, self.pd:, :].reshape(B, Nv, self.K * self.e)
        g = torch.sigmoid(self.alpha)
        return (1.0 - g) * lin + g * tok


class MATB(nn.Module):
    """MODEL.md §5.4, Masked Anatomical Transformer Block."""

    def __init__(self, E, heads, F, dropout):
        super().__init__()
        self.spatial_attn = _mha(E, heads, dropout)
        self.depth_attn = _mha(E, heads, dropout)
        self.norm1 = nn.LayerNorm(E, eps=1e-5)
        self.norm2 = nn.LayerNorm(E, eps=1e-5)
        self.ffn = nn.Sequential(nn.Linear(E, F), nn.GELU(), nn.Dropout(dropout), nn.Linear(F, E),
                                 nn.Dropout(dropout))

    def forward(self, x, T, L):
        B, M, E = x.shape
        assert M == T * L, (M, T, L)
        g = x.reshape(B, T, L, E)
        h = self.norm1(g)
        hs = h.reshape(B * T, L, E)
        o_s = _attend(self.spatial_attn, hs).reshape(B, T, L, E)
        hd = h.permute(0, 2, 1, 3).reshape(B * L, T, E)
        o_d = _attend(self.depth_attn, hd).reshape(B, L, T, E).permute(0, 2, 1, 3)
        g = g + (o_s + o_d) / 2.0
        g = self.norm2(g)
        g = g + self.ffn(g)
        return g.reshape(B, M, E)


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        E = cfg["embed_dim"]
        self.grid = grid_of(cfg)
        self.use_tokens = cfg["use_nemesis_tokens"]
        if self.use_tokens:
            self.adaptive_agg = AdaptiveAggregation(cfg)
        else:
            self.patch_embed = nn.Linear(patch_dim(cfg), E)
        self.pe_scale = nn.Parameter(torch.tensor(0.1))
        self.blocks = nn.ModuleList(
            [MATB(E, cfg["num_heads"], cfg["ffn_dim"], cfg["dropout"]) for _ in range(cfg["depth"])])
        self.norm = nn.LayerNorm(E, eps=1e-5)
        self.register_buffer("pe", positional_table(self.grid, E), persistent=False)

    def forward(self, tokens, ids_keep):
        """tokens: B×N×P patch vectors (noisy input), ids_keep: B×Nv ascending."""
        B, N, P = tokens.shape
        Nv = ids_keep.shape[1]
        Dp = self.grid[0]
        assert Nv % Dp == 0, "every depth slice must keep the same number of tokens"
        vis = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(B, Nv, P))
        h0 = self.adaptive_agg(vis) if self.use_tokens else self.patch_embed(vis)
        h = h0 + self.pe_scale * self.pe[ids_keep]
        for blk in self.blocks:
            h = blk(h, Dp, Nv // Dp)
        return self.norm(h)


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        E = cfg["embed_dim"]
        self.grid = grid_of(cfg)
        self.mask_token = nn.Parameter(torch.empty(1, 1, E))
        self.pe_scale = nn.Parameter(torch.tensor(0.1))
        self.blocks = nn.ModuleList(
            [MATB(E, cfg["decoder_num_heads"], cfg["ffn_dim"], cfg["dropout"])
             for _ in range(cfg["decoder_depth"])])
        self.norm = nn.LayerNorm(E, eps=1e-5)
        self.head = nn.Linear(E, patch_dim(cfg))
        self.register_buffer("pe", positional_table(self.grid, E), persistent=False)
        nn.init.xavier_uniform_(self.mask_token)

    def forward(self, latent, ids_keep):
        B, Nv, E = latent.shape
        Dp, Hp, Wp = self.grid
        N, S = Dp * Hp * Wp, Hp * Wp
        y = self.mask_token.expand(B, N, E)
        y = y.scatter(1, ids_keep.unsqueeze(-1).expand(B, Nv, E), latent)
        y = y + self.pe_scale * self.pe
        for blk in self.blocks:
            y = blk(y, Dp, S)
        y = self.norm(y)
        return self.head(y)


class NemesisMAE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = OrderedDict(cfg)
        self.grid = grid_of(cfg)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def num_tokens(self):
        Dp, Hp, Wp = self.grid
        return Dp * Hp * Wp

    def set_dropout(self, p):
        """Sets every dropout probability: attention probabilities and FFN."""
        for m in self.modules():
            if isinstance(m, nn.MultiheadAttention):
                m.dropout = p
            elif isinstance(m, nn.Dropout):
                m.p = p

    def all_ids(self, B, device=None):
        return torch.arange(self.num_tokens, device=device).unsqueeze(0).expand(B, -1).contiguous()

    def encode(self, x, ids_keep=None):
        """Encoder output; without ids_keep this is inference (nothing masked)."""
        tokens = patchify(x, self.cfg["patch_size"])
        if ids_keep is None:
            ids_keep = self.all_ids(x.shape[0], x.device)
        return self.encoder(tokens, ids_keep)

    def forward(self, x_noisy, ids_keep=None):
        """Returns (pred B×N×P, latent B×Nv×E)."""
        # Kept quirk of the public release (MODEL.md §6): the decoder's scale is
        # overwritten with the encoder's before every forward pass.
        with torch.no_grad():
            self.decoder.pe_scale.copy_(self.encoder.pe_scale)
        tokens = patchify(x_noisy, self.cfg["patch_size"])
        if ids_keep is None:
            ids_keep = self.all_ids(x_noisy.shape[0], x_noisy.device)
        latent = self.encoder(tokens, ids_keep)
        pred = self.decoder(latent, ids_keep)
        return pred, latent


# ---------------------------------------------------------------------------
# Masking, loss, metrics (MODEL.md §4, 7)
# ---------------------------------------------------------------------------

def mask_counts(cfg):
    Dp, Hp, Wp = grid_of(cfg)
    S = Hp * Wp
    s_v = min(max(math.floor(S * (1.0 - float(cfg["plane_mask_ratio"]))), 1), S)
    a_v = min(max(math.floor(s_v * (1.0 - float(cfg["axis_mask_ratio"]))), 1), s_v)
    return s_v, a_v


def sample_dual_mask(cfg, B, generator=None):
    """Returns (ids_keep B×Nv int64 ascending, mask B×N uint8 with 1 = masked)."""
    Dp, Hp, Wp = grid_of(cfg)
    S, N = Hp * Wp, Dp * Hp * Wp
    s_v, a_v = mask_counts(cfg)
    ids = []
    for _ in range(B):
        plane = torch.randperm(S, generator=generator)[:s_v]
        kept = []
        for d in range(Dp):
            pick = plane[torch.randperm(s_v, generator=generator)[:a_v]]
            kept.append(d * S + pick)
        ids.append(torch.sort(torch.cat(kept)).values)
    ids_keep = torch.stack(ids).to(torch.int64)
    mask = torch.ones(B, N, dtype=torch.uint8)
    mask.scatter_(1, ids_keep, 0)
    return ids_keep, mask


def masked_loss(pred, x_clean, mask, patch_size):
    target = patchify(x_clean, patch_size)
    e = ((pred - target) ** 2).mean(dim=-1)
    m = mask.to(pred.dtype)
    if m.sum() == 0:
        return e.mean()
    return (e * m).sum() / m.sum()


def psnr(recon, x_clean):
    mse = ((recon - x_clean) ** 2).mean()
    return -10.0 * torch.log10(mse + 1e-8)


# ---------------------------------------------------------------------------
# Expected parameter names and shapes (written out independently of the
# modules above; the self-test checks that both agree)
# ---------------------------------------------------------------------------

def _mha_shapes(prefix, d):
    return [(f"{prefix}.in_proj_weight", (3 * d, d)), (f"{prefix}.in_proj_bias", (3 * d,)),
            (f"{prefix}.out_proj.weight", (d, d)), (f"{prefix}.out_proj.bias", (d,))]


def _matb_shapes(prefix, E, F):
    out = _mha_shapes(f"{prefix}.spatial_attn", E) + _mha_shapes(f"{prefix}.depth_attn", E)
    out += [(f"{prefix}.norm1.weight", (E,)), (f"{prefix}.norm1.bias", (E,)),
            (f"{prefix}.norm2.weight", (E,)), (f"{prefix}.norm2.bias", (E,)),
            (f"{prefix}.ffn.0.weight", (F, E)), (f"{prefix}.ffn.0.bias", (F,)),
            (f"{prefix}.ffn.3.weight", (E, F)), (f"{prefix}.ffn.3.bias", (E,))]
    return out


def param_shapes(cfg):
    """OrderedDict official name → shape tuple for a configuration."""
    pd, ph, pw = cfg["patch_size"]
    C, E, F = cfg["in_channels"], cfg["embed_dim"], cfg["ffn_dim"]
    P = pd * ph * pw * C
    out = []
    if cfg["use_nemesis_tokens"]:
        K = cfg["num_nemesis_tokens"]
        e = E // K
        a = "encoder.adaptive_agg"
        out += [(f"{a}.linear.weight", (E, P)), (f"{a}.linear.bias", (E,)),
                (f"{a}.embed.weight", (e, ph * pw * C)), (f"{a}.embed.bias", (e,)),
                (f"{a}.pos_embed", (1, pd, e)), (f"{a}.mt", (1, K, e)),
                (f"{a}.norm_qkv.weight", (e,)), (f"{a}.norm_qkv.bias", (e,))]
        out += _mha_shapes(f"{a}.attn", e)
        out += [(f"{a}.proj.weight", (e, e)), (f"{a}.proj.bias", (e,)), (f"{a}.alpha", ())]
    else:
        out += [("encoder.patch_embed.weight", (E, P)), ("encoder.patch_embed.bias", (E,))]
    out += [("encoder.pe_scale", ())]
    for i in range(cfg["depth"]):
        out += _matb_shapes(f"encoder.blocks.{i}", E, F)
    out += [("encoder.norm.weight", (E,)), ("encoder.norm.bias", (E,))]
    out += [("decoder.mask_token", (1, 1, E)), ("decoder.pe_scale", ())]
    for i in range(cfg["decoder_depth"]):
        out += _matb_shapes(f"decoder.blocks.{i}", E, F)
    out += [("decoder.norm.weight", (E,)), ("decoder.norm.bias", (E,)),
            ("decoder.head.weight", (P, E)), ("decoder.head.bias", (P,))]
    return OrderedDict(out)


def param_count(cfg):
    return sum(math.prod(s) for s in param_shapes(cfg).values())


# ---------------------------------------------------------------------------
# Self-test
# ---------------------------------------------------------------------------

def _naive_mha(mha, x):
    """softmax(q kᵀ/√dh) v per head, written out from MODEL.md §5.2 (one sequence)."""
    L, d = x.shape
    heads = mha.num_heads
    dh = d // heads
    W, b = mha.in_proj_weight, mha.in_proj_bias
    q = x @ W[:d].T + b[:d]
    k = x @ W[d:2 * d].T + b[d:2 * d]
    v = x @ W[2 * d:].T + b[2 * d:]
    outs = []
    for h in range(heads):
        cols = slice(h * dh, (h + 1) * dh)
        s = (q[:, cols] @ k[:, cols].T) / math.sqrt(dh)
        outs.append(torch.softmax(s, dim=-1) @ v[:, cols])
    o = torch.cat(outs, dim=1)
    return o @ mha.out_proj.weight.T + mha.out_proj.bias


def _naive_layernorm(ln, x):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias


def _naive_matb(blk, x, T, L):
    B, M, E = x.shape
    out = torch.empty_like(x)
    for b in range(B):
        g = x[b].reshape(T, L, E)
        h = _naive_layernorm(blk.norm1, g)
        o_s = torch.stack([_naive_mha(blk.spatial_attn, h[t]) for t in range(T)])
        o_d = torch.stack([_naive_mha(blk.depth_attn, h[:, l]) for l in range(L)], dim=1)
        g = g + (o_s + o_d) / 2
        g = _naive_layernorm(blk.norm2, g)
        f1, f2 = blk.ffn[0], blk.ffn[3]
        z = g @ f1.weight.T + f1.bias
        z = 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
        g = g + z @ f2.weight.T + f2.bias
        out[b] = g.reshape(M, E)
    return out


def _perturb(model, gen, scale=0.05):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def self_test(verbose=True):
    def say(msg):
        if verbose:
            print(msg)

    check_positional_table()
    say("PE check (E=10, grid (2,3,4), token 5): ok")

    for name, expected in PRESET_PARAM_COUNTS.items():
        cfg = make_config(preset=name)
        analytic = param_count(cfg)
        with torch.device("meta"):
            model = NemesisMAE(cfg)
        sd = model.state_dict()
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        assert shapes == dict(param_shapes(cfg)), f"{name}: module names/shapes differ from param_shapes"
        counted = sum(p.numel() for p in model.parameters())
        assert counted == analytic == expected, (name, counted, analytic, expected)
        say(f"parameter count {name}: {counted:,} (MODEL.md §9: {expected:,}) ok")
    cfg = make_config({"use_nemesis_tokens": False}, preset="tiny")
    with torch.device("meta"):
        model = NemesisMAE(cfg)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == dict(param_shapes(cfg))
    say("ablation (use_nemesis_tokens=false) names/shapes: ok")

    # patchify: token index and patch vector order, with C = 2
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 6, 8, 4, generator=g)
    ps = (3, 2, 2)
    tok = patchify(x, ps)
    Dp, Hp, Wp = 2, 4, 2
    for (b, dp, hp, wp) in [(0, 0, 0, 0), (1, 1, 2, 1), (0, 1, 3, 0)]:
        n = (dp * Hp + hp) * Wp + wp
        i = 0
        for kd in range(3):
            for kh in range(2):
                for kw in range(2):
                    for c in range(2):
                        assert tok[b, n, i] == x[b, c, dp * 3 + kd, hp * 2 + kh, wp * 2 + kw]
                        i += 1
    assert torch.equal(unpatchify(tok, ps, (Dp, Hp, Wp), 2), x)
    say("patchify / unpatchify: ok")

    # mask sampling
    for over in [dict(superpatch_size=[8, 16, 12], patch_size=[2, 4, 4], plane_mask_ratio=0.6,
                      axis_mask_ratio=0.3),
                 dict(superpatch_size=[16, 16, 16], patch_size=[4, 4, 4])]:
        cfg = make_config(over)
        Dp, Hp, Wp = grid_of(cfg)
        S = Hp * Wp
        s_v, a_v = mask_counts(cfg)
        ids, mask = sample_dual_mask(cfg, 3, torch.Generator().manual_seed(5))
        assert ids.shape == (3, Dp * a_v)
        for b in range(3):
            row = ids[b].tolist()
            assert row == sorted(row) and len(set(row)) == len(row)
            planes = set()
            for d in range(Dp):
                part = row[d * a_v:(d + 1) * a_v]
                assert all(d * S <= t < (d + 1) * S for t in part)
                planes.update(t - d * S for t in part)
            assert len(planes) <= s_v
            assert int(mask[b].sum()) == Dp * Hp * Wp - Dp * a_v
            assert all(mask[b, t] == 0 for t in row)
    assert mask_counts(make_config(dict(superpatch_size=[8, 16, 12], patch_size=[2, 4, 4],
                                        plane_mask_ratio=0.6, axis_mask_ratio=0.3))) == (4, 2)
    assert mask_counts(make_config()) == (128, 64)
    say("dual mask sampling: ok")

    # initialisation (MODEL.md §8)
    torch.manual_seed(0)
    cfg = make_config(preset="tiny")
    model = NemesisMAE(cfg)
    sd = model.state_dict()
    a = "encoder.adaptive_agg"
    assert float(sd[f"{a}.alpha"]) == 0.5 and float(sd["encoder.pe_scale"]) == 0.1
    assert float(sd["decoder.pe_scale"]) == 0.1
    assert torch.all(sd[f"{a}.attn.in_proj_bias"] == 0) and torch.all(sd[f"{a}.attn.out_proj.bias"] == 0)
    assert torch.all(sd["encoder.blocks.0.norm1.weight"] == 1) and torch.all(sd["encoder.norm.bias"] == 0)
    E, K = 64, 4
    e = E // K
    assert sd[f"{a}.mt"].abs().max() <= math.sqrt(6 / (K * e + e))
    assert sd["decoder.mask_token"].abs().max() <= math.sqrt(6 / (2 * E))
    assert sd["encoder.blocks.0.spatial_attn.in_proj_weight"].abs().max() <= math.sqrt(6 / (4 * E))
    assert sd["encoder.blocks.0.spatial_attn.out_proj.weight"].abs().max() <= 1 / math.sqrt(E)
    assert sd["encoder.blocks.0.ffn.3.bias"].abs().max() <= 1 / math.sqrt(128)
    assert sd[f"{a}.pos_embed"].std() < 0.02
    say("initialisation: ok")

    # MATB against a written-out loop version
    gen = torch.Generator().manual_seed(3)
    blk = MATB(12, 3, 20, 0.1)
    _perturb(blk, gen, 0.1)
    blk.eval()
    xin = torch.randn(2, 3 * 5, 12, generator=gen)
    with torch.no_grad():
        assert torch.allclose(blk(xin, 3, 5), _naive_matb(blk, xin, 3, 5), atol=1e-12)
    say("MATB vs written-out loops: ok")

    # whole model: adaptive embedding against written-out loops, and the
    # pe_scale quirk against finite differences
    cfg = make_config(dict(superpatch_size=[8, 8, 8], patch_size=[4, 4, 4], embed_dim=12, depth=1,
                           num_heads=3, decoder_depth=1, decoder_num_heads=2,
                           num_nemesis_tokens=2, ffn_dim=16))
    torch.manual_seed(4)
    model = NemesisMAE(cfg)
    _perturb(model, gen)
    model.set_dropout(0.0)
    agg = model.encoder.adaptive_agg
    xv = torch.rand(2, 3, 64, generator=gen)
    with torch.no_grad():
        want = torch.empty(2, 3, 12)
        for b in range(2):
            for j in range(3):
                v = xv[b, j]
                lin = agg.linear.weight @ v + agg.linear.bias
                rows = [agg.embed.weight @ v[k * 16:(k + 1) * 16] + agg.embed.bias + agg.pos_embed[0, k]
                        for k in range(4)]
                z = torch.stack(rows + [agg.mt[0, k] for k in range(2)])
                z = _naive_layernorm(agg.norm_qkv, z)
                o = _naive_mha(agg.attn, z) @ agg.proj.weight.T + agg.proj.bias
                tok = torch.cat([o[4], o[5]])
                s = torch.sigmoid(agg.alpha)
                want[b, j] = (1 - s) * lin + s * tok
        assert torch.allclose(agg(xv), want, atol=1e-12)
    say("adaptive patch embedding vs written-out loops: ok")

    with torch.no_grad():
        model.decoder.pe_scale.fill_(0.55)
        model.encoder.pe_scale.fill_(0.7)
    xc = torch.rand(2, 1, 8, 8, 8, generator=gen)
    ids, mask = sample_dual_mask(cfg, 2, gen)

    def loss_at(scale):
        with torch.no_grad():
            model.encoder.pe_scale.fill_(scale)
        pred, _ = model(xc, ids)
        return masked_loss(pred, xc, mask, cfg["patch_size"])

    model.zero_grad()
    loss_at(0.7).backward()
    ge = float(model.encoder.pe_scale.grad)
    gd = float(model.decoder.pe_scale.grad)
    with torch.no_grad():
        h = 1e-6
        fd = (float(loss_at(0.7 + h)) - float(loss_at(0.7 - h))) / (2 * h)
    assert abs(fd - (ge + gd)) < 1e-7 * max(1.0, abs(fd)), (fd, ge, gd)
    assert abs(gd) > 1e-9 and abs(ge) > 1e-9
    say(f"pe_scale quirk: d loss/d s (finite diff) {fd:.9g} = encoder grad {ge:.9g} "
        f"+ decoder grad {gd:.9g}: ok")
    say("self-test passed")


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------

FIXTURES = {
    "mae_tokens": dict(
        batch=2, seed=1234,
        config=dict(superpatch_size=[16, 16, 16], patch_size=[4, 4, 4], in_channels=1, embed_dim=24,
                    depth=2, num_heads=2, decoder_depth=1, decoder_num_heads=3,
                    num_nemesis_tokens=4, ffn_dim=40, plane_mask_ratio=0.5, axis_mask_ratio=0.5,
                    dropout=0.1, use_nemesis_tokens=True)),
    "mae_linear": dict(
        batch=3, seed=5678,
        config=dict(superpatch_size=[8, 16, 12], patch_size=[2, 4, 4], in_channels=1, embed_dim=18,
                    depth=1, num_heads=3, decoder_depth=2, decoder_num_heads=2,
                    num_nemesis_tokens=2, ffn_dim=20, plane_mask_ratio=0.6, axis_mask_ratio=0.3,
                    dropout=0.1, use_nemesis_tokens=False)),
}


def build_fixture(cfg, B, seed):
    torch.manual_seed(seed)
    model = NemesisMAE(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    _perturb(model, gen, 0.05)
    with torch.no_grad():
        if cfg["use_nemesis_tokens"]:
            model.encoder.adaptive_agg.alpha.fill_(0.3)
        model.encoder.pe_scale.fill_(0.7)
        model.decoder.pe_scale.fill_(0.55)
    model.set_dropout(0.0)  # dropout off; masking and noise on
    model.train()

    out = OrderedDict()
    for name, p in model.named_parameters():
        out[f"param.{name}"] = p.detach().clone()

    D, H, W = cfg["superpatch_size"]
    C = cfg["in_channels"]
    x = torch.rand(B, C, D, H, W, generator=gen)
    noisy = x + 0.05 * torch.randn(B, C, D, H, W, generator=gen)
    ids_keep, mask = sample_dual_mask(cfg, B, gen)

    with torch.no_grad():
        eval_tokens = model.encode(x)

    model.zero_grad()
    pred, latent = model(noisy, ids_keep)
    loss = masked_loss(pred, x, mask, cfg["patch_size"])
    loss.backward()
    recon = unpatchify(pred.detach(), cfg["patch_size"], grid_of(cfg), C)

    out["input.clean"] = x
    out["input.noisy"] = noisy
    out["mask.ids_keep"] = ids_keep.to(torch.int64)
    out["mask.mask"] = mask.to(torch.uint8)
    out["out.eval_tokens"] = eval_tokens
    out["out.pred"] = pred.detach()
    out["out.reconstruction"] = recon
    out["out.loss"] = loss.detach()
    out["out.psnr"] = psnr(recon, x).detach()
    out["out.latent"] = latent.detach()
    for name, p in model.named_parameters():
        if p.grad is None:
            raise RuntimeError(f"parameter {name} received no gradient")
        out[f"grad.{name}"] = p.grad.detach().clone()
    return OrderedDict((k, v.contiguous()) for k, v in out.items())


def write_fixtures(out_dir):
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    for name, spec in FIXTURES.items():
        cfg = make_config(spec["config"])
        tensors = build_fixture(cfg, spec["batch"], spec["seed"])
        path = os.path.join(out_dir, f"{name}.safetensors")
        tmp = path + ".tmp"
        save_file(dict(tensors), tmp, metadata={"config": config_json(cfg)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        print(f"{path}: {len(tensors)} tensors, loss {float(tensors['out.loss']):.12g}, "
              f"psnr {float(tensors['out.psnr']):.9g}, {os.path.getsize(path):,} bytes")


# ---------------------------------------------------------------------------
# FLOPs (MODEL.md §13)
# ---------------------------------------------------------------------------

def count_flops(preset="paper"):
    from torch.utils.flop_counter import FlopCounterMode

    cfg = make_config(preset=preset)
    # Counts depend on shapes only; float32 keeps the CPU run short.
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(0)
        model = NemesisMAE(cfg)
        model.train()
        D, H, W = cfg["superpatch_size"]
        x = torch.rand(1, cfg["in_channels"], D, H, W)
        ids, mask = sample_dual_mask(cfg, 1, torch.Generator().manual_seed(0))
        with FlopCounterMode(display=False) as fc:
            pred, _ = model(x, ids)
            loss = masked_loss(pred, x, mask, cfg["patch_size"])
        fwd = fc.get_total_flops()
        per_module = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
        # The paper's headline figure: multiply-adds of the FFNs, the
        # patch-embedding linear layers and the head only.
        dense = sum(v for k, v in per_module.items()
                    if k.endswith((".ffn", ".head", ".adaptive_agg.linear", ".adaptive_agg.embed",
                                   ".adaptive_agg.proj", ".encoder.patch_embed")))
        with FlopCounterMode(display=False) as fc2:
            pred, _ = model(x, ids)
            loss = masked_loss(pred, x, mask, cfg["patch_size"])
            loss.backward()
        both = fc2.get_total_flops()
    finally:
        torch.set_default_dtype(torch.float64)
    return fwd, both, dense // 2


# ---------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the fixtures into this folder")
    ap.add_argument("--self-test", action="store_true", help="PE check, parameter counts, small checks")
    ap.add_argument("--flops", action="store_true",
                    help="training-forward FLOPs of the paper preset, one superpatch (MODEL.md §13)")
    args = ap.parse_args(argv)
    if not (args.out or args.self_test or args.flops):
        ap.print_help()
        return 2
    check_positional_table()
    if args.self_test:
        self_test()
    if args.out:
        write_fixtures(args.out)
    if args.flops:
        fwd, both, dense_macs = count_flops("paper")
        print(f"paper preset, one {make_config(preset='paper')['superpatch_size']} superpatch, "
              f"mask ratios 0.5/0.5, batch 1:")
        print(f"  training forward:        {fwd / 1e9:.1f} GFLOPs ({fwd:,})")
        print(f"  forward + backward:      {both / 1e9:.1f} GFLOPs ({both:,})")
        print(f"  multiply-adds of FFNs, patch-embedding linears and head only (forward): "
              f"{dense_macs / 1e9:.1f} G ({dense_macs:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
