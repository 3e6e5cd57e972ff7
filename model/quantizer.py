"""Residual vector quantizer of EvoTok (RQ-VAE style; arXiv 2603.12108, docs/reference/model.md section 3).

One codebook per depth, each ``codebook_size`` x ``dim`` plus one zero padding row (index ``codebook_size``
is the *null code*). Nearest codes by squared L2, always in fp32 (autocast disabled), ties to the first index.
Codebooks have no gradients: in training mode they follow an EMA of assigned residuals with warm-up and
dead-code restart, and their statistics are all-reduced under ``torch.distributed``.

Shapes: latent ``(B, h, w, C)`` channels last; codes ``(B, h, w, D)`` int64, depth last, coarse to fine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from evotok.model.config import QuantizerConfig

# Work in chunks of this many distance entries (rows x codes) to bound memory (64 MiB fp32).
_CHUNK_ELEMENTS = 1 << 24


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VQCodebook(nn.Module):
    """One depth's codebook. Buffers keep the official key names (``weight``, ``cluster_size_ema``,
    ``embed_ema``, ``step``) so official checkpoints map one to one."""

    weight: Tensor
    cluster_size_ema: Tensor
    embed_ema: Tensor
    step: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size, self.dim = size, dim
        weight = torch.randn(size + 1, dim)
        weight[size] = 0.0  # null code
        self.register_buffer("weight", weight)
        self.register_buffer("cluster_size_ema", torch.zeros(size))
        self.register_buffer("embed_ema", weight[:size].clone())
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def codes(self) -> Tensor:
        """``(K, C)`` the searchable rows (without the null row)."""
        return self.weight[: self.size]

    def nearest(self, r: Tensor) -> Tensor:
        """``(N, C)`` fp32 residuals -> ``(N,)`` int64 index of the nearest code (first on ties).

        ``argmin ||r - e||^2 = argmin (||e||^2 - 2 r.e)``: the constant ``||r||^2`` is dropped. The exported
        quantizer graph uses exactly this expression so ONNX Runtime reproduces the same indices.
        """
        out = [dists.argmin(dim=1) for dists in self._distances(r)]
        return torch.cat(out) if out else r.new_zeros((0,), dtype=torch.long)

    def _distances(self, r: Tensor) -> list[Tensor]:
        """``(N, C)`` fp32 residuals -> ``(n, K)`` chunks of ``||e||^2 - 2 r.e`` (rows bounded in memory)."""
        e = self.codes.float()
        e_sq = (e * e).sum(dim=1)  # (K,)
        rows = max(1, _CHUNK_ELEMENTS // self.size)
        return [e_sq.unsqueeze(0) - 2.0 * (chunk @ e.t()) for chunk in r.split(rows)]

    def margin(self, r: Tensor, idx: Tensor) -> Tensor:
        """``(N, C)`` fp32 residuals and their nearest codes ``(N,)`` -> ``(N,)`` the second-nearest minus the
        nearest distance, relative to the size of the terms summed for the nearest code ``e``
        (``||e||^2 + 2 ||r|| ||e||``): fp32 rounding moves a distance by about 1e-7 of that, so a margin near
        that size is a tie that another backend's summation order may break either way."""
        gaps = [d.topk(2, dim=1, largest=False).values for d in self._distances(r)]
        gap = torch.cat([g[:, 1] - g[:, 0] for g in gaps]) if gaps else r.new_zeros((0,))
        best = self.codes.float()[idx]
        scale = (best * best).sum(dim=1) + 2.0 * r.norm(dim=1) * best.norm(dim=1)
        return gap / scale.clamp_min(1e-30)

    @torch.no_grad()
    def ema_update(self, r: Tensor, idx: Tensor, cfg: QuantizerConfig) -> None:
        """EMA of counts and sums, warm-up, dead-code restart, weight refresh (docs/reference/model.md section 3.3)."""
        k = self.size
        counts = torch.bincount(idx, minlength=k).to(r.dtype)  # (K,)
        sums = torch.zeros(k, self.dim, dtype=r.dtype, device=r.device).index_add_(0, idx, r)  # (K, C)
        if _dist_ready():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size_ema.mul_(cfg.decay).add_(counts, alpha=1 - cfg.decay)
        # The official code freezes the sum EMA during warm-up (and, as a quirk, forever if warm-up is 0);
        # we keep the warm-up and drop the quirk: warm-up 0 means "no warm-up".
        if int(self.step) >= cfg.warmup_steps:
            self.embed_ema.mul_(cfg.decay).add_(sums, alpha=1 - cfg.decay)
        self.step.add_(1)
        if cfg.restart_unused:
            candidates = self._restart_candidates(r)
            dead = self.cluster_size_ema < cfg.restart_threshold
            self.embed_ema[dead] = candidates[dead]
            self.cluster_size_ema[dead] = 1.0
        total = self.cluster_size_ema.sum()
        norm = total * (self.cluster_size_ema + cfg.eps) / (total + k * cfg.eps)
        self.weight[:k] = self.embed_ema / norm.clamp(min=cfg.count_floor).unsqueeze(1)

    def _restart_candidates(self, r: Tensor) -> Tensor:
        """``(K, C)`` random current residuals (gathered from all ranks, chosen on rank 0, broadcast)."""
        pool = r
        if _dist_ready():
            gathered = [torch.empty_like(r) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, r.contiguous())
            pool = torch.cat(gathered)
        k = self.size
        if pool.shape[0] < k:
            reps = (k + pool.shape[0] - 1) // pool.shape[0]
            pool = pool.repeat(reps, 1)
            pool = pool + torch.rand_like(pool) * (0.01 / self.dim**0.5)
        cand = pool[torch.randperm(pool.shape[0], device=pool.device)[:k]].contiguous()
        if _dist_ready():
            dist.broadcast(cand, src=0)
        return cand


