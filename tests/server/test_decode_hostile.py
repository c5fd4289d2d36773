"""Images a hostile or broken client sends: whatever the bytes, decoding answers pixels or InvalidInput (never
another exception, which the server would answer as an internal error), and a client's corrupt metadata
writes nothing to the server's stderr."""

import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from bench.image_fuzz import SEED_ENCODINGS, encode, mutate
from server.decode import ImageLimits, decode_encoded
from server.errors import InvalidInput

PIXELS = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def tiff_with_a_tag_past_the_end() -> bytes:
    """A TIFF whose BitsPerSample entry (3 values, stored out of line) points past the end of the file."""
    data = bytearray(encode(PIXELS, "TIFF"))
    assert data[:4] == b"II*\0"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack_from("<H", data, entry)[0] == 258:
            struct.pack_into("<I", data, entry + 8, 10**6)
            return bytes(data)
    raise AssertionError("no BitsPerSample entry")


def decode_or_refuse(data: bytes, size=(32, 32)):
    try:
        return decode_encoded(data, ImageLimits(), size=size)
    except InvalidInput as e:
        return e


def in_a_fresh_interpreter(code: str) -> subprocess.CompletedProcess:
    """server.decode's warning filters are set at its import, as in the server; pytest imports test modules
    inside a warnings context of its own and drops them after collection, so they are checked in a process of
    their own."""
    prelude = "from server.decode import ImageLimits, decode_encoded\nfrom server.errors import InvalidInput\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])


def test_a_clients_corrupt_metadata_writes_nothing_to_stderr(tmp_path):
    (tmp_path / "bad.tif").write_bytes(tiff_with_a_tag_past_the_end())
    decode = f"""
import pathlib
for _ in range(3):
    try:
        decode_encoded(pathlib.Path({str(tmp_path / "bad.tif")!r}).read_bytes(), ImageLimits(), size=(32, 32))
    except InvalidInput:
        pass
print("decoded")
"""
    quiet = in_a_fresh_interpreter(decode)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "decoded\n", "")
    loud = in_a_fresh_interpreter("import warnings; warnings.resetwarnings(); warnings.simplefilter('default')\n" + decode)
    assert "TiffImagePlugin.py" in loud.stderr and "UserWarning" in loud.stderr  # what the filters keep off stderr


def test_an_image_past_pillows_own_pixel_limit_is_refused_as_a_bomb(tmp_path):
    """A PNG header declaring 10,000 x 10,000 pixels (past Pillow's 89M): refused at open, before any pixel."""
    png = bytearray(encode(PIXELS, "PNG"))
    struct.pack_into(">II", png, 16, 10_000, 10_000)  # IHDR's width and height
    struct.pack_into(">I", png, 29, zlib.crc32(png[12:29]))  # and its CRC
    (tmp_path / "big.png").write_bytes(png)
    run = in_a_fresh_interpreter(f"""
try:
    decode_encoded(__import__("pathlib").Path({str(tmp_path / "big.png")!r}).read_bytes(), ImageLimits())
except InvalidInput as e:
    print(e)
""")
    assert run.stdout.startswith("image refused as a decompression bomb: Image size (100000000 pixels) exceeds limit")
    assert run.stderr == ""


@pytest.mark.filterwarnings("ignore::UserWarning")  # pytest drops the import-time filters (above)
@pytest.mark.parametrize("fmt, kw", SEED_ENCODINGS, ids=[f"{f}-{'-'.join(map(str, k.values())) or 'plain'}" for f, k in SEED_ENCODINGS])
def test_mutated_images_decode_or_are_refused_by_name(fmt, kw):
    """300 seeded mutations per seed encoding (bench/image_fuzz.py's), at the model's size and their own: pixels or
    InvalidInput, nothing else. The campaign of RESULTS §25 found the KeyError that test_decode_jpeg.py's 4:4:1
    case pins down; this keeps a sample of it in CI."""
    rng = random.Random(f"{fmt}{kw}")
    bases = [encode(PIXELS, fmt, **kw), encode(np.repeat(np.repeat(PIXELS, 3, 0), 2, 1)[:80, :64], fmt, **kw)]
    for _ in range(300):
        data = mutate(rng.choice(bases), rng)
        for size in (None, (32, 32)):
            got = decode_or_refuse(data, size)
            if not isinstance(got, InvalidInput):
                assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3
                assert size is None or got.shape[:2] == size


def test_a_server_without_tiff_and_jpeg_refuses_them_by_name_on_both_protocols(tiny_repo):
    """--image-formats PNG: TIFF and JPEG (also the libjpeg-turbo path, which never opens Pillow) are refused as
    unsupported, naming what is accepted; PNG is served. auxnet.v1 gRPC and the Open Inference Protocol's HTTP."""
    import base64

    import grpc

    from server.client import Client
    from tests.server.conftest import running_server
    from tests.server.v2_helpers import error_of, http

    as_format = {fmt: encode(PIXELS, fmt) for fmt in ("PNG", "TIFF", "JPEG")}
    with running_server(tiny_repo, limits=ImageLimits(formats=("PNG",))) as (app, target):
        infer = f"http://127.0.0.1:{app.http_port}/v2/models/tiny/infer"

        def over_http(data: bytes):
            return http(infer, "POST", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                    "parameters": {"content_type": "base64"},
                                                    "data": [base64.b64encode(data).decode()]}]})

        with Client(target) as c:
            assert c.classify(as_format["PNG"]).class_name
            assert over_http(as_format["PNG"])[0] == 200
            for fmt in ("TIFF", "JPEG"):
                with pytest.raises(grpc.RpcError) as e:
                    c.classify(as_format[fmt])
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not a supported image format" in e.value.details() and "send PNG bytes" in e.value.details()
                status, message = error_of(over_http(as_format[fmt]))
                assert status == 400 and "send PNG bytes in 'encoded'" in message
