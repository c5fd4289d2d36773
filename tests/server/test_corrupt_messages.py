"""Bytes that are not the method's request message: INVALID_ARGUMENT naming the type, on every RPC of both
services, counted, one warning a minute at most (grpc's own deserializer answered UNKNOWN with a traceback
logged per message), and the server goes on serving."""

import logging

import grpc
import pytest

from server import handlers
from tests.server.conftest import running_server
from tests.server.v2_helpers import counted

CORRUPT = b"\xff\xff\xff\x01not a protobuf message"
UNARY = [("/auxnet.v1.EarlyExitService/Classify", "ClassifyRequest", "auxnet.v1"),
         ("/auxnet.v1.EarlyExitService/ClassifyBatch", "ClassifyBatchRequest", "auxnet.v1"),
         ("/auxnet.v1.EarlyExitService/GetModelInfo", "GetModelInfoRequest", "auxnet.v1"),
         ("/inference.GRPCInferenceService/ModelInfer", "ModelInferRequest", "v2-grpc"),
         ("/inference.GRPCInferenceService/ModelMetadata", "ModelMetadataRequest", "v2-grpc"),
         ("/inference.GRPCInferenceService/ModelConfig", "ModelConfigRequest", "v2-grpc"),
         ("/auxnet.oip.GRPCInferenceService/ModelInfer", "ModelInferRequest", "v2-grpc")]


@pytest.fixture(scope="module")
def srv(tiny_repo):
    with running_server(tiny_repo) as s:
        yield s


@pytest.mark.parametrize("path, message, surface", UNARY, ids=[u[0].rsplit("/", 1)[1] + "@" + u[2] for u in UNARY])
def test_a_corrupt_request_is_invalid_argument_naming_the_type(srv, path, message, surface):
    app, target = srv
    before = counted(app, "tiny", "INVALID_ARGUMENT", surface)
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            call(CORRUPT, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == f"the request is not a {message} message (its protobuf wire format does not parse)"
    assert counted(app, "tiny", "INVALID_ARGUMENT", surface) == before + 1


def test_progressive_refuses_a_corrupt_request_too_and_the_server_goes_on(srv):
    from server.client import Client
    from tests.server.helpers import images, png

    _, target = srv
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_stream("/auxnet.v1.EarlyExitService/ClassifyProgressive",
                                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            list(call(CORRUPT, timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ClassifyRequest" in e.value.details()
    with Client(target) as c:
        assert c.classify(png(images(1)[0])).model == "tiny"


def test_warnings_are_at_most_one_a_minute_and_say_how_many_were_not_logged(caplog):
    clock = [1000.0]
    seen = []
    corrupt = handlers.CorruptMessages(seen.append)
    corrupt.limit.clock = lambda: clock[0]
    with caplog.at_level(logging.WARNING, logger="auxnet.server"):
        for _ in range(5):
            corrupt.seen("/svc/M", "ipv4:1.2.3.4:5")
            clock[0] += 10  # five within 50 s
        clock[0] += 20  # 70 s after the first
        corrupt.seen("/svc/M", "ipv4:1.2.3.4:5")
    assert len(seen) == 6  # every one counted
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert warnings[0].endswith("refused INVALID_ARGUMENT") and "(4 more since the last such warning)" in warnings[1]


def test_the_warning_names_the_path_the_client_called(tiny_repo, caplog):
    """The protocol's handlers serve two paths (the specification's and our package's): the log says which."""
    with caplog.at_level(logging.WARNING, logger="auxnet.server"), running_server(tiny_repo) as (_, target):
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError):
                call(CORRUPT, timeout=10)
    warnings = [r.getMessage() for r in caplog.records if "not the method's request type" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("/inference.GRPCInferenceService/ModelInfer from ")