@dataclass
class QuantizerOutput:
    """Result of ``ResidualQuantizer.forward``.

    codes:        ``(B, h, w, D)`` int64.
    cumulative:   ``(D, B, h, w, C)`` fp32, ``cumulative[d-1]`` = sum of the first ``d`` code vectors (q_d).
    commit_loss:  scalar, ``1/D * sum_d mean((x - sg(q_d))^2)``.
    """

    codes: Tensor
    cumulative: Tensor
    commit_loss: Tensor

    def straight_through(self, latent: Tensor, depth: int) -> Tensor:
        """``z + sg(q_depth - z)``: forward value q_depth, gradient to the encoder. ``(B, h, w, C)``."""
        q = self.cumulative[depth - 1].to(latent.dtype)
        return latent + (q - latent).detach()


class ResidualQuantizer(nn.Module):
    def __init__(self, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.codebooks = nn.ModuleList([VQCodebook(cfg.codebook_size, cfg.dim) for _ in range(cfg.num_depths)])
        # per-depth code usage counts since the last reset (training diagnostics, not saved)
        self.register_buffer("usage", torch.zeros(cfg.num_depths, cfg.codebook_size), persistent=False)

    @property
    def num_depths(self) -> int:
        return self.cfg.num_depths

    def forward(self, latent: Tensor, num_depths: int | None = None) -> QuantizerOutput:
        """``(B, h, w, C)`` latent -> codes and cumulative quantized latents for depths 1..num_depths.

        In training mode the codebooks are updated (EMA, restart) after each depth's assignment; the code
        vector used at a depth is the one from *before* that update, as in the reference.
        """
        depth = num_depths or self.cfg.num_depths
        b, h, w, c = latent.shape
        with torch.autocast(device_type=latent.device.type, enabled=False):
            x = latent.detach().float().reshape(-1, c)  # (N, C)
            residual = x.clone()
            total = torch.zeros_like(x)
            codes, cumulative = [], []
            for d in range(depth):
                book = self.codebooks[d]
                idx = book.nearest(residual)  # (N,)
                chosen = book.weight[idx].clone()  # (N, C), before this step's update
                if self.training:
                    self.usage[d] += torch.bincount(idx, minlength=self.cfg.codebook_size).float()
                    book.ema_update(residual, idx, self.cfg)
                residual = residual - chosen
                total = total + chosen
                codes.append(idx)
                cumulative.append(total)
            codes_t = torch.stack(codes, dim=-1).reshape(b, h, w, depth)
            cum = torch.stack(cumulative).reshape(depth, b, h, w, c)
        xf = latent.float()
        commit = torch.stack([((xf - q.detach()) ** 2).mean() for q in cum]).mean()
        return QuantizerOutput(codes=codes_t, cumulative=cum, commit_loss=commit)

    @torch.no_grad()
    def code_margins(self, latent: Tensor, codes: Tensor) -> Tensor:
        """``(B, h, w, C)`` latent and its ``(B, h, w, d)`` codes -> ``(B, h, w, d)`` fp32 relative margin of each
        code over the runner-up for the residual it was chosen for (``VQCodebook.margin``); no codebook update."""
        b, h, w, d = codes.shape
        residual = latent.detach().float().reshape(-1, latent.shape[-1])
        idx = codes.reshape(-1, d).long()
        out = []
        for i in range(d):
            book = self.codebooks[i]
            out.append(book.margin(residual, idx[:, i]))
            residual = residual - book.weight[idx[:, i]]
        return torch.stack(out, dim=-1).reshape(b, h, w, d)

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        """``(B, h, w, d)`` int codes (any prefix depth ``d <= D``; null code allowed) -> ``(B, h, w, C)``."""
        d = codes.shape[-1]
        if not 1 <= d <= self.cfg.num_depths:
            raise ValueError(f"codes have {d} depths; expected 1..{self.cfg.num_depths}")
        out = self.codebooks[0].weight[codes[..., 0]]
        for i in range(1, d):
            out = out + self.codebooks[i].weight[codes[..., i]]
        return out

    def reset_usage(self) -> None:
        self.usage.zero_()
