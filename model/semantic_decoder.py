"""Semantic decoder: BEiT-v2 style ViT on the latent grid (docs/reference/model.md section 5).

``(B, C_latent, h, w)`` -> ``(B, h*w, width)`` patch tokens after ``fc_norm``; the tanh MLP
``decode_task_layer`` (in ``EvoTok``) maps them to the teacher's feature size.

Official details kept: patch embedding is a 1x1 conv; a CLS token is prepended and dropped at the end;
attention head dim is ``width // heads`` (so the inner width may be below ``width``, e.g. 85*12 = 1020);
``qkv`` has no bias parameter, instead ``q_bias`` and ``v_bias`` with a fixed zero k bias; exact GELU;
no layer-scale. Other grid sizes interpolate the position embedding bicubically.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evotok.model.config import SemanticDecoderConfig


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        inner = self.head_dim * heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(width, 3 * inner, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(inner))
        self.v_bias = nn.Parameter(torch.zeros(inner))
        self.proj = nn.Linear(inner, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, head_dim)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, width)


class SemanticDecoder(nn.Module):
    def __init__(self, cfg: SemanticDecoderConfig, latent_dim: int, grid: int) -> None:
        super().__init__()
        w = cfg.width
        self.grid = grid
        self.patch_embed = PatchEmbed(latent_dim, w)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, w))
        self.blocks = nn.ModuleList([Block(w, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_blocks)])
        self.fc_norm = nn.LayerNorm(w, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        with torch.no_grad():
            for i, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * i))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * i))

    def _pos(self, h: int, w: int) -> Tensor:
        if h == self.grid and w == self.grid:
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, latent: Tensor) -> Tensor:
        """``(B, C, h, w)`` -> ``(B, h*w, width)``."""
        b, _, h, w = latent.shape
        x = self.patch_embed(latent)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self._pos(h, w)
        for block in self.blocks:
            x = block(x)
        return self.fc_norm(x[:, 1:])
