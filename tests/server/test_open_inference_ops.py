"""The Open Inference Protocol surfaces under the same operations as auxnet.v1: token auth, TLS, size and
pixel limits, shedding, deadlines, draining and metrics, each on v2 gRPC and v2 HTTP (issue 11)."""

import asyncio
import gzip
import http.client as http_client
import json
import ssl
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from server.engine_config import EngineConfig
from tests.server.certs import make_credentials
from tests.server.helpers import images, png, requests_ok, wait_for
from tests.server.v2_helpers import counted, error_of, http, v2_server

MODEL = "tiny"


def image_input(module, n=1, seed=0):
    inp = module.InferInput("image", [n], "BYTES")
    inp.set_data_from_numpy(np.array([png(a) for a in images(n, seed=seed)], dtype=object))
    return inp


def infer_body(n=1):
    import base64

    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [n], "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(png(a)).decode() for a in images(n)]}]}


def test_bearer_token_on_v2_grpc_and_http_with_probes_open(tiny_repo):
    with v2_server(tiny_repo, auth_token="s3cret") as (_, target, url):
        for module, where in ((tgrpc, target), (thttp, url)):
            c = module.InferenceServerClient(where)
            assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)  # probes carry no token
            for headers in (None, {"authorization": "Bearer wrong"}):
                with pytest.raises(InferenceServerException) as e:
                    c.infer(MODEL, [image_input(module)], headers=headers)
                assert "bearer token" in e.value.message()
                assert e.value.status() == ("StatusCode.UNAUTHENTICATED" if module is tgrpc else "401")
                with pytest.raises(InferenceServerException):
                    c.get_model_metadata(MODEL, headers=headers)
                with pytest.raises(InferenceServerException):
                    c.get_model_config(MODEL, headers=headers)
                with pytest.raises(InferenceServerException) as e:
                    c.get_inference_statistics(MODEL, headers=headers)
                assert "bearer token" in e.value.message()
                with pytest.raises(InferenceServerException) as e:  # Triton's trace API writes files: protected
                    c.get_trace_settings(headers=headers)
                assert "bearer token" in e.value.message()
                with pytest.raises(InferenceServerException) as e:
                    c.update_trace_settings(settings={"trace_rate": "1"}, headers=headers)
                assert "bearer token" in e.value.message()
            r = c.infer(MODEL, [image_input(module)], headers={"authorization": "Bearer s3cret"})
            assert r.as_numpy("label").shape == (1,)
        status, headers, _ = http(f"http://{url}/v2", "GET")
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert http(f"http://{url}/v2", "GET", headers={"Authorization": "Bearer s3crét"})[0] == 401  # not ASCII: no 500


def test_tls_and_mutual_tls_on_the_http_side(tiny_repo, tmp_path):
    creds = make_credentials(tmp_path)
    tls = {"tls_cert": str(creds["server.pem"]), "tls_key": str(creds["server.key"]), "tls_client_ca": str(creds["ca.pem"])}
    with v2_server(tiny_repo, **tls) as (_, target, url):
        ctx = ssl.create_default_context(cafile=str(creds["ca.pem"]))
        ctx.load_cert_chain(str(creds["client.pem"]), str(creds["client.key"]))
        status, _, body = http(f"https://localhost:{url.split(':')[1]}/v2/models/{MODEL}/infer", "POST", infer_body(), context=ctx)
        assert status == 200 and json.loads(body)["outputs"][0]["name"] == "label"
        anonymous = ssl.create_default_context(cafile=str(creds["ca.pem"]))  # no client certificate
        # TLS 1.3 rejects the missing client certificate after the client's handshake: the server hangs up.
        with pytest.raises((OSError, http_client.HTTPException)):
            http(f"https://localhost:{url.split(':')[1]}/v2/health/live", context=anonymous)
        with pytest.raises((OSError, http_client.HTTPException)):  # plaintext to a TLS port
            http(f"http://{url}/v2/health/live")
        # gRPC v2 on the TLS port with a client certificate
        c = tgrpc.InferenceServerClient(f"localhost:{target.split(':')[1]}", ssl=True,
                                        root_certificates=str(creds["ca.pem"]), private_key=str(creds["client.key"]),
                                        certificate_chain=str(creds["client.pem"]))
        assert c.infer(MODEL, [image_input(tgrpc)]).as_numpy("label").shape == (1,)


