"""Exportable graphs composed from a loaded ``EvoTok``'s submodules (no weights are copied or changed).

Every graph has a dynamic batch axis ``batch`` and fixed spatial sizes (``H = W = image_size``,
``h = w = grid``). Boundaries (the same in ONNX, TensorRT and these torch modules):

- ``EncoderGraph``:          ``images`` ``(B, H, W, 3)`` uint8 [0, 255] -> ``latent`` ``(B, h, w, C)`` float32.
- ``QuantizerGraph``:        ``latent`` ``(B, h, w, C)`` float32 -> ``codes`` ``(B, h, w, D)`` int64 in [0, K).
  Always fp32, and the nearest code is ``argmin(||e||^2 - 2 r.e)`` exactly as in
  ``VQCodebook.nearest``, so the indices match the PyTorch model bit for bit when the latents do.
- ``DecoderGraph``:          ``codes`` ``(B, h, w, pixel_depth)`` int64 in [0, K] -> ``images`` ``(B, H, W, 3)``
  uint8. The code->latent lookup is inside; a shorter prefix is fed by padding with the null code ``K``
  (its codebook row is zero, so the sum is unchanged).
- ``SemanticDecoderGraph``:  ``codes`` ``(B, h, w, semantic_depth)`` int64 in [0, K] -> ``features``
  ``(B, h*w, C_sem)`` float32.

``compute_dtype`` (fp16/bf16, for TensorRT's strongly typed networks) runs the encoder and decoders in
that dtype; the pixel normalisation, code lookup and the quantizer stay float32, and every graph output
keeps the dtype above.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

GRAPH_NAMES = ("encoder", "quantizer", "decoder", "semantic_decoder")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: ``shape`` uses ``"batch"`` for the dynamic axis."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str  # numpy dtype name: uint8, int64, float32
    range: tuple[float, float] | None  # inclusive value range where meaningful

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "range": list(self.range) if self.range is not None else None}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def graph_specs(cfg: Any) -> dict[str, GraphSpec]:
    """Input/output specs of the four graphs for an ``EvoTokConfig``."""
    s, g, c, k = cfg.image_size, cfg.grid, cfg.latent_dim, cfg.codebook_size
    images = TensorSpec("images", ("batch", s, s, 3), "uint8", (0, 255))
    latent = TensorSpec("latent", ("batch", g, g, c), "float32", None)
    return {
        "encoder": GraphSpec("encoder", (images,), (latent,)),
        "quantizer": GraphSpec(
            "quantizer", (latent,), (TensorSpec("codes", ("batch", g, g, cfg.num_depths), "int64", (0, k - 1)),)
        ),
        "decoder": GraphSpec(
            "decoder", (TensorSpec("codes", ("batch", g, g, cfg.pixel_depth), "int64", (0, k)),), (images,)
        ),
        "semantic_decoder": GraphSpec(
            "semantic_decoder",
            (TensorSpec("codes", ("batch", g, g, cfg.semantic_depth), "int64", (0, k)),),
            (TensorSpec("features", ("batch", g * g, cfg.semantic_decoder.out_dim), "float32", None),),
        ),
    }


def _cast(model: Any, dtype: torch.dtype) -> Any:
    """The model itself for fp32, else a converted copy (the caller's fp32 model is never modified)."""
    return model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)


