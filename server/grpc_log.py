"""grpc.aio logs `ExecuteBatchError raised in core by servicer method [<method>]` at ERROR, with a traceback, when
a batch fails on a call whose client has just cancelled but which grpc's Python side has not yet marked so (it
ignores the same failure silently a moment later): a client leaving a ClassifyProgressive call after the answer
it wanted does this about once in 100,000 calls (RESULTS §31). Nothing is wrong with the server, but an ERROR
traceback pages people. This filter counts such records per method (auxnet_grpc_failed_batches_total) and turns
them into at most one warning a minute; every other grpc record passes untouched."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from server.log_limit import LogLimit

log = logging.getLogger("auxnet.server")
GRPC_LOGGER = "grpc._cython.cygrpc"
FAILED_BATCH = re.compile(r"ExecuteBatchError raised in core by servicer method \[(.*)\]")


class FailedBatchFilter(logging.Filter):
    def __init__(self, count: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.count = count
        self.limit = LogLimit(clock=clock)

    def filter(self, record: logging.LogRecord) -> bool:
        match = FAILED_BATCH.fullmatch(record.getMessage())
        if match is None:
            return True
        method = match.group(1)
        self.count(method)
        if (also := self.limit.due()) is not None:
            log.warning("grpc could not finish a call to %s that its client had just left (counted in "
                        "auxnet_grpc_failed_batches_total; grpc logs it as an ExecuteBatchError)%s", method, also)
        return False


def install(count: Callable[[str], None]) -> FailedBatchFilter:
    """Attach a filter to grpc's aio logger; returns it (remove with `uninstall`)."""
    f = FailedBatchFilter(count)
    logging.getLogger(GRPC_LOGGER).addFilter(f)
    return f


def uninstall(f: FailedBatchFilter) -> None:
    logging.getLogger(GRPC_LOGGER).removeFilter(f)
