"""``evotok convert``: an official EvoTok training checkpoint -> our model folder.

The official ``rq_train.py`` saves ``{"model", "optimizer", "discriminator", "optimizer_disc", "steps", "args",
["ema"]}`` with ``torch.save`` (docs/reference/model.md section 10). We load it with ``weights_only=True``, allow-listing only
``argparse.Namespace`` (the pickled ``args``), take ``ema`` > ``model`` > ``state_dict`` like the official
consumers, and rename keys by a fixed table. Unknown keys and missing keys are errors (no ``strict=False``),
with one declared exception: the official ``VQEmbedding`` registers its ``step`` buffers only when trained with
``--vq-warmup > 0`` and ``rq_train.py`` defaults to 0, so a checkpoint trained with the official defaults has
700 keys and no ``quantize.codebooks.{i}.step``. Those 16 buffers (and nothing else) are optional: when all are
absent they are filled (see ``fill_optional_buffers``) and the ``ConversionReport`` lists what was filled.

Usage::

    evotok convert work_dir/evotok_siglip256/last.pt --out weights/evotok-official
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from evotok.model.config import EvoTokConfig, get_preset

# (official key regex, our key template or None to drop). First match wins.
_RULES: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"^encoder_vqkd\.vision_model\.encoder\.layers\.(\d+)\.(.+)$"), "encoder.tower.encoder.layers.{0}.{1}"),
    (re.compile(r"^encoder_vqkd\.vision_model\.(embeddings|post_layernorm)\.(.+)$"), "encoder.tower.{0}.{1}"),
    (re.compile(r"^encoder_vqkd\.vision_model\.head\..+$"), None),  # MAP pooling head: unused
    (re.compile(r"^encode_task_layer\.(.+)$"), "encode_task_layer.{0}"),
    (re.compile(r"^quantize\.codebook_used$"), None),  # usage FIFO: logging only
    (re.compile(r"^quantize\.codebooks\.(\d+)\.(weight|cluster_size_ema|embed_ema|step)$"), "quantize.codebooks.{0}.{1}"),
    (re.compile(r"^post_quant_conv\.(.+)$"), "post_quant_conv.{0}"),
    (re.compile(r"^decoder\.(.+)$"), "decoder.{0}"),
    (re.compile(r"^decoder_vqkd\.(.+)$"), "semantic_decoder.{0}"),
    (re.compile(r"^decode_task_layer\.(.+)$"), "decode_task_layer.{0}"),
    (re.compile(r"^scaling_layer\.(shift|scale)$"), None),  # identity + clamp: our encode clamps to [-1, 1]
]


class ConversionError(ValueError):
    pass


def optional_official_keys(cfg: EvoTokConfig) -> tuple[str, ...]:
    """The official buffers a real checkpoint may lack: ``quantize.codebooks.{i}.step``, one per depth.

    The official ``VQEmbedding`` registers ``step`` only when ``vq_warmup > 0`` (docs/reference/model.md section 3.1), and
    the ``rq_train.py`` default is 0. Inference never reads ``step``. Nothing else is optional.
    """
    return tuple(f"quantize.codebooks.{i}.step" for i in range(cfg.quantizer.num_depths))


def step_fill_value(cfg: EvoTokConfig, trained_steps: int | None) -> int:
    """The value an absent ``step`` buffer is filled with: warm-up done.

    Inference never reads ``step``; our training reads it only as "the warm-up is over once
    ``step >= warmup_steps``" (``VQCodebook.ema_update``). A checkpoint without ``step`` was trained with
    ``vq_warmup = 0``, i.e. with no warm-up at all, so resuming it must not re-enter one (0, a fresh buffer,
    would freeze the sum EMA of trained codebooks for ``warmup_steps`` updates). We fill the number of training
    steps the checkpoint records (its ``"steps"`` entry: what the buffer would hold, as it counts one update per
    step), raised to at least the preset's ``warmup_steps`` so the warm-up counts as done either way; with no
    recorded steps (a bare state dict) it is ``warmup_steps`` itself.
    """
    return max(trained_steps or 0, cfg.quantizer.warmup_steps)


def fill_optional_buffers(
    official: Mapping[str, Tensor], cfg: EvoTokConfig, trained_steps: int | None = None
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """``official`` with absent optional buffers filled, and ``{filled key: value}``.

    Both official layouts are accepted: all 16 ``step`` buffers present (``vq_warmup > 0``) or none
    (the default ``vq_warmup = 0``). A partial set is no official layout and is refused.
    """
    optional = optional_official_keys(cfg)
    absent = [k for k in optional if k not in official]
    if not absent:
        return dict(official), {}
    if len(absent) != len(optional):
        raise ConversionError(
            f"{len(absent)} of the {len(optional)} optional 'step' buffers are missing, e.g. {absent[:3]}: an "
            "official checkpoint has all of them (trained with vq_warmup > 0) or none (vq_warmup = 0)"
        )
    value = step_fill_value(cfg, trained_steps)
    out = dict(official)
    for key in absent:
        out[key] = torch.tensor(value, dtype=torch.long)
    return out, {key: value for key in absent}


@dataclass(frozen=True)
class ConversionReport:
    """What ``convert`` did with an official state dict."""

    official_keys: int  # keys in the official state dict as given
    converted_keys: int  # keys of our model, all loaded
    dropped: tuple[str, ...]  # official keys inference does not use (head, layer 23, codebook_used, ...)
    filled: Mapping[str, int] = field(default_factory=dict)  # absent optional buffers -> the value filled

    def lines(self) -> list[str]:
        out = [
            f"official keys: {self.official_keys}; converted: {self.converted_keys}; "
            f"dropped as unused: {len(self.dropped)}"
        ]
        if self.filled:
            values = sorted(set(self.filled.values()))
            out.append(
                f"filled {len(self.filled)} absent optional buffers ({', '.join(sorted(self.filled, key=_natural))}) "
                f"with {values[0] if len(values) == 1 else values}: the checkpoint was trained with vq_warmup = 0; "
                "warm-up counted as done, inference never reads step"
            )
        else:
            out.append("filled: none (all optional buffers present)")
        return out


@dataclass(frozen=True)
class Conversion:
    model: torch.nn.Module
    report: ConversionReport


@dataclass(frozen=True)
class OfficialCheckpoint:
    state: dict[str, Tensor]
    steps: int | None  # the checkpoint's "steps" entry (training steps done), when it has one


def _natural(key: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _rename(key: str, num_layers: int) -> str | None:
    for pattern, template in _RULES:
        m = pattern.match(key)
        if m is None:
            continue
        if template is None:
            return None
        if key.startswith("encoder_vqkd.vision_model.encoder.layers.") and int(m.group(1)) >= num_layers:
            return None  # block 23 only feeds the discarded post-LN/head
        return template.format(*m.groups())
    raise ConversionError(f"unknown official key {key!r}")


def convert_state_dict(official: Mapping[str, Tensor], cfg: EvoTokConfig) -> dict[str, Tensor]:
    """Rename official keys to ours; raises ``ConversionError`` on unknown keys."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in official.items():
        try:
            new = _rename(key, cfg.encoder.num_layers)
        except ConversionError:
            unknown.append(key)
            continue
        if new is not None:
            out[new] = value
    if unknown:
        raise ConversionError(f"{len(unknown)} unknown official keys, e.g. {unknown[:5]}")
    return out