def test_size_and_pixel_limits(tiny_repo):
    from server.decode import ImageLimits

    with v2_server(tiny_repo, max_message_bytes=200_000, limits=ImageLimits(max_pixels=64 * 64)) as (_, target, url):
        infer = f"http://{url}/v2/models/{MODEL}/infer"
        big = np.zeros((1, 260, 260, 3), np.uint8)  # 202,800 bytes of pixels: over the message limit
        body = json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": list(big.shape),
                                       "parameters": {"binary_data_size": big.nbytes}}]}).encode()
        status, message = error_of(http(infer, "POST", body + big.tobytes(), {"Inference-Header-Content-Length": str(len(body))}))
        assert status == 413 and "200000" in message
        bomb = gzip.compress(json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1],
                                                     "data": ["a" * 1_000_000]}]}).encode())
        assert len(bomb) < 200_000  # small on the wire, 1 MB once decompressed: refused all the same
        assert error_of(http(infer, "POST", bomb, {"Content-Encoding": "gzip"}))[0] == 413
        with pytest.raises(InferenceServerException) as e:  # gRPC: the message limit of the port
            tgrpc.InferenceServerClient(target).infer(MODEL, [_pixels(tgrpc, big)])
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        for module, where in ((tgrpc, target), (thttp, url)):  # pixel limit: 65x65 > 64*64
            with pytest.raises(InferenceServerException) as e:
                module.InferenceServerClient(where).infer(MODEL, [_pixels(module, np.zeros((1, 65, 65, 3), np.uint8))])
            assert "image of 65x65 pixels exceeds the limit" in e.value.message()


def _pixels(module, a):
    inp = module.InferInput("pixels", list(a.shape), "UINT8")
    inp.set_data_from_numpy(a)
    return inp


def test_more_images_than_the_inflight_limit_are_refused_before_decoding(tiny_repo):
    from protos.auxnet.v1 import inference_pb2 as pb
    from server.client import Client, classify_request

    with v2_server(tiny_repo, engine=EngineConfig(max_batch=16, max_inflight=4)) as (app, target, url):
        for module, where in ((tgrpc, target), (thttp, url)):
            with pytest.raises(InferenceServerException) as e:
                module.InferenceServerClient(where).infer(MODEL, [image_input(module, n=5)])
            assert "5 images in one request; at most 4" in e.value.message()
            assert module.InferenceServerClient(where).infer(MODEL, [image_input(module, n=4)]).as_numpy("label").shape == (4,)
        with Client(target) as c, pytest.raises(grpc.RpcError) as e:
            c.stub.ClassifyBatch(pb.ClassifyBatchRequest(requests=[classify_request(png(images(1)[0]))] * 5), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 4" in e.value.details()
        for shape, message in (([2**62, 0, 0, 3], "dimensions must be in [0, 2147483647]"),
                               ([2**31 - 1, 0, 0, 3], "holds no image")):
            empty = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": shape, "data": []}]}
            status, got = error_of(http(f"http://{url}/v2/models/{MODEL}/infer", "POST", empty))
            assert status == 400 and message in got
        # 5 images refused three times, then two requests that hold none: counted as one each, never 2**62
        assert counted(app, MODEL, "INVALID_ARGUMENT") == 3 * 5 + 2


def test_a_trickling_body_is_refused_408_and_frees_its_slot(tiny_repo):
    import socket

    with v2_server(tiny_repo) as (app, _, url):
        app.v2_http.body_timeout_s = 0.5
        host, port = url.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode())
            reply = s.recv(4096).decode()  # nothing more is sent: the server gives up on the body
        assert reply.startswith("HTTP/1.1 408") and "request body not received within 0.5 s" in reply
        assert app.v2_http.active == 0
        assert counted(app, MODEL, "DEADLINE_EXCEEDED") == 1
        assert http(f"http://{url}/v2/models/{MODEL}/infer", "POST", infer_body())[0] == 200


def test_shedding_and_deadlines_map_to_429_and_504(tiny_repo):
    with v2_server(tiny_repo, engine=EngineConfig(max_batch=16, max_inflight=0)) as (_, target, url):
        for module, where, code in ((tgrpc, target, "StatusCode.RESOURCE_EXHAUSTED"), (thttp, url, "429")):
            with pytest.raises(InferenceServerException) as e:
                module.InferenceServerClient(where).infer(MODEL, [image_input(module)])
            assert e.value.status() == code and "server is at capacity" in e.value.message()
    with v2_server(tiny_repo) as (app, target, url):
        limit, app.v2_http.max_concurrent = app.v2_http.max_concurrent, 0  # the HTTP port's own limit, before any body
        status, message = error_of(http(f"http://{url}/v2/models/{MODEL}/infer", "POST", infer_body()))
        assert status == 429 and "HTTP requests in progress" in message
        app.v2_http.max_concurrent = limit
        for module, where, code in ((tgrpc, target, "StatusCode.DEADLINE_EXCEEDED"), (thttp, url, "504")):
            with pytest.raises(InferenceServerException) as e:  # Triton's `timeout` parameter: 1 microsecond
                module.InferenceServerClient(where).infer(MODEL, [image_input(module)], timeout=1)
            assert e.value.status() == code, e.value.message()


