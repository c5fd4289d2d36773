"""Domain errors and the one place that maps them to gRPC status codes (KServe/MLServer style)."""

from __future__ import annotations

import grpc


class ServingError(Exception):
    code = grpc.StatusCode.INTERNAL
    reason = "internal"
    http_status: int | None = None  # the HTTP status where the gRPC code's (HTTP_STATUS) would mislead a client


class InvalidInput(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class UnknownModel(ServingError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "unknown_model"


class QueueFull(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "queue_full"


class Preempted(QueueFull):
    """Admitted and queued, then evicted before any compute to make room for a higher-priority request."""

    reason = "preempted"


class QueueTimeout(QueueFull):
    """Admitted and queued, then refused: its level's queue policy timeout passed before its first segment ran."""

    reason = "queue_timeout"


class InsufficientStorage(ServingError):
    """A load's files would pass the server's upload quota or leave its file system too little free space
    (server/model_upload.py)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own words: "... or perhaps the entire file system is out of space"
    reason = "storage"
    http_status = 507  # Insufficient Storage: unlike 429, waiting and retrying does not help until something is unloaded


class InsufficientMemory(InsufficientStorage):
    """A load would leave the server too little memory (server/load_memory.py)."""

    reason = "memory"


class NotServing(ServingError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "draining"


class FailedPrecondition(ServingError):
    """A request the server's configuration does not allow (e.g. trace settings changed under --workers)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "failed_precondition"


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "unauthenticated"


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "deadline"


# The same outcomes on the HTTP surface (Open Inference Protocol REST: a JSON body {"error": message}).
HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
               grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.NOT_FOUND: 404,
               grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
               grpc.StatusCode.DEADLINE_EXCEEDED: 504}


def http_status(e: ServingError) -> int:
    """The HTTP status of a domain error: its own where it has one, else its gRPC code's."""
    return e.http_status or HTTP_STATUS.get(e.code, 500)
