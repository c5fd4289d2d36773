"""Raw pixels (auxnet.v1 `raw`, the Open Inference Protocol's `pixels`) give the model the very input a PNG of the
same pixels gives, at every size, gray, RGB or RGBA (server/decode.py: both resize 8-bit, box-reduced first)."""

import io

import numpy as np
import pytest
from PIL import Image

from server.decode import ImageLimits, decode_encoded, decode_raw, to_model_input

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


@pytest.mark.parametrize("shape", [(32, 32, 3), (64, 48, 1), (40, 40, 4), (700, 333, 3), (31, 90, 3)])
def test_raw_uint8_pixels_equal_a_png_of_them(shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    raw = to_model_input(decode_raw(pixels.tobytes(), *shape, False, ImageLimits()), (3, 32, 32), MEAN, STD)
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if shape[2] == 1 else pixels).save(buf, format="PNG")
    encoded = to_model_input(decode_encoded(buf.getvalue(), ImageLimits(), size=(32, 32)), (3, 32, 32), MEAN, STD)
    assert raw.shape == (3, 32, 32) and raw.dtype == np.float32
    np.testing.assert_array_equal(raw, encoded)


def test_raw_float_pixels_are_still_resized_as_floats():
    """FP32 pixels in [0, 1] keep their precision: not rounded to 8 bits on the way."""
    pixels = np.full((64, 64, 3), 0.5 + 1e-4, np.float32)
    x = to_model_input(decode_raw(pixels.tobytes(), 64, 64, 3, True, ImageLimits()), (3, 32, 32), MEAN, STD)
    expected = (0.5 + 1e-4 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    np.testing.assert_allclose(x[:, 0, 0], expected, rtol=1e-5)