def test_draining_turns_readiness_and_refuses_new_requests(tiny_repo):
    """While a held request is in flight the server drains: v2 readiness turns false (HTTP 503, gRPC
    ready=false), new inferences are refused 503/UNAVAILABLE, the held one is answered."""
    with v2_server(tiny_repo, engine=EngineConfig(max_batch=16, max_queue_delay_ms=3000)) as (app, target, url):
        held = {}

        def send():
            held["r"] = http(f"http://{url}/v2/models/{MODEL}/infer", "POST", infer_body())

        t = threading.Thread(target=send)
        t.start()
        assert wait_for(lambda: app.engines[MODEL].inflight == 1)
        shutdown = asyncio.run_coroutine_threadsafe(app.shutdown(10.0), app.loop)
        assert wait_for(lambda: http(f"http://{url}/v2/health/ready")[0] == 503)
        assert not tgrpc.InferenceServerClient(target).is_server_ready()
        assert not tgrpc.InferenceServerClient(target).is_model_ready(MODEL)
        assert http(f"http://{url}/v2/models/{MODEL}/ready")[0] == 503
        assert http(f"http://{url}/v2/health/live")[0] == 200
        status, message = error_of(http(f"http://{url}/v2/models/{MODEL}/infer", "POST", infer_body()))
        assert status == 503 and "shutting down" in message
        with pytest.raises(InferenceServerException) as e:
            tgrpc.InferenceServerClient(target).infer(MODEL, [image_input(tgrpc)])
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        t.join(20)
        assert held["r"][0] == 200  # admitted before the drain: answered
        assert shutdown.result(30) is True


def test_metrics_count_v2_requests_by_image_and_code(tiny_repo):
    with v2_server(tiny_repo) as (app, target, url):
        before = requests_ok(app.metrics_port)
        tgrpc.InferenceServerClient(target).infer(MODEL, [image_input(tgrpc, n=3)])
        thttp.InferenceServerClient(url).infer(MODEL, [image_input(thttp, n=2)])
        assert requests_ok(app.metrics_port) == before + 5
        assert counted(app, MODEL, "OK", "v2-grpc") == 3 and counted(app, MODEL, "OK", "v2-http") == 2
        http(f"http://{url}/v2/models/{MODEL}/infer", "POST", {"inputs": [{"name": "nope", "datatype": "BYTES",
                                                                            "shape": [4], "data": ["a"] * 4}]})
        sample = counted(app, MODEL, "INVALID_ARGUMENT")
        assert sample == 4  # four images refused
        http(f"http://{url}/v2/models/other/infer", "POST", infer_body())
        assert counted(app, "_unknown", "NOT_FOUND") == 1


