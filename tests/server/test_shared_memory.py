"""Triton's system shared memory extension (server/shared_memory.py): inputs read from and outputs written to
regions a same-host client registers, with Triton's own client utilities over gRPC and HTTP; the same answers as
in-message tensors; off by default; keys that are paths or links, sizes past the object, unknown regions, too small
outputs refused by name; fixed with --reuse-port alone (shared under --workers: test_worker_sync.py)."""

import os
import uuid

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from server.errors import FailedPrecondition, InvalidInput, QueueFull
from server.shared_memory import MAX_REGIONS, SharedMemoryRegistry
from tests.server.helpers import images
from tests.server.test_serving import metric
from tests.server.v2_helpers import http, v2_server

MODEL = "tiny"
PIXELS = np.stack(images(2)).astype(np.uint8)  # (2, 32, 32, 3)


@pytest.fixture
def regions():
    """Shared memory objects made as a client makes them (tritonclient), destroyed after the test."""
    made = []

    def make(byte_size):
        key = f"/auxnet-test-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key.strip("/"), key, byte_size)
        made.append(handle)
        return key, handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def refused(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as e:
        call()
    return str(e.value.status()), e.value.message()


@pytest.mark.parametrize("module", [tgrpc, thttp], ids=["grpc", "http"])
def test_inputs_and_outputs_through_shared_memory_give_the_in_message_answers(tiny_repo, regions, module):
    in_key, in_handle = regions(PIXELS.nbytes)
    out_key, out_handle = regions(64 + 2 * 10 * 4)
    shm.set_shared_memory_region(in_handle, [PIXELS])
    with v2_server(tiny_repo, allow_client_shm=True) as (app, target, url):
        c = module.InferenceServerClient(target if module is tgrpc else url)
        c.register_system_shared_memory("in", in_key, PIXELS.nbytes)
        c.register_system_shared_memory("out", out_key, 64 + 80)
        status = c.get_system_shared_memory_status(**({"as_json": True} if module is tgrpc else {}))
        names = sorted(status["regions"]) if module is tgrpc else sorted(r["name"] for r in status)
        assert names == ["in", "out"]

        inp = module.InferInput("pixels", list(PIXELS.shape), "UINT8")
        inp.set_shared_memory("in", PIXELS.nbytes)
        probs_out = module.InferRequestedOutput("probabilities")
        probs_out.set_shared_memory("out", 80, offset=64)
        label_out = module.InferRequestedOutput("label")
        result = c.infer(MODEL, [inp], outputs=[probs_out, label_out])
        written = shm.get_contents_as_numpy(out_handle, np.float32, [2, 10], offset=64)

        plain = module.InferInput("pixels", list(PIXELS.shape), "UINT8")
        plain.set_data_from_numpy(PIXELS)
        expected = c.infer(MODEL, [plain], outputs=[module.InferRequestedOutput("probabilities"),
                                                   module.InferRequestedOutput("label")])
        np.testing.assert_array_equal(written, expected.as_numpy("probabilities"))
        np.testing.assert_array_equal(result.as_numpy("label"), expected.as_numpy("label"))
        entry = result.get_output("probabilities")  # (tritonclient.grpc's as_json=True returns None: its bug)
        region = entry.parameters["shared_memory_region"].string_param if module is tgrpc else entry["parameters"]["shared_memory_region"]
        assert region == "out"
        assert "system_shared_memory" in c.get_server_metadata(**({"as_json": True} if module is tgrpc else {}))["extensions"]

        assert (metric(app, "auxnet_shared_memory_regions"), metric(app, "auxnet_shared_memory_bytes")) == (2, PIXELS.nbytes + 144)
        c.unregister_system_shared_memory("in")
        assert list(app.shared_memory.regions) == ["out"]
        assert (metric(app, "auxnet_shared_memory_regions"), metric(app, "auxnet_shared_memory_bytes")) == (1, 144)
        status, message = refused(lambda: c.infer(MODEL, [inp]))
        assert status in ("StatusCode.INVALID_ARGUMENT", "400") and "shared memory region 'in' is not registered" in message
        c.unregister_system_shared_memory()
        assert app.shared_memory.regions == {} and metric(app, "auxnet_shared_memory_regions") == 0


def test_off_by_default_and_not_listed(tiny_repo, regions):
    key, _ = regions(16)
    with v2_server(tiny_repo) as (app, target, url):
        c = tgrpc.InferenceServerClient(target)
        status, message = refused(lambda: c.register_system_shared_memory("r", key, 16))
        assert status == "StatusCode.FAILED_PRECONDITION" and "--allow-client-shm" in message
        assert "system_shared_memory" not in c.get_server_metadata(as_json=True)["extensions"]
        inp = tgrpc.InferInput("pixels", [1, 32, 32, 3], "UINT8")
        inp.set_shared_memory("r", 3072)
        status, message = refused(lambda: c.infer(MODEL, [inp]))
        assert status == "StatusCode.FAILED_PRECONDITION" and "client shared memory is off" in message


def test_keys_sizes_and_names_are_checked_by_name(regions, tmp_path):
    key, _ = regions(100)
    r = SharedMemoryRegistry(allowed=True)
    os.symlink(tmp_path / "secret", link := f"/dev/shm/auxnet-test-link-{uuid.uuid4().hex[:8]}")
    (tmp_path / "secret").write_bytes(b"x" * 100)
    try:
        for bad_key, says in (("../etc/passwd", "is not a POSIX shared memory name"), ("/a/b", "is not a POSIX shared"),
                              ("..", "is not a POSIX"), ("/auxnet-no-such-object", "no shared memory object"),
                              (link[len("/dev/shm"):], "cannot open shared memory object")):
            with pytest.raises(InvalidInput, match=says):
                r.register("r", bad_key, 0, 10)
    finally:
        os.unlink(link)
    with pytest.raises(InvalidInput, match="runs past object"):
        r.register("r", key, 50, 51)
    with pytest.raises(InvalidInput, match="byte_size must be at least 1"):
        r.register("r", key, 0, 0)
    r.register("r", key, 10, 50)
    with pytest.raises(InvalidInput, match="is registered already"):
        r.register("r", key, 0, 10)
    with pytest.raises(InvalidInput, match=r"shared_memory_offset 40 \+ byte_size 11 runs past region 'r'"):
        r.read("pixels", {"shared_memory_region": "r", "shared_memory_byte_size": 11, "shared_memory_offset": 40})
    with pytest.raises(InvalidInput, match="without shared_memory_region"):
        r.read("pixels", {"shared_memory_byte_size": 11})
    with pytest.raises(InvalidInput, match="must be a whole number >= 0"):
        r.read("pixels", {"shared_memory_region": "r", "shared_memory_byte_size": "11"})
    where = r.target("probabilities", {"shared_memory_region": "r", "shared_memory_byte_size": 8})
    with pytest.raises(InvalidInput, match="is 12 bytes; shared_memory_byte_size 8 is too small"):
        r.write("probabilities", where, b"x" * 12)
    r.write("probabilities", where, b"abcdefgh")
    assert r.read("x", {"shared_memory_region": "r", "shared_memory_byte_size": 8}) == b"abcdefgh"  # at offset 10
    for i in range(MAX_REGIONS - 1):
        r.register(f"r{i}", key, 0, 1)
    with pytest.raises(QueueFull, match=f"{MAX_REGIONS} shared memory regions are registered"):
        r.register("one-more", key, 0, 1)
    r.close()
    with pytest.raises(FailedPrecondition, match="started with --reuse-port alone"):
        SharedMemoryRegistry(allowed=True, runtime_updates=False).register("r", key, 0, 1)


def test_http_refuses_an_input_with_both_data_and_a_region(tiny_repo, regions):
    key, handle = regions(PIXELS[:1].nbytes)
    shm.set_shared_memory_region(handle, [PIXELS[:1]])
    with v2_server(tiny_repo, allow_client_shm=True) as (app, target, url):
        body = {"key": key, "byte_size": PIXELS[:1].nbytes}
        assert http(f"http://{url}/v2/systemsharedmemory/region/in/register", "POST", body)[0] == 200
        assert http(f"http://{url}/v2/systemsharedmemory/region/x/register", "POST", {"key": key, "byte_size": -1})[0] == 400
        params = {"shared_memory_region": "in", "shared_memory_byte_size": PIXELS[:1].nbytes}
        both = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "parameters": params,
                            "data": PIXELS[:1].ravel().tolist()}]}
        status, _, text = http(f"http://{url}/v2/models/{MODEL}/infer", "POST", both)
        assert status == 400 and b"names a shared memory region and also carries data" in text
        del both["inputs"][0]["data"]
        assert http(f"http://{url}/v2/models/{MODEL}/infer", "POST", both)[0] == 200



