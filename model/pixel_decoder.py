"""Pixel decoder: LlamaGen / VQGAN-style conv decoder (docs/reference/model.md section 4), channels configurable.

Input ``(B, z_channels, h, w)`` (after ``post_quant_conv``), output ``(B, 3, h*2^L, w*2^L)`` raw (no tanh;
clamp to [-1, 1] at inference). Key names follow the official layout: ``conv_in``, ``mid.{0,1,2}``,
``conv_blocks.{i}.res.{j}`` / ``.attn.{j}`` / ``.upsample.conv``, ``norm_out``, ``conv_out``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evotok.model.config import PixelDecoderConfig


def _norm(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, c), c, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """GN, swish, conv3x3, GN, swish, conv3x3; 1x1 ``nin_shortcut`` when channels change."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if self.nin_shortcut is not None else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 q/k/v/proj_out convs and a residual connection."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(c, groups)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).reshape(b, c, h * w).transpose(1, 2)  # (B, N, C)
        k = self.k(y).reshape(b, c, h * w)  # (B, C, N)
        v = self.v(y).reshape(b, c, h * w).transpose(1, 2)  # (B, N, C)
        attn = torch.softmax((q @ k) * (c**-0.5), dim=-1)  # (B, N, N)
        out = (attn @ v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DecoderLevel(nn.Module):
    def __init__(self, cin: int, cout: int, n_res: int, attn: bool, upsample: bool, groups: int) -> None:
        super().__init__()
        self.res = nn.ModuleList([ResBlock(cin if j == 0 else cout, cout, groups) for j in range(n_res)])
        self.attn = nn.ModuleList([AttnBlock(cout, groups) for _ in range(n_res)]) if attn else nn.ModuleList()
        self.upsample = Upsample(cout) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for j, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        return self.upsample(x) if self.upsample is not None else x


class PixelDecoder(nn.Module):
    def __init__(self, cfg: PixelDecoderConfig) -> None:
        super().__init__()
        g = cfg.norm_groups
        mults = cfg.ch_mult
        block_in = cfg.ch * mults[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = nn.ModuleList([ResBlock(block_in, block_in, g), AttnBlock(block_in, g), ResBlock(block_in, block_in, g)])
        levels = []
        n = len(mults)
        for i, mult in enumerate(reversed(mults)):  # lowest resolution first
            block_out = cfg.ch * mult
            levels.append(
                DecoderLevel(
                    block_in,
                    block_out,
                    cfg.num_res_blocks + 1,
                    attn=cfg.attn_at_latent_res and i == 0,
                    upsample=i != n - 1,
                    groups=g,
                )
            )
            block_in = block_out
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, 3, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        """``(B, z_channels, h, w)`` -> ``(B, 3, H, W)`` raw output (about [-1, 1])."""
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