def test_reflection_lists_the_v2_service_and_the_spec_path_answers(tiny_repo):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with v2_server(tiny_repo) as (_, target, _url):
        channel = grpc.insecure_channel(target)
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert "auxnet.oip.GRPCInferenceService" in names and "auxnet.v1.EarlyExitService" in names
        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=5)
        assert live == b"\x08\x01"  # ServerLiveResponse{live: true} on the wire
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel)
        for service in ("inference.GRPCInferenceService", "auxnet.oip.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service
        channel.close()


def test_big_requests_are_parsed_off_the_event_loop(tiny_repo, monkeypatch):
    """18 MB of JSON numbers takes ~0.2 s to parse: on the event loop it would stall every other
    request. Requests over 64 KB are parsed on the decode threads; small ones stay inline."""
    import server.v2.grpc_service as grpc_module
    import server.v2.http as http_module

    seen = []
    for module, name in ((http_module, "parse_request"), (grpc_module, "request_inputs")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real, **k: (seen.append(threading.current_thread().name),
                                                                      real(*a, **k))[1])
    with v2_server(tiny_repo) as (_, target, url):
        a = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
        body = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": list(a.shape), "data": a.ravel().tolist()}]}
        assert http(f"http://{url}/v2/models/{MODEL}/infer", "POST", body)[0] == 200  # ~90 KB of JSON
        assert http(f"http://{url}/v2/models/{MODEL}/infer", "POST", infer_body())[0] == 200  # ~2 KB
        c = tgrpc.InferenceServerClient(target)
        inp = tgrpc.InferInput("pixels", list(a.shape), "UINT8")
        inp.set_data_from_numpy(a)
        c.infer(MODEL, [inp])  # 24 KB raw: inline
        c.infer(MODEL, [_pixels(tgrpc, np.zeros((80, 32, 32, 3), np.uint8))])  # 245 KB
    assert [s.startswith("decode") for s in seen] == [True, False, False, True], seen


def test_on_the_stream_too_big_requests_are_parsed_off_the_event_loop(tiny_repo, monkeypatch):
    """The stream's requests are sized by what was received for each (server/handlers.py RECEIVED_BYTES), as unary
    ones: a 245 KB request is parsed on the decode threads, a small one after it inline."""
    import queue

    import server.v2.stream as stream_module

    seen = []
    real = stream_module.request_inputs
    monkeypatch.setattr(stream_module, "request_inputs",
                        lambda *a, **k: (seen.append(threading.current_thread().name), real(*a, **k))[1])
    with v2_server(tiny_repo) as (_, target, url):
        answers = queue.Queue()
        c = tgrpc.InferenceServerClient(target)
        c.start_stream(callback=lambda result, error: answers.put(error))
        for a in (np.zeros((80, 32, 32, 3), np.uint8), np.zeros((1, 32, 32, 3), np.uint8)):
            c.async_stream_infer(MODEL, [_pixels(tgrpc, a)])
            assert answers.get(timeout=30) is None
        c.stop_stream()
    assert [s.startswith("decode") for s in seen] == [True, False], seen


def test_without_aiohttp_the_http_side_refuses_to_start_by_name_and_grpc_only_serves(tiny_repo, monkeypatch):
    import sys

    from server.app import ServerApp, ServerConfig

    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "server.v2.http", raising=False)
    monkeypatch.delitem(sys.modules, "server.v2.http_codec", raising=False)
    app = ServerApp(ServerConfig(repo=str(tiny_repo), port=0, metrics_port=None, http_port=0, poll_s=0))
    app.load_models()
    with pytest.raises(RuntimeError, match=r"the HTTP side \(--http-port\) needs aiohttp .* --http-port -1"):
        asyncio.run(app.start())
    assert app.server is None  # refused before binding any port
    with v2_server(tiny_repo, http_port=None) as (app, target, _):
        assert app.v2_http is None
        assert tgrpc.InferenceServerClient(target).infer(MODEL, [image_input(tgrpc)]).as_numpy("label").shape == (1,)


def test_a_backend_failure_is_internal_on_both_v2_sides_and_the_server_goes_on(tiny_repo):
    with v2_server(tiny_repo) as (app, target, url):
        backend = app.engines[MODEL].backends[0]

        def broken(x):
            raise MemoryError("out of memory in a segment")

        backend.run = broken
        for module, where, code in ((tgrpc, target, "StatusCode.INTERNAL"), (thttp, url, "500")):
            with pytest.raises(InferenceServerException) as e:
                module.InferenceServerClient(where).infer(MODEL, [image_input(module)])
            assert e.value.status() == code and "internal error: RuntimeError" in e.value.message()
        assert counted(app, MODEL, "INTERNAL", "v2-grpc") == 1 and counted(app, MODEL, "INTERNAL", "v2-http") == 1
        del backend.run  # the class's own run again
        assert thttp.InferenceServerClient(url).infer(MODEL, [image_input(thttp)]).as_numpy("label").shape == (1,)


def test_a_defect_in_any_http_handler_is_a_json_500_logged_and_the_server_serves_on(tiny_repo, monkeypatch, caplog):
    """Not aiohttp's text page "Server got itself in trouble": the middleware answers every unexpected exception."""
    import server.v2.model as v2_model

    monkeypatch.setattr(v2_model, "metadata", lambda engine: 1 / 0)
    with v2_server(tiny_repo) as (app, target, url):
        status, _, body = http(f"http://{url}/v2/models/tiny")
        assert status == 500 and json.loads(body) == {"error": "internal error: ZeroDivisionError"}
        assert "internal error in GET /v2/models/tiny" in caplog.text
        assert http(f"http://{url}/v2/health/ready")[0] == 200
