"""The EvoTok tokenizer (arXiv 2603.12108): encoder -> residual quantizer -> pixel / semantic decoders.

Inference surface (pure functions of weights and inputs, run under ``torch.inference_mode()``):

- ``encode(images)``: ``(B, 3, H, W)`` float in [-1, 1] -> codes ``(B, h, w, D)`` int64.
- ``decode(codes)``: codes ``(B, h, w, d)`` -> images ``(B, 3, H, W)`` float, clamped to [-1, 1]; the sum of
  the first ``min(d, pixel_depth)`` code vectors feeds the pixel decoder.
- ``decode_semantic(codes)``: codes ``(B, h, w, d)`` -> ``(B, h*w, out_dim)`` features from the first
  ``min(d, semantic_depth)`` depths.
- ``codes_to_latent(codes)``: codes of any prefix depth -> latent ``(B, h, w, C)``.

Top-level module names follow the official state dict (``encode_task_layer``, ``quantize``,
``post_quant_conv``, ``decoder``, ``decode_task_layer``) so the converter stays a renaming table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from evotok.model.config import EvoTokConfig
from evotok.model.encoder import build_backbone, task_layer
from evotok.model.pixel_decoder import PixelDecoder
from evotok.model.quantizer import QuantizerOutput, ResidualQuantizer
from evotok.model.semantic_decoder import SemanticDecoder


@dataclass
class EvoTokOutput:
    """Training forward result.

    latent: ``(B, h, w, C)`` encoder output; quant: the quantizer's result (codes, cumulative q_d, commitment);
    recon: ``(B, 3, H, W)`` raw pixel decoder output from STE(q_pixel_depth);
    semantic: ``(B, h*w, out_dim)`` from STE(q_semantic_depth).
    """

    latent: Tensor
    quant: QuantizerOutput
    recon: Tensor
    semantic: Tensor


class EvoTok(nn.Module):
    def __init__(self, cfg: EvoTokConfig, pretrained_backbone: bool | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = build_backbone(cfg.encoder, cfg.image_size, pretrained_backbone)
        self.encode_task_layer = task_layer(self.encoder.feature_dim, cfg.encoder.task_hidden, cfg.latent_dim)
        self.quantize = ResidualQuantizer(cfg.quantizer)
        self.post_quant_conv = nn.Conv2d(cfg.latent_dim, cfg.pixel_decoder.z_channels, 1)
        self.decoder = PixelDecoder(cfg.pixel_decoder)
        self.semantic_decoder = SemanticDecoder(cfg.semantic_decoder, cfg.latent_dim, cfg.grid)
        sd = cfg.semantic_decoder
        self.decode_task_layer = task_layer(sd.width, sd.width, sd.out_dim)

    # ----------------------------------------------------------------------------- building blocks
    def encode_latent(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> latent ``(B, h, w, C)``."""
        b, _, hh, ww = images.shape
        feats = self.encoder(images.clamp(-1.0, 1.0))  # (B, h*w, F)
        latent = self.encode_task_layer(feats.to(self.encode_task_layer[0].weight.dtype))  # (B, h*w, C)
        stride = self.cfg.image_size // self.cfg.grid
        return latent.reshape(b, hh // stride, ww // stride, -1)

    def decode_latent(self, latent: Tensor) -> Tensor:
        """``(B, h, w, C)`` -> raw pixels ``(B, 3, H, W)`` (not clamped)."""
        return self.decoder(self.post_quant_conv(latent.permute(0, 3, 1, 2)))

    def semantic_latent(self, latent: Tensor) -> Tensor:
        """``(B, h, w, C)`` -> semantic features ``(B, h*w, out_dim)``."""
        return self.decode_task_layer(self.semantic_decoder(latent.permute(0, 3, 1, 2)))

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        return self.quantize.codes_to_latent(codes)

    # ----------------------------------------------------------------------------- training forward
    def forward(self, images: Tensor) -> EvoTokOutput:
        latent = self.encode_latent(images)
        quant = self.quantize(latent)
        z_pix = quant.straight_through(latent, self.cfg.pixel_depth)
        z_sem = quant.straight_through(latent, self.cfg.semantic_depth)
        return EvoTokOutput(latent, quant, self.decode_latent(z_pix), self.semantic_latent(z_sem))

    # ----------------------------------------------------------------------------- inference surface
    @torch.inference_mode()
    def encode(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` float in [-1, 1] -> codes ``(B, h, w, D)`` int64."""
        self._require_eval()
        return self.quantize(self.encode_latent(images)).codes

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """codes ``(B, h, w, d)`` -> images ``(B, 3, H, W)`` in [-1, 1]."""
        self._require_eval()
        latent = self.codes_to_latent(codes[..., : self.cfg.pixel_depth])
        return self.decode_latent(latent).clamp(-1.0, 1.0)

    @torch.inference_mode()
    def decode_semantic(self, codes: Tensor) -> Tensor:
        """codes ``(B, h, w, d)`` -> features ``(B, h*w, out_dim)``."""
        self._require_eval()
        return self.semantic_latent(self.codes_to_latent(codes[..., : self.cfg.semantic_depth]))

    def _require_eval(self) -> None:
        if self.training:
            raise RuntimeError("EvoTok inference methods need eval mode (training mode updates the codebooks)")


def images_to_tensor(images: object) -> Tensor:
    """``(B, H, W, 3)`` uint8 (numpy or tensor) -> ``(B, 3, H, W)`` float32 in [-1, 1]."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) uint8 images, got {tuple(t.shape)} {t.dtype}")
    return t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_images(x: Tensor) -> Tensor:
    """``(B, 3, H, W)`` float in [-1, 1] -> ``(B, H, W, 3)`` uint8 via round(127.5 * x + 127.5)."""
    return torch.round(x.clamp(-1.0, 1.0) * 127.5 + 127.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
