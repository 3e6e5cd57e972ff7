"""``evotok convert``: an official EvoTok training checkpoint -> our model folder.

The official ``rq_train.py`` saves ``{"model", "optimizer", "discriminator", "optimizer_disc", "steps", "args",
["ema"]}`` with ``torch.save`` (reference section 10). We load it with ``weights_only=True``, allow-listing only
``argparse.Namespace`` (the pickled ``args``), take ``ema`` > ``model`` > ``state_dict`` like the official
consumers, and rename keys by a fixed table. Unknown keys and missing keys are errors (no ``strict=False``).

Usage::

    evotok convert work_dir/evotok_siglip256/last.pt --out weights/evotok-official
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
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
    for entry in ("ema", "model", "state_dict"):
        if isinstance(ckpt.get(entry), dict):
            return dict(ckpt[entry])
    if all(isinstance(v, Tensor) for v in ckpt.values()):
        return dict(ckpt)
    raise ConversionError(f"{path}: no 'ema', 'model' or 'state_dict' entry (keys: {sorted(ckpt)[:10]})")


def build_converted(official: Mapping[str, Tensor], cfg: EvoTokConfig) -> torch.nn.Module:
    """Our model with the official weights; missing keys or shape mismatches are errors."""
    from evotok.model.evotok import EvoTok

    state = convert_state_dict(official, cfg)
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
    return model.eval()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="evotok convert", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="evotok-siglip2-256")
    args = p.parse_args(argv)
    from evotok.model.checkpoint import save_weights

    cfg = get_preset(args.preset)
    try:
        model = build_converted(load_official_checkpoint(args.checkpoint), cfg)
    except ConversionError as e:
        sys.stderr.write(f"evotok convert: {e}\n")
        return 1
    digest = save_weights(model, args.out, provenance={"converted_from": str(args.checkpoint)})
    sys.stdout.write(f"wrote {args.out} (hash {digest[:16]})\n")
    return 0
