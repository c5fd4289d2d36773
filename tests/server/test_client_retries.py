"""server.client.Client's retries: up to `retries` UNAVAILABLE or CANCELLED answers are retried (a server shutting
down gives CANCELLED to calls it received but never handled, grpc/grpc#41785), other codes are not, and retries=0
means none (gRPC wants a retry policy to allow at least 2 attempts, so the policy must then be left out)."""

from concurrent import futures

import grpc
import pytest

from protos.auxnet.v1 import inference_pb2 as pb
from server.client import Client


def flaky_server(failures: int, code=grpc.StatusCode.UNAVAILABLE):
    """A Classify that answers `code` `failures` times, then a response; returns (server, target, attempts)."""
    attempts = []

    def classify(request, context):
        attempts.append(request.request_id)
        if len(attempts) <= failures:
            context.abort(code, f"attempt {len(attempts)} refused")
        return pb.ClassifyResponse(class_name="cat", exit_index=len(attempts))

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("auxnet.v1.EarlyExitService", {
        "Classify": grpc.unary_unary_rpc_method_handler(classify, request_deserializer=pb.ClassifyRequest.FromString,
                                                        response_serializer=pb.ClassifyResponse.SerializeToString)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}", attempts


def test_retries_0_does_not_retry():
    server, target, attempts = flaky_server(failures=1)
    try:
        with Client(target, retries=0) as c, pytest.raises(grpc.RpcError) as e:
            c.classify(b"not looked at")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and e.value.details() == "attempt 1 refused"
        assert len(attempts) == 1
    finally:
        server.stop(None)


def test_unavailable_is_retried_up_to_retries_times():
    server, target, attempts = flaky_server(failures=2)
    try:
        with Client(target, retries=2) as c:
            assert c.classify(b"not looked at").exit_index == 3  # the third attempt answered
        assert len(attempts) == 3
    finally:
        server.stop(None)
    server, target, attempts = flaky_server(failures=2)
    try:
        with Client(target, retries=1) as c, pytest.raises(grpc.RpcError) as e:
            c.classify(b"not looked at")
        assert e.value.details() == "attempt 2 refused" and len(attempts) == 2
    finally:
        server.stop(None)


def test_a_server_side_cancel_is_retried_and_other_codes_are_not():
    server, target, attempts = flaky_server(failures=1, code=grpc.StatusCode.CANCELLED)
    try:
        with Client(target, retries=1) as c:
            assert c.classify(b"not looked at").exit_index == 2
    finally:
        server.stop(None)
    server, target, attempts = flaky_server(failures=1, code=grpc.StatusCode.INVALID_ARGUMENT)
    try:
        with Client(target, retries=3) as c, pytest.raises(grpc.RpcError) as e:
            c.classify(b"not looked at")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(attempts) == 1
    finally:
        server.stop(None)