class EncoderGraph(nn.Module):
    def __init__(self, model: Any, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model: Any = _cast(model, compute_dtype)
        self.compute_dtype = compute_dtype

    def forward(self, images: Tensor) -> Tensor:
        # same arithmetic as ``images_to_tensor``: float, / 127.5, - 1
        x = images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        latent: Tensor = self.model.encode_latent(x.to(self.compute_dtype))
        return latent.float()


class QuantizerGraph(nn.Module):
    """fp32 residual search; buffers hold each depth's ``e^T`` ``(C, K)``, ``||e||^2`` ``(K,)`` and rows."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        books = list(model.quantize.codebooks)
        self.num_depths = len(books)
        for d, book in enumerate(books):
            e = book.codes.detach().float()
            self.register_buffer(f"e_t{d}", e.t().contiguous())
            self.register_buffer(f"e_sq{d}", (e * e).sum(dim=1))  # the expression VQCodebook.nearest uses
            self.register_buffer(f"rows{d}", book.weight.detach().float().clone())

    def forward(self, latent: Tensor) -> Tensor:
        b, h, w, c = latent.shape
        residual = latent.float().reshape(-1, c)  # (N, C)
        codes = []
        for d in range(self.num_depths):
            e_t, e_sq, rows = getattr(self, f"e_t{d}"), getattr(self, f"e_sq{d}"), getattr(self, f"rows{d}")
            dists = e_sq.unsqueeze(0) - 2.0 * (residual @ e_t)  # (N, K)
            idx = dists.argmin(dim=1)  # first index on ties, as torch and ORT ArgMin(select_last_index=0)
            residual = residual - rows[idx]
            codes.append(idx)
        return torch.stack(codes, dim=-1).reshape(b, h, w, self.num_depths)


class _CodeLookup(nn.Module):
    """codes ``(B, h, w, d)`` -> latent ``(B, h, w, C)`` fp32, summed depth by depth like ``codes_to_latent``."""

    def __init__(self, model: Any, depth: int) -> None:
        super().__init__()
        self.depth = depth
        for d in range(depth):
            self.register_buffer(f"rows{d}", model.quantize.codebooks[d].weight.detach().float().clone())

    def forward(self, codes: Tensor) -> Tensor:
        out: Tensor = getattr(self, "rows0")[codes[..., 0]]  # noqa: B009 - buffers are Any to mypy
        for d in range(1, self.depth):
            out = out + getattr(self, f"rows{d}")[codes[..., d]]
        return out


class DecoderGraph(nn.Module):
    def __init__(self, model: Any, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.lookup = _CodeLookup(model, model.cfg.pixel_depth)  # fp32 rows from the fp32 model
        self.model: Any = _cast(model, compute_dtype)
        self.compute_dtype = compute_dtype

    def forward(self, codes: Tensor) -> Tensor:
        latent = self.lookup(codes).to(self.compute_dtype)
        x = self.model.decode_latent(latent).float()
        # same arithmetic as ``tensor_to_images``: clamp, * 127.5 + 127.5, round half to even
        return torch.round(x.clamp(-1.0, 1.0) * 127.5 + 127.5).to(torch.uint8).permute(0, 2, 3, 1)


class SemanticDecoderGraph(nn.Module):
    def __init__(self, model: Any, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.lookup = _CodeLookup(model, model.cfg.semantic_depth)
        self.model: Any = _cast(model, compute_dtype)
        self.compute_dtype = compute_dtype

    def forward(self, codes: Tensor) -> Tensor:
        features: Tensor = self.model.semantic_latent(self.lookup(codes).to(self.compute_dtype))
        return features.float()


def build_graph(name: str, model: Any, compute_dtype: torch.dtype = torch.float32) -> nn.Module:
    """One of ``GRAPH_NAMES`` in eval mode; the quantizer ignores ``compute_dtype`` (always fp32)."""
    if name == "encoder":
        graph: nn.Module = EncoderGraph(model, compute_dtype)
    elif name == "quantizer":
        graph = QuantizerGraph(model)
    elif name == "decoder":
        graph = DecoderGraph(model, compute_dtype)
    elif name == "semantic_decoder":
        graph = SemanticDecoderGraph(model, compute_dtype)
    else:
        raise ValueError(f"unknown graph {name!r}; choose one of {GRAPH_NAMES}")
    return graph.eval()


def example_input(name: str, cfg: Any, batch: int = 2) -> Tensor:
    """A valid example input for tracing/export (deterministic)."""
    s, g = cfg.image_size, cfg.grid
    gen = torch.Generator().manual_seed(0)
    if name == "encoder":
        return torch.randint(0, 256, (batch, s, s, 3), generator=gen, dtype=torch.uint8)
    if name == "quantizer":
        return torch.randn(batch, g, g, cfg.latent_dim, generator=gen)
    depth = cfg.pixel_depth if name == "decoder" else cfg.semantic_depth
    return torch.randint(0, cfg.codebook_size, (batch, g, g, depth), generator=gen)
