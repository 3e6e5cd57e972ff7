"""The official preset at full size, and the converter from official checkpoints.

The converted submodules are checked against outputs computed here directly from the official tensors with
the definitions of docs/reference/model.md (sections 3-5), not through our modules.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evotok.model import convert as convert_mod
from evotok.model.config import EvoTokConfig, get_preset
from evotok.model.convert import (
    Conversion,
    ConversionError,
    OfficialCheckpoint,
    build_converted,
    convert,
    convert_state_dict,
    fill_optional_buffers,
    load_official,
    load_official_checkpoint,
    optional_official_keys,
)
from tests.model.official_keys import STEP_KEYS, official_shapes, random_official_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return random_official_state()


@pytest.fixture(scope="module")
def cfg() -> EvoTokConfig:
    return get_preset("evotok-siglip2-256")


@pytest.fixture(scope="module")
def conversion(official: dict[str, torch.Tensor], cfg: EvoTokConfig) -> Conversion:
    return convert(official, cfg)


@pytest.fixture(scope="module")
def converted(conversion: Conversion) -> torch.nn.Module:
    return conversion.model


@pytest.fixture(scope="module")
def official_no_step(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The layout of a checkpoint trained with the official default ``--vq-warmup 0``: no ``step`` buffers."""
    return {k: v for k, v in official.items() if k not in STEP_KEYS}


def test_official_preset_parameter_counts_match_the_reference(converted: torch.nn.Module) -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    tower = converted.encoder.tower
    assert count(tower.embeddings) + count(tower.encoder) == 290_762_752  # docs/reference/model.md section 12
    assert count(converted.encode_task_layer) == 1_082_400
    assert count(converted.decoder) == 42_449_795  # section 4
    assert count(converted.post_quant_conv) == 8_448
    assert count(converted.semantic_decoder) == 38_036_456  # section 5
    assert count(converted.decode_task_layer) == 2_099_200
    assert sum(b.weight.shape[0] - 1 for b in converted.quantize.codebooks) * 32 == 16_777_216
    total = count(converted)
    assert total > 300_000_000


def test_official_preset_encodes_a_256_image_to_16_depths(converted: torch.nn.Module) -> None:
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    codes = converted.encode(x)
    assert codes.shape == (1, 16, 16, 16) and codes.dtype == torch.int64
    assert int(codes.max()) < 32768
    img = converted.decode(codes)
    assert img.shape == (1, 3, 256, 256)
    feats = converted.decode_semantic(codes)
    assert feats.shape == (1, 256, 1024)


def test_converter_maps_every_key(official: dict[str, torch.Tensor], converted: torch.nn.Module) -> None:
    state = convert_state_dict(official, get_preset("evotok-siglip2-256"))
    assert set(state) == set(converted.state_dict())
    dropped = set(official) - {k for k in official if not any(
        k.startswith(p) for p in ("encoder_vqkd.vision_model.head.", "encoder_vqkd.vision_model.encoder.layers.23.",
                                  "scaling_layer.", "quantize.codebook_used"))}
    assert len(dropped) > 0 and len(state) == len(official) - len(dropped)


def test_task_layer_matches_reference(official: dict[str, torch.Tensor], converted: torch.nn.Module) -> None:
    x = torch.randn(7, 1024)
    ref = F.linear(torch.tanh(F.linear(x, official["encode_task_layer.0.weight"], official["encode_task_layer.0.bias"])),
                   official["encode_task_layer.2.weight"], official["encode_task_layer.2.bias"])
    with torch.no_grad():
        assert torch.allclose(converted.encode_task_layer(x), ref, atol=1e-6)


def test_codebook_lookup_matches_reference(official: dict[str, torch.Tensor], converted: torch.nn.Module) -> None:
    codes = torch.randint(0, 32768, (2, 16, 16, 16))
    codes[0, 0, 0, 5] = 32768  # the padding row: a zero vector
    ref = sum(official[f"quantize.codebooks.{i}.weight"][codes[..., i]] for i in range(16))
    assert torch.allclose(converted.codes_to_latent(codes), ref, atol=1e-6)
    # and nearest-code search over the official rows (fp32 squared L2, padding row excluded)
    r = torch.randn(50, 32) * 0.3
    book = official["quantize.codebooks.0.weight"][:32768]
    brute = torch.cdist(r, book).argmin(dim=1)
    assert torch.equal(converted.quantize.codebooks[0].nearest(r), brute)


