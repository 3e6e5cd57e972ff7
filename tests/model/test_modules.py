"""Shapes and dtypes of every module on the tiny config, and the config registry rules."""

from __future__ import annotations

import pytest
import torch

from evotok.model.config import PRESETS, EvoTokConfig, get_preset
from evotok.model.evotok import EvoTok, images_to_tensor, tensor_to_images


@pytest.fixture
def tiny() -> EvoTok:
    torch.manual_seed(0)
    return EvoTok(get_preset("evotok-tiny")).eval()


def test_presets_round_trip_and_are_frozen() -> None:
    for name in PRESETS:
        cfg = get_preset(name)
        assert EvoTokConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(AttributeError):
        get_preset("evotok-tiny").image_size = 3  # type: ignore[misc]


def test_unknown_keys_are_errors() -> None:
    data = get_preset("evotok-tiny").to_dict()
    data["quantizer"]["codebok_size"] = 3
    with pytest.raises(ValueError, match="codebok_size"):
        EvoTokConfig.from_dict(data)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nope")


def test_inconsistent_config_is_refused() -> None:
    cfg = get_preset("evotok-tiny")
    with pytest.raises(ValueError, match=r"pixel_decoder\.depth"):
        EvoTokConfig.from_dict({**cfg.to_dict(), "pixel_decoder": {**cfg.to_dict()["pixel_decoder"], "depth": 9}})


def test_shapes_and_dtypes(tiny: EvoTok) -> None:
    cfg = tiny.cfg
    b, s, g, d, c = 3, cfg.image_size, cfg.grid, cfg.num_depths, cfg.latent_dim
    x = torch.rand(b, 3, s, s) * 2 - 1
    feats = tiny.encoder(x)
    assert feats.shape == (b, g * g, cfg.encoder.feature_dim)
    latent = tiny.encode_latent(x)
    assert latent.shape == (b, g, g, c) and latent.dtype == torch.float32
    q = tiny.quantize(latent)
    assert q.codes.shape == (b, g, g, d) and q.codes.dtype == torch.int64
    assert q.cumulative.shape == (d, b, g, g, c)
    assert q.commit_loss.ndim == 0
    assert int(q.codes.min()) >= 0 and int(q.codes.max()) < cfg.codebook_size
    codes = tiny.encode(x)
    assert torch.equal(codes, q.codes)
    img = tiny.decode(codes)
    assert img.shape == (b, 3, s, s) and float(img.abs().max()) <= 1.0
    sem = tiny.decode_semantic(codes)
    assert sem.shape == (b, g * g, cfg.semantic_decoder.out_dim)
    out = tiny.train()(x)
    assert out.recon.shape == (b, 3, s, s) and out.semantic.shape == sem.shape


def test_inference_refuses_training_mode(tiny: EvoTok) -> None:
    tiny.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        tiny.encode(torch.zeros(1, 3, 32, 32))


def test_uint8_conversions_round_trip() -> None:
    imgs = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    x = images_to_tensor(imgs.numpy())
    assert x.shape == (2, 3, 8, 8) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(tensor_to_images(x), imgs)
    with pytest.raises(ValueError):
        images_to_tensor(torch.zeros(2, 8, 8, 3))


def test_prefix_decode_uses_only_prefix(tiny: EvoTok) -> None:
    codes = tiny.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    changed = codes.clone()
    changed[..., tiny.cfg.pixel_depth :] = 0  # depths beyond the pixel depth do not matter for pixels
    assert torch.equal(tiny.decode(codes), tiny.decode(changed))
    one = tiny.decode(codes[..., :1])
    assert one.shape == (2, 3, 32, 32) and not torch.equal(one, tiny.decode(codes))
