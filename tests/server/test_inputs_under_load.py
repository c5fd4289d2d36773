"""Where images decode, which formats are taken, the deadline's starting point, probes under a flood (issue 12)."""

import asyncio
import io
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from protos.auxnet.v1 import inference_pb2 as pb
from server import service as service_module
from server.client import Client
from server.decode import ImageLimits, decode_encoded, probe
from server.engine_config import EngineConfig
from tests.server.conftest import running_server
from tests.server.helpers import images, png


def big_png(side=4096) -> bytes:
    """A flat 4096x4096 PNG compresses to ~49 KB: small on the wire, 50 MB once decoded."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def encode(a, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_a_small_file_that_decodes_big_goes_to_the_decode_thread(server, monkeypatch):
    app, target = server
    data = big_png()
    assert len(data) < 64 * 1024 and probe(data)[1] == 4096 * 4096
    seen = []
    real = service_module.decode_encoded
    monkeypatch.setattr(service_module, "decode_encoded",
                        lambda *a, **k: (seen.append(threading.current_thread().name), real(*a, **k))[1])
    with Client(target) as c:
        # 16 M pixels to decode: the client's 10 s default ran out once on a machine that was also training.
        assert c.classify(data, timeout_s=120).class_name
        assert c.classify(png(images(1)[0])).class_name
    # Before issue 12 the 49 KB file decoded on the event loop (the server's own thread) like a 32x32 one.
    assert seen[0].startswith("decode") and not seen[1].startswith(("decode", "segment"))


def test_big_images_are_reduced_while_8_bit():
    rgb = decode_encoded(big_png(), ImageLimits(), size=(32, 32))
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8 and (rgb == [120, 30, 200]).all()
    jpeg = encode(np.full((2000, 3000, 3), 77, np.uint8), "JPEG", quality=95)
    assert decode_encoded(jpeg, ImageLimits(), size=(32, 32)).shape == (32, 32, 3)


@pytest.mark.parametrize("fmt,kw", [("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("GIF", {})])
def test_formats_pillow_decodes_safely_are_accepted(server, fmt, kw):
    _, target = server
    a = images(1, seed=9)[0]
    if fmt == "GIF":  # GIF is paletted: compare against the same palette image sent as PNG
        a = np.asarray(Image.fromarray(a).convert("P").convert("RGB"))
    with Client(target) as c:
        reference = c.classify(png(a), max_exit=0)
        r = c.classify(encode(a, fmt, **kw), max_exit=0)
    assert r.label == reference.label and r.confidence == pytest.approx(reference.confidence, abs=1e-5)


@pytest.mark.parametrize("data,expected", [
    (encode(images(1)[0], "GIF")[:900], "GIF image is truncated or corrupt"),
    (b"GIF89a" + bytes(40), "not a supported image format"),
    (b"BM" + bytes(60), "image header is corrupt: OSError: Unsupported BMP header type (0)"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not a supported image format"),  # EPS would run Ghostscript: refused
])
def test_bad_images_are_named_without_python_reprs(server, data, expected):
    _, target = server
    with Client(target) as c, pytest.raises(grpc.RpcError) as e:
        c.classify(data)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in e.value.details() and "0x" not in e.value.details().split("starts with")[0], e.value.details()
    assert "object at" not in e.value.details()


def test_the_deadline_counts_from_arrival_not_from_after_the_decode(tiny_repo, monkeypatch):
    real = service_module.decode_encoded
    monkeypatch.setattr(service_module, "decode_encoded", lambda *a, **k: (time.sleep(1.0), real(*a, **k))[1])
    with running_server(tiny_repo) as (app, target):
        engine = app.engines["tiny"]
        seen = []
        classify = engine.classify

        async def spy(x, arrival, budget, conf, max_exit, deadline, use_policy=False, priority=0):
            seen.append((arrival, deadline, time.monotonic()))
            return await classify(x, arrival, budget, conf, max_exit, deadline, use_policy, priority)

        engine.classify = spy
        with Client(target) as c:
            c.classify(png(images(1)[0]), timeout_s=5.0)
    arrival, deadline, after_decode = seen[0]
    assert after_decode - arrival >= 1.0
    # The client's 5 s run from when the request arrived (less transit): the decode does not eat into them.
    # Measured after the decode, as before the fix, they would be at most 4.0. The upper bound allows for
    # gRPC's timeout header, whose unit rounding let it reach 5.009 s once under load.
    assert 4.2 < deadline - arrival <= 5.05


def test_probes_on_the_health_port_answer_through_a_flood(tiny_repo):
    # A flood of big images holds every RPC slot of the inference port (its limit is max_inflight + 16):
    # the health service there is refused too, while the separate health port still answers.
    data = big_png(2048)
    cfg = EngineConfig(max_batch=16, max_inflight=1, monitor_fraction=0.0)
    with running_server(tiny_repo, engine=cfg, health_port=0) as (app, target):
        stop = threading.Event()

        def flood():
            with Client(target, retries=0) as c:
                while not stop.is_set():
                    try:
                        c.classify(data, timeout_s=10)
                    except grpc.RpcError:
                        pass

        threads = [threading.Thread(target=flood) for _ in range(40)]
        for t in threads:
            t.start()
        main_port, health_port = [], []
        try:
            time.sleep(0.5)
            for _ in range(20):
                for port, out in ((app.port, main_port), (app.health_port, health_port)):
                    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                        try:
                            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                            out.append(r.status)
                        except grpc.RpcError as e:
                            out.append(e.code())
                time.sleep(0.02)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    assert health_port == [health_pb2.HealthCheckResponse.SERVING] * 20
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in main_port  # what a probe on the inference port would have seen


def test_batch_items_decode_concurrently_and_a_bad_one_is_named(server):
    _, target = server
    good = png(images(1)[0])
    with Client(target) as c:
        batch = pb.ClassifyBatchRequest(requests=[pb.ClassifyRequest(encoded=d) for d in (good, big_png(), good)])
        assert len(c.stub.ClassifyBatch(batch, timeout=30).responses) == 3
        batch.requests[1].encoded = b"\x89PNG\r\n\x1a\n" + bytes(30)
        with pytest.raises(grpc.RpcError) as e:
            c.stub.ClassifyBatch(batch, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("requests[1]: ")


def test_health_port_shares_state_with_the_inference_port(tiny_repo):
    with running_server(tiny_repo, health_port=0) as (app, _):
        with grpc.insecure_channel(f"127.0.0.1:{app.health_port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert stub.Check(health_pb2.HealthCheckRequest(service="auxnet.v1.EarlyExitService"), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
            asyncio.run_coroutine_threadsafe(app.health.enter_graceful_shutdown(), app.loop).result(5)
            assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
                health_pb2.HealthCheckResponse.NOT_SERVING


def test_table_normalisation_gives_exactly_the_float_path():
    """to_model_input's lookup table (8-bit images at the model's size) and the general float path agree
    bit for bit, so the table changes no answer."""
    import numpy as np

    from server.decode import to_model_input

    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rgb[0, 0] = (0, 255, 128)
    general = np.ascontiguousarray(((rgb.astype(np.float32) / 255.0 - np.asarray(mean, np.float32))
                                    / np.asarray(std, np.float32)).transpose(2, 0, 1))
    table = to_model_input(rgb, (3, 32, 32), mean, std)
    assert table.dtype == np.float32 and table.shape == (3, 32, 32) and table.flags.c_contiguous
    assert np.array_equal(table, general)
    as_float = to_model_input(rgb.astype(np.float32) / 255.0, (3, 32, 32), mean, std)  # the float path itself
    assert np.array_equal(as_float, general)