def test_decoder_block_matches_reference(official: dict[str, torch.Tensor], converted: torch.nn.Module) -> None:
    p = "decoder.conv_blocks.1.res.0."  # 512 -> 256 with the nin shortcut
    o = {k[len(p):]: v for k, v in official.items() if k.startswith(p)}
    x = torch.randn(1, 512, 8, 8)
    h = F.silu(F.group_norm(x, 32, o["norm1.weight"], o["norm1.bias"], eps=1e-6))
    h = F.conv2d(h, o["conv1.weight"], o["conv1.bias"], padding=1)
    h = F.silu(F.group_norm(h, 32, o["norm2.weight"], o["norm2.bias"], eps=1e-6))
    h = F.conv2d(h, o["conv2.weight"], o["conv2.bias"], padding=1)
    ref = F.conv2d(x, o["nin_shortcut.weight"], o["nin_shortcut.bias"]) + h
    with torch.no_grad():
        assert torch.allclose(converted.decoder.conv_blocks[1].res[0](x), ref, atol=1e-4)


def test_semantic_attention_matches_reference(official: dict[str, torch.Tensor], converted: torch.nn.Module) -> None:
    p = "decoder_vqkd.blocks.0.attn."
    x = torch.randn(1, 5, 1024)
    bias = torch.cat([official[p + "q_bias"], torch.zeros(1020), official[p + "v_bias"]])
    qkv = F.linear(x, official[p + "qkv.weight"], bias).reshape(1, 5, 3, 12, 85).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * 85**-0.5, qkv[1], qkv[2]
    out = (torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v).transpose(1, 2).reshape(1, 5, 1020)
    ref = F.linear(out, official[p + "proj.weight"], official[p + "proj.bias"])
    with torch.no_grad():
        assert torch.allclose(converted.semantic_decoder.blocks[0].attn(x), ref, atol=1e-5)


def test_key_table_has_both_official_layouts(official: dict[str, torch.Tensor], cfg: EvoTokConfig) -> None:
    assert len(official_shapes()) == 716 and len(STEP_KEYS) == 16
    assert set(optional_official_keys(cfg)) == STEP_KEYS  # only the 16 step buffers are optional
    assert len({k: v for k, v in official.items() if k not in STEP_KEYS}) == 700


def test_layout_with_step_buffers_converts_and_keeps_them(
    official: dict[str, torch.Tensor], conversion: Conversion
) -> None:
    state = conversion.model.state_dict()
    assert set(convert_state_dict(official, get_preset("evotok-siglip2-256"))) == set(state)
    assert dict(conversion.report.filled) == {}
    assert conversion.report.official_keys == 716 and conversion.report.converted_keys == len(state)
    assert all(int(state[k]) == int(official[k]) for k in STEP_KEYS)  # present buffers are taken as they are
    assert any("filled: none" in line for line in conversion.report.lines())


def test_layout_without_step_buffers_converts_and_reports_the_fill(
    official_no_step: dict[str, torch.Tensor], cfg: EvoTokConfig, converted: torch.nn.Module
) -> None:
    result = convert(official_no_step, cfg, trained_steps=250_000)
    state = result.model.state_dict()
    complete, _ = fill_optional_buffers(official_no_step, cfg, 250_000)
    assert set(convert_state_dict(complete, cfg)) == set(state) == set(converted.state_dict())  # none missing/extra
    assert result.report.official_keys == 700 and result.report.converted_keys == len(state)
    assert dict(result.report.filled) == {k: 250_000 for k in STEP_KEYS}
    for k in STEP_KEYS:
        assert state[k].dtype == torch.int64 and state[k].shape == () and int(state[k]) == 250_000
    # every other tensor is the official one, exactly as from the 716-key layout
    ref = converted.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in state.items() if k not in STEP_KEYS)
    text = "\n".join(result.report.lines())
    assert "filled 16 absent optional buffers" in text and "quantize.codebooks.15.step" in text and "250000" in text


def test_step_fill_value_means_warm_up_done(official_no_step: dict[str, torch.Tensor], cfg: EvoTokConfig) -> None:
    warmup = cfg.quantizer.warmup_steps
    assert warmup > 0  # the official preset keeps the script's 2000-step warm-up
    for trained, expected in ((None, warmup), (10, warmup), (warmup + 7, warmup + 7)):
        _, filled = fill_optional_buffers(official_no_step, cfg, trained)
        assert set(filled) == STEP_KEYS and set(filled.values()) == {expected}
    _, filled = fill_optional_buffers(official_no_step, cfg)  # a bare state dict: no recorded steps
    assert all(v >= warmup for v in filled.values())  # resumed training does not re-enter the warm-up


