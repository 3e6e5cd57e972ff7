"""Unit tests of the input boundary: image fitting, codes validation, model card from config.json."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evotok.export.fake import FakeRuntime
from evotok.model.config import get_preset
from evotok.service.codes_io import codes_from_json, codes_from_npy, read_npy_header, to_npy, validate_codes
from evotok.service.errors import InvalidCodes, InvalidImage, InvalidInput, PayloadTooLarge
from evotok.service.imaging import encode_png, fit_to_model, load_image, prepare_image
from evotok.service.model_info import load_model_info

INFO = FakeRuntime().info  # grid 4, D 4, K 256


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_center_crop_scales_short_side_then_crops_centre() -> None:
    # 40x20 image (w=40, h=20): left half black, a white 10-px stripe in the centre columns 15..24
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 15:25] = 255
    out = fit_to_model(load_image(_png(arr), 10**6), 10, "center-crop")
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    # scaled to 20x10, centre crop keeps columns 5..14 of the scaled image = the stripe (scaled cols 7.5..12.5)
    assert out[:, 4:6].mean() > 200 and out[:, 0].mean() < 60 and out[:, -1].mean() < 60


def test_stretch_and_none() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (30, 60, 3), dtype=np.uint8)
    img = load_image(_png(arr), 10**6)
    assert fit_to_model(img, 16, "stretch").shape == (16, 16, 3)
    with pytest.raises(InvalidInput):
        fit_to_model(img, 16, "none")
    exact = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_image(_png(exact), 16, "none", 10**6), exact)


def test_grayscale_is_replicated_and_png_round_trip() -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = prepare_image(_png(gray), 16, "none", 10**6)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    back = np.asarray(Image.open(io.BytesIO(encode_png(out))))
    np.testing.assert_array_equal(back, out)


def test_pixel_cap_checked_before_decoding() -> None:
    data = _png(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(PayloadTooLarge):
        load_image(data, 9_999)
    assert load_image(data, 10_000).size == (100, 100)
    with pytest.raises(InvalidImage):
        load_image(b"", 10)


def test_codes_validation_bounds() -> None:
    ok = np.zeros((4, 4, 4), np.int64)
    assert validate_codes(ok, INFO).dtype == np.uint16
    assert validate_codes(np.full((4, 4, 1), 256), INFO).max() == 256  # the null code K is accepted
    for bad in (np.full((4, 4, 1), 257), np.full((4, 4, 1), -1), np.zeros((4, 4, 5), int), np.zeros((4, 5, 1), int),
                np.zeros((4, 4, 1), np.float32), np.zeros((4, 4), int)):
        with pytest.raises(InvalidCodes):
            validate_codes(bad, INFO)
    codes = np.random.default_rng(0).integers(0, 256, (4, 4, 3)).astype(np.uint16)
    np.testing.assert_array_equal(codes_from_npy(to_npy(codes), INFO), codes)
    np.testing.assert_array_equal(codes_from_json({"codes": codes.tolist()}, INFO), codes)
    with pytest.raises(InvalidCodes):
        codes_from_json({"codes": [[["1"]]]}, INFO)


@pytest.mark.parametrize("arr", [
    np.zeros((16, 16, 16), np.uint16), np.arange(5, dtype="<i8"), np.zeros((), np.float32),
    np.zeros((2, 8, 8, 3), np.uint8), np.zeros((0, 3), ">f4"), np.ones((3, 4), bool),
], ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_npy_writer_and_header_reader_agree_with_numpy(arr: np.ndarray) -> None:
    """``to_npy`` writes the bytes ``np.save`` writes; ``read_npy_header`` reads numpy's headers (versions 1 and
    2, Fortran order) without evaluating them, and leaves the buffer at the payload."""
    ref = io.BytesIO()
    np.save(ref, arr, allow_pickle=False)
    assert to_npy(arr) == ref.getvalue()
    for version in ((1, 0), (2, 0)):
        for a in (arr, np.asfortranarray(arr)):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a, version=version)
            data = buf.getvalue()
            head = io.BytesIO(data)
            shape, fortran, dtype = read_npy_header(head)
            assert (shape, dtype) == (a.shape, a.dtype)
            assert fortran == (a.ndim > 1 and not a.flags.c_contiguous)
            assert len(data) - head.tell() == a.nbytes


@pytest.mark.parametrize("header", [
    "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (3,), }",  # structured
    "{'descr': '<u1', 'fortran_order': False, 'shape': (3,), 'extra': 1, }",  # unknown key
    "{'descr': '<u1', 'fortran_order': False, }",  # missing key
    "{'descr': '<u1', 'descr': '<u2', 'fortran_order': False, 'shape': (3,), }",  # repeated key
    "{'descr': '<u1', 'fortran_order': __import__('os'), 'shape': (3,), }",  # code, never evaluated
    "{'descr': '<u1', 'fortran_order': False, 'shape': (-3,), }",
    "{'descr': 'not a dtype', 'fortran_order': False, 'shape': (3,), }",
])
def test_npy_header_reader_refuses_what_is_not_a_plain_array(header: str) -> None:
    raw = header.encode("latin1")
    raw += b" " * (63 - (10 + len(raw)) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + b"\0" * 8
    with pytest.raises(InvalidCodes, match=r"not a valid \.npy"):
        read_npy_header(io.BytesIO(data))
    for cut in (3, 9, 20):  # truncated anywhere
        with pytest.raises(InvalidCodes, match=r"not a valid \.npy"):
            read_npy_header(io.BytesIO(data[:cut]))


def test_load_model_info_from_config_json(tmp_path: Path) -> None:
    cfg = get_preset("evotok-small")
    card = {"format": "evotok/1", "name": "evotok-small", "hash": "ab" * 32, "config": cfg.to_dict(),
            "metrics": {"semantic_by_depth": [0.1, 0.2]}}
    (tmp_path / "config.json").write_text(json.dumps(card))
    info = load_model_info(tmp_path)
    assert (info.grid, info.num_depths, info.codebook_size, info.image_size) == (
        cfg.grid, cfg.num_depths, cfg.codebook_size, cfg.image_size)
    assert info.weights_hash == "ab" * 32 and info.semantic_by_depth == (0.1, 0.2)
    (tmp_path / "config.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError):
        load_model_info(tmp_path)