def load_official_checkpoint(path: Path) -> dict[str, Tensor]:
    """The state dict inside an official checkpoint (``ema`` > ``model`` > ``state_dict`` > the file itself)."""
    return load_official(path).state


def load_official(path: Path) -> OfficialCheckpoint:
    """The state dict inside an official checkpoint and its recorded training ``steps``."""
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here; the message names the file
        raise ConversionError(
            f"{path}: cannot be loaded with weights_only=True ({type(e).__name__}: {e}). We do not unpickle "
            "arbitrary objects; re-save the checkpoint's state dict with torch.save(sd) or safetensors."
        ) from e
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    steps = ckpt.get("steps")
    steps = steps if isinstance(steps, int) and not isinstance(steps, bool) else None
    for entry in ("ema", "model", "state_dict"):
        if isinstance(ckpt.get(entry), dict):
            return OfficialCheckpoint(dict(ckpt[entry]), steps)
    if all(isinstance(v, Tensor) for v in ckpt.values()):
        return OfficialCheckpoint(dict(ckpt), None)
    raise ConversionError(f"{path}: no 'ema', 'model' or 'state_dict' entry (keys: {sorted(ckpt)[:10]})")


def build_converted(official: Mapping[str, Tensor], cfg: EvoTokConfig) -> torch.nn.Module:
    """Our model with the official weights; missing keys or shape mismatches are errors."""
    return convert(official, cfg).model


def convert(official: Mapping[str, Tensor], cfg: EvoTokConfig, *, trained_steps: int | None = None) -> Conversion:
    """Our model with the official weights, and a report of what was dropped and filled.

    Only the declared optional buffers (``optional_official_keys``) may be absent; any other missing key, an
    unknown or unexpected key, or a shape mismatch is a ``ConversionError``.
    """
    from evotok.model.evotok import EvoTok

    complete, filled = fill_optional_buffers(official, cfg, trained_steps)
    state = convert_state_dict(complete, cfg)
    model = EvoTok(cfg, pretrained_backbone=False)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    if missing or unexpected:
        raise ConversionError(f"missing keys {missing[:8]} (total {len(missing)}); unexpected {unexpected[:8]}")
    bad = [f"{k}: official {tuple(state[k].shape)} vs ours {tuple(v.shape)}" for k, v in ours.items() if state[k].shape != v.shape]
    if bad:
        raise ConversionError("shape mismatch: " + "; ".join(bad[:5]))
    model.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()}, strict=True)
    dropped = tuple(k for k in official if _rename(k, cfg.encoder.num_layers) is None)
    report = ConversionReport(len(official), len(state), dropped, filled)
    return Conversion(model.eval(), report)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="evotok convert", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="evotok-siglip2-256")
    args = p.parse_args(argv)
    from evotok.model.checkpoint import save_weights

    cfg = get_preset(args.preset)
    try:
        ckpt = load_official(args.checkpoint)
        result = convert(ckpt.state, cfg, trained_steps=ckpt.steps)
    except ConversionError as e:
        sys.stderr.write(f"evotok convert: {e}\n")
        return 1
    provenance = {"converted_from": str(args.checkpoint), "filled_buffers": dict(result.report.filled)}
    digest = save_weights(result.model, args.out, provenance=provenance)
    for line in result.report.lines():
        sys.stdout.write(f"{line}\n")
    sys.stdout.write(f"wrote {args.out} (hash {digest[:16]})\n")
    return 0