def test_only_the_declared_optional_buffers_may_be_absent(
    official: dict[str, torch.Tensor], official_no_step: dict[str, torch.Tensor], cfg: EvoTokConfig
) -> None:
    some = {k: v for k, v in official.items() if k != "quantize.codebooks.3.step"}
    with pytest.raises(ConversionError, match="1 of the 16 optional 'step' buffers are missing"):
        convert(some, cfg)  # a partial set is no official layout
    for key in ("quantize.codebooks.0.cluster_size_ema", "quantize.codebooks.0.embed_ema"):
        with pytest.raises(ConversionError, match=f"missing keys.*{key}"):
            convert({k: v for k, v in official_no_step.items() if k != key}, cfg)  # training buffers: required


def test_unknown_and_missing_keys_fail_clearly(
    official: dict[str, torch.Tensor], official_no_step: dict[str, torch.Tensor]
) -> None:
    cfg = get_preset("evotok-siglip2-256")
    for layout in (official, official_no_step):
        with pytest.raises(ConversionError, match="unknown official key"):
            convert_state_dict({**layout, "decoder_vqkdx.extra": torch.zeros(1)}, cfg)
        with pytest.raises(ConversionError, match="unknown official key"):
            convert({**layout, "quantize.codebooks.0.steps": torch.tensor(0)}, cfg)
        with pytest.raises(ConversionError, match=r"unexpected \['quantize.codebooks.16.step'\]"):
            convert({**layout, "quantize.codebooks.16.step": torch.tensor(0)}, cfg)  # a 17th depth
        partial = {k: v for k, v in layout.items() if not k.startswith("decode_task_layer.")}
        with pytest.raises(ConversionError, match="missing keys"):
            build_converted(partial, cfg)


def test_bad_shapes_fail_clearly(official: dict[str, torch.Tensor], official_no_step: dict[str, torch.Tensor]) -> None:
    cfg = get_preset("evotok-siglip2-256")
    for layout in (official, official_no_step):
        bad = {**layout, "decoder.conv_out.weight": torch.zeros(3, 128, 1, 1)}
        with pytest.raises(ConversionError, match=r"shape mismatch: decoder.conv_out.weight: official \(3, 128, 1, 1\) "
                                                  r"vs ours \(3, 128, 3, 3\)"):
            convert(bad, cfg)
    with pytest.raises(ConversionError, match=r"shape mismatch: quantize.codebooks.2.step: official \(1,\) vs ours \(\)"):
        convert({**official, "quantize.codebooks.2.step": torch.zeros(1, dtype=torch.long)}, cfg)


def test_cli_prints_the_conversion_report(
    official_no_step: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    saved: dict[str, object] = {}

    def fake_save(model: torch.nn.Module, folder: Path, *, provenance: dict[str, object]) -> str:
        saved.update(model=model, provenance=provenance)
        return "ab" * 32

    monkeypatch.setattr(convert_mod, "load_official", lambda path: OfficialCheckpoint(official_no_step, 42_000))
    monkeypatch.setattr("evotok.model.checkpoint.save_weights", fake_save)
    assert convert_mod.main([str(tmp_path / "last.pt"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "official keys: 700" in out and "filled 16 absent optional buffers" in out and "42000" in out
    assert saved["provenance"]["filled_buffers"] == {k: 42_000 for k in STEP_KEYS}  # type: ignore[index]
    assert int(saved["model"].quantize.codebooks[0].step) == 42_000  # type: ignore[attr-defined]


def test_official_checkpoint_file_loads_with_weights_only(tmp_path: Path) -> None:
    sd = {"encode_task_layer.0.weight": torch.zeros(2, 2)}
    path = tmp_path / "last.pt"
    torch.save({"model": sd, "steps": 10, "args": argparse.Namespace(lr=1e-4)}, path)
    assert set(load_official_checkpoint(path)) == set(sd)
    assert load_official(path).steps == 10  # the recorded training steps, used for filled step buffers
    torch.save({"ema": sd, "model": {"x": torch.ones(1)}}, path)
    assert set(load_official_checkpoint(path)) == set(sd)  # ema preferred, like the official consumers

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (print, ("pwned",))

    torch.save({"model": sd, "x": Evil()}, path)
    with pytest.raises(ConversionError, match="weights_only"):
        load_official_checkpoint(path)
