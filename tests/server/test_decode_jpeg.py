"""The direct JPEG path (libjpeg-turbo through simplejpeg): the same pixels as Pillow's decode, the same
limits before any pixel is decoded, and everything it does not take (other sizes, CMYK, corrupt data)
left to Pillow, whose messages clients already know."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import server.decode as decode
from server.decode import ImageLimits, decode_encoded, probe
from server.errors import InvalidInput

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "samples" / "cifar10-test").rglob("*.jpg"))


def jpeg(a: np.ndarray, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(a)
    (im.convert(mode) if mode else im).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def pillow_only(data: bytes, size=(32, 32)) -> np.ndarray:
    saved = decode.simplejpeg
    decode.simplejpeg = None
    try:
        return decode_encoded(data, ImageLimits(), size=size)
    finally:
        decode.simplejpeg = saved


@pytest.fixture
def direct_calls(monkeypatch):
    """Counts libjpeg-turbo decodes, to show which path an image took."""
    calls = []
    real = decode.simplejpeg.decode_jpeg
    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_cifar_jpegs_decode_directly_to_exactly_pillows_pixels(direct_calls):
    assert len(SAMPLES) >= 20
    for f in SAMPLES:
        data = f.read_bytes()
        assert probe(data) == (None, 32 * 32)  # no Pillow image opened for them
        np.testing.assert_array_equal(decode_encoded(data, ImageLimits(), size=(32, 32)), pillow_only(data))
    assert len(direct_calls) == len(SAMPLES)


@pytest.mark.parametrize("kind", ["gray", "progressive", "444"])
def test_gray_progressive_and_unsubsampled_jpegs_too(direct_calls, kind):
    a = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = {"gray": lambda: jpeg(a, "L"), "progressive": lambda: jpeg(a, progressive=True),
            "444": lambda: jpeg(a, subsampling=0)}[kind]()
    got = decode_encoded(data, ImageLimits(), size=(32, 32))
    assert got.shape == (32, 32, 3) and got.dtype == np.uint8 and direct_calls == [1]
    np.testing.assert_array_equal(got, pillow_only(data))


def test_cmyk_and_other_sizes_go_to_pillow(direct_calls):
    a = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cmyk = jpeg(a[:32, :32], "CMYK")
    np.testing.assert_array_equal(decode_encoded(cmyk, ImageLimits(), size=(32, 32)), pillow_only(cmyk))
    big = jpeg(a)  # 64x64: reduced by Pillow while still 8-bit
    np.testing.assert_array_equal(decode_encoded(big, ImageLimits(), size=(32, 32)), pillow_only(big))
    assert direct_calls == []


def test_limits_hold_before_any_pixel_is_decoded(direct_calls):
    wide = jpeg(np.zeros((8, 600, 3), np.uint8))
    with pytest.raises(InvalidInput, match="image of 600x8 pixels exceeds the limit \\(500 per side"):
        decode_encoded(wide, ImageLimits(max_pixels=10**6, max_side=500), size=(32, 32))
    assert direct_calls == []


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9])
def test_corrupt_jpegs_are_refused_in_pillows_words(cut):
    data = SAMPLES[0].read_bytes()
    bad = data[: int(len(data) * cut)]
    with pytest.raises(InvalidInput) as direct:
        decode_encoded(bad, ImageLimits(), size=(32, 32))
    with pytest.raises(InvalidInput) as pillow:
        pillow_only(bad)
    assert str(direct.value) == str(pillow.value)  # e.g. "image header is corrupt: OSError: Truncated File Read"


def jpeg_441(a: np.ndarray) -> bytes:
    """A valid JPEG with 4:4:1 chroma subsampling (luma sampled 1 x 4 per chroma sample): a 4:2:0 one (4 luma
    blocks per MCU) relabelled 1 x 4 (4 blocks too), so its scan still decodes, to other pixels. libjpeg-turbo 3
    reads it; simplejpeg 1.9's header reader has no name for that subsampling and raised KeyError, which the
    server answered as an internal error (found by mutating images, 2026-12-01)."""
    data = bytearray(jpeg(a, subsampling="4:2:0"))
    sof = data.index(b"\xff\xc0")
    assert data[sof + 10 : sof + 12] == b"\x01\x22"  # component 1 (Y): sampling 2 x 2
    data[sof + 11] = 0x14
    return bytes(data)


@pytest.mark.parametrize("size", [None, (32, 32), (16, 16)])
def test_a_jpeg_whose_subsampling_simplejpeg_cannot_name_is_decoded_by_pillow(size):
    data = jpeg_441(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    opened, pixels = probe(data)
    assert pixels == 32 * 32
    got = decode_encoded(data, ImageLimits(), size=size, opened=opened)
    assert np.array_equal(got, pillow_only(data, size=size))
    assert np.array_equal(decode_encoded(data, ImageLimits(), size=size), got)  # not probed first: the same


def test_without_simplejpeg_pillow_decodes_everything(monkeypatch):
    monkeypatch.setattr(decode, "simplejpeg", None)
    data = SAMPLES[1].read_bytes()
    opened, pixels = probe(data)
    assert opened is not None and pixels == 32 * 32  # Pillow opened it
    assert decode_encoded(data, ImageLimits(), size=(32, 32), opened=opened).shape == (32, 32, 3)