def test_the_stream_writes_outputs_to_shared_memory_and_refuses_them_for_progressive_requests(tiny_repo, regions):
    """Refused until 2026-12-02 ("not offered on the stream"); Triton's stream takes them."""
    import queue

    in_key, in_handle = regions(PIXELS[:1].nbytes)
    out_key, out_handle = regions(2 * 40)
    shm.set_shared_memory_region(in_handle, [PIXELS[:1]])
    with v2_server(tiny_repo, allow_client_shm=True) as (app, target, url):
        c = tgrpc.InferenceServerClient(target)
        c.register_system_shared_memory("in", in_key, PIXELS[:1].nbytes)
        c.register_system_shared_memory("out", out_key, 80)
        inp = tgrpc.InferInput("pixels", [1, 32, 32, 3], "UINT8")
        inp.set_shared_memory("in", PIXELS[:1].nbytes)
        plain = tgrpc.InferInput("pixels", [1, 32, 32, 3], "UINT8")
        plain.set_data_from_numpy(PIXELS[:1])
        expected = c.infer(MODEL, [plain], outputs=[tgrpc.InferRequestedOutput("probabilities")]).as_numpy("probabilities")

        answers = queue.Queue()
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        for offset in (0, 40):  # two requests in flight on one stream, each its own place in the region
            out = tgrpc.InferRequestedOutput("probabilities")
            out.set_shared_memory("out", 40, offset=offset)
            c.async_stream_infer(MODEL, [inp], outputs=[out], request_id=f"r{offset}")
        got = [answers.get(timeout=20) for _ in range(2)]
        progressive = tgrpc.InferRequestedOutput("probabilities")
        progressive.set_shared_memory("out", 40)
        c.async_stream_infer(MODEL, [inp], outputs=[progressive], parameters={"progressive": True})
        refused = answers.get(timeout=20)
        c.stop_stream()
        assert all(error is None for _, error in got), got
        for result, _ in got:
            entry = result.get_response().outputs[0]
            assert entry.parameters["shared_memory_region"].string_param == "out"
            assert result.get_response().raw_output_contents[0] == b""  # the data is in the region, not the message
        for offset in (0, 40):
            written = shm.get_contents_as_numpy(out_handle, np.float32, [1, 10], offset=offset)
            np.testing.assert_array_equal(written, expected)
        assert refused[1] is not None and "a progressive request gets one per exit" in refused[1].message()
