"""Request images -> normalised float32 (C, H, W) arrays, refusing bad input with a message that says
what is wrong. Limits keep a request from costing unbounded memory (no decompression bombs)."""

from __future__ import annotations

import functools
import io
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np

from server.errors import InvalidInput

try:  # libjpeg-turbo without Pillow's Python-level JPEG header parsing: the same pixels, ~8x faster at 32x32
    import simplejpeg
except ImportError:  # a base dependency, but the server still decodes everything through Pillow without it
    simplejpeg = None

JPEG_START = b"\xff\xd8"
# CMYK and YCCK JPEGs go to Pillow: its CMYK -> RGB conversion differs from libjpeg-turbo's (by 1 level).
FAST_JPEG_COLORSPACES = ("YCbCr", "Gray")

# Formats whose Pillow decoders are mature and bounded by the pixel limit below; everything else (EPS runs
# Ghostscript, for one) is refused by name. `--image-formats` narrows them: TIFF, for one, is decoded by libtiff,
# which prints its own complaints about a corrupt file to the process's stderr (C code: no Python filter reaches
# it), so a server whose clients send no TIFF is quieter and smaller to attack without it.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
_OBJECT_REPR = re.compile(r"<[^<>]* (object )?at 0x[0-9a-fA-F]+>")


def _decoder_warnings() -> None:
    """Process-wide warning filters for decoding clients' images, set once at import: `warnings.catch_warnings`
    around each decode (as this did until 2026-12-01) swaps the process's filters while other decode threads run,
    and resets Python's once-per-place memory of warnings, so every warning printed again at every request.
    - Pillow's UserWarnings about a client's corrupt metadata ("Corrupt EXIF data", "Tag data larger than file")
      are ignored: the client's answer says what was wrong; printed, they let any client write lines to the
      server's stderr with each request (2 per corrupt TIFF, measured by mutating images).
    - Pillow's decompression-bomb warning (an image past its MAX_IMAGE_PIXELS, 89M) is an error: a decode refuses
      it. Our own limit (8192 per side, `--max-pixels`) is lower and checked first wherever a size is known
      before decoding; a GIF frame is sized only as it loads."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


_decoder_warnings()


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 4096 * 4096  # declared width * height, checked before decoding
    max_side: int = 8192
    formats: tuple[str, ...] = FORMATS  # the encoded formats accepted, a subset of FORMATS


def _clean(message: str) -> str:
    """Decoder messages without Python object reprs (`<_io.BytesIO object at 0x...>` means nothing to a client)."""
    return _OBJECT_REPR.sub("the image bytes", message)[:200]


def _open(data: bytes, formats: tuple[str, ...] = FORMATS):
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidInput(f"image is empty: send encoded image bytes ({', '.join(formats)}) in 'encoded', "
                           "or pixels in 'raw'")
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # past Pillow's limit: past ours too
        raise InvalidInput(f"image refused as a decompression bomb: {_clean(str(e))}") from e
    except UnidentifiedImageError as e:
        raise InvalidInput(f"image bytes are not a supported image format (starts with {data[:8].hex()}); send "
                           f"{', '.join(formats)} bytes in 'encoded' or pixels in 'raw'") from e
    except Exception as e:  # noqa: BLE001 - a header so broken that identification itself fails
        raise InvalidInput(f"image header is corrupt: {type(e).__name__}: {_clean(str(e))}") from e


def jpeg_header(data: bytes) -> tuple[int, int, str] | None:
    """(height, width, colorspace) of a JPEG read by libjpeg-turbo (~1.4 us), or None: not a JPEG, a header
    it cannot read, or simplejpeg missing. Pillow then opens the bytes (and names what is wrong)."""
    if simplejpeg is None or not data.startswith(JPEG_START):
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:  # noqa: BLE001 - ValueError, and KeyError for a valid 4:4:1 JPEG (simplejpeg 1.9): Pillow's turn
        return None
    return h, w, colorspace


def probe(data: bytes, formats: tuple[str, ...] = FORMATS):
    """(opened image, width x height) from the header alone (no decoding), to decide where to decode;
    (None, 0) if unreadable (the decode itself then reports the problem). Pass the image on to
    `decode_encoded(..., opened=)`: identifying the format again costs as much as a small decode. A JPEG
    that libjpeg-turbo reads is not opened at all (None, its pixels): `decode_encoded` reads it directly."""
    head = jpeg_header(data) if "JPEG" in formats else None
    if head is not None:
        return None, head[0] * head[1]
    try:
        im = _open(data, formats)
        w, h = im.size
        return im, w * h
    except InvalidInput:
        return None, 0


def decode_encoded(data: bytes, limits: ImageLimits, size: tuple[int, int] | None = None, opened=None) -> np.ndarray:
    """Encoded image bytes -> uint8 RGB (H, W, 3). With `size` (H, W), larger images are reduced while still
    8-bit (JPEG's DCT scaling, then Pillow's bilinear with antialiasing), not as full-size float copies.
    `opened`: the image `probe` returned for these bytes, not yet loaded."""
    from PIL import Image

    if opened is None and "JPEG" in limits.formats and (rgb := _decode_jpeg_directly(data, limits, size)) is not None:
        return rgb
    im = opened if opened is not None else _open(data, limits.formats)
    kind = im.format
    try:
        w, h = im.size
        _check_size(h, w, limits)
        if size is not None and kind == "JPEG" and (w > 2 * size[1] or h > 2 * size[0]):
            im.draft("RGB", (size[1] * 2, size[0] * 2))  # decode at 1/2..1/8 scale: far less work
        im.load()  # a GIF frame past Pillow's limit raises its bomb warning here (an error: _decoder_warnings)
        if size is not None and im.size != (size[1], size[0]) and not im.mode.startswith("I"):
            # Resize inside Pillow (it releases the GIL) before any full-size array exists; reducing_gap:
            # box-reduce by an integer factor first, then resample: far cheaper from 4096 px.
            im = (im if im.mode == "RGB" else im.convert("RGB")).resize((size[1], size[0]), Image.BILINEAR,
                                                                         reducing_gap=3.0)
        rgb = _to_rgb8(im)
        if size is not None and rgb.shape[:2] != size:  # 16-bit gray: scaled to 8 bits first, then resized
            rgb = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR, reducing_gap=3.0),
                             dtype=np.uint8)
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidInput(f"image refused as a decompression bomb: {_clean(str(e))}") from e
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, zlib.error, struct.error...
        raise InvalidInput(f"{kind} image is truncated or corrupt: {type(e).__name__}: {_clean(str(e))}") from e
    return rgb


def _decode_jpeg_directly(data: bytes, limits: ImageLimits, size: tuple[int, int] | None) -> np.ndarray | None:
    """The common case, a YCbCr or gray JPEG already at the model's size, decoded by libjpeg-turbo straight
    into an RGB array: bit-identical to Pillow's decode (the same library and settings; checked on 3,334
    CIFAR-10 JPEGs and in the tests) without its per-image Python work. None: anything else, or any decode
    error, for Pillow to decode or report in its words."""
    head = jpeg_header(data)
    if head is None:
        return None
    h, w, colorspace = head
    _check_size(h, w, limits)  # before any pixel is decoded, as on Pillow's path
    if colorspace not in FAST_JPEG_COLORSPACES or (size is not None and (h, w) != tuple(size)):
        return None
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)  # strict: corrupt data raises
    except Exception:  # noqa: BLE001 - whatever it cannot do, Pillow decodes or names
        return None


def _to_rgb8(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray: scale to 8 bits, don't clip
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        g = np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")  # gray, palette, RGBA (alpha dropped), CMYK
    return np.asarray(im, dtype=np.uint8)


def decode_raw(data: bytes, height: int, width: int, channels: int, float32: bool, limits: ImageLimits) -> np.ndarray:
    """Raw HWC pixels -> RGB (H, W, 3): uint8 pixels stay uint8 (to_model_input then resizes them as an encoded
    image's, so a PNG of the same pixels gives the same input); float32 ones, checked to lie in [0, 1], stay float."""
    if height == 0 or width == 0:
        raise InvalidInput(f"raw image has height {height} and width {width}; both must be positive")
    _check_size(height, width, limits)
    if channels not in (1, 3, 4):
        raise InvalidInput(f"raw image has {channels} channels; valid: 1 (gray), 3 (RGB), 4 (RGBA)")
    itemsize = 4 if float32 else 1
    expected = height * width * channels * itemsize
    if len(data) != expected:
        raise InvalidInput(f"raw image data has {len(data)} bytes but {height}x{width}x{channels} "
                           f"{'float32' if float32 else 'uint8'} needs {expected}")
    if float32:
        a = np.frombuffer(data, dtype="<f4").reshape(height, width, channels)
        if not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise InvalidInput(f"raw float32 image has {bad} NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise InvalidInput(f"raw float32 pixels must lie in [0, 1]; got range [{lo:.4g}, {hi:.4g}]")
        a = a.astype(np.float32)
    else:
        a = np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels)
    if channels == 1:
        a = np.repeat(a, 3, axis=2)
    return a[..., :3]


def _check_size(h: int, w: int, limits: ImageLimits) -> None:
    if h > limits.max_side or w > limits.max_side or h * w > limits.max_pixels:
        raise InvalidInput(f"image of {w}x{h} pixels exceeds the limit ({limits.max_side} per side, "
                           f"{limits.max_pixels} pixels in all)")


@functools.lru_cache(maxsize=16)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: channel c, value v -> (v / 255 - mean[c]) / std[c], by the very float32 operations
    of the general path below, so the two give identical inputs."""
    v = np.arange(256, dtype=np.float32)[None, :] / 255.0
    return (v - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]


_CHANNEL = np.arange(3)[:, None, None]


def to_model_input(rgb: np.ndarray, shape: tuple[int, int, int], mean, std) -> np.ndarray:
    """(H, W, 3) uint8 or [0, 1] float -> normalised float32 (C, H, W) at the model's size. Other sizes
    are resized bilinearly (as a client would); the model's own size passes untouched."""
    _, h, w = shape
    if rgb.dtype == np.uint8 and rgb.shape[:2] != (h, w):
        # As decode_encoded resizes a file's pixels (8-bit, box-reduced first): the same pixels give the same input
        # on every surface, and a 1024x1024 array takes ~4 ms here where float copies per channel took ~30 (§42).
        from PIL import Image

        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., :3])).resize((w, h), Image.BILINEAR, reducing_gap=3.0),
                         dtype=np.uint8)
    if rgb.dtype == np.uint8 and rgb.shape[:2] == (h, w):
        # The common case (an 8-bit image at the model's size): one table lookup instead of five array
        # passes, 3x cheaper (issue 12); table values are finite, so no check is needed.
        planes = np.ascontiguousarray(rgb.transpose(2, 0, 1))  # the result takes the index array's layout
        return _normalise_table(tuple(mean), tuple(std))[_CHANNEL, planes]
    if rgb.dtype == np.uint8:
        rgb = rgb.astype(np.float32) / 255.0
    if rgb.shape[:2] != (h, w):
        from PIL import Image

        chans = [Image.fromarray(rgb[..., c].astype(np.float32), mode="F").resize((w, h), Image.BILINEAR) for c in range(3)]
        rgb = np.stack([np.asarray(c, dtype=np.float32) for c in chans], axis=2)
    x = (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    x = np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
    if not math.isfinite(float(x.sum())):
        raise InvalidInput("image produced non-finite values after normalisation")
    return x
