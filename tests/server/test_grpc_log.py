"""server/grpc_log.py: grpc's ERROR traceback for a batch that failed on a call its client had just left becomes
a count per method and at most one warning a minute; other grpc records pass untouched."""

import logging

import pytest

from server import grpc_log

METHOD = "/auxnet.v1.EarlyExitService/ClassifyProgressive"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def grpc_logger(caplog):
    counted, clock = [], Clock()
    f = grpc_log.FailedBatchFilter(counted.append, clock)
    logger = logging.getLogger(grpc_log.GRPC_LOGGER)
    logger.addFilter(f)
    caplog.set_level(logging.DEBUG)
    yield logger, counted, clock, caplog
    logger.removeFilter(f)


def failed_batch(logger, method=METHOD):
    """What grpc's _handle_exceptions logs (the method already formatted into the message), with its traceback."""
    try:
        raise RuntimeError('Failed "execute_batch"')
    except RuntimeError:
        logger.exception("ExecuteBatchError raised in core by servicer method [%s]" % (method,))  # noqa: UP031 - grpc's own form


def test_failed_batches_are_counted_and_warned_about_once_a_minute(grpc_logger):
    logger, counted, clock, caplog = grpc_logger
    failed_batch(logger)
    failed_batch(logger)
    clock.now += 30
    failed_batch(logger, "/inference.GRPCInferenceService/ModelStreamInfer")
    assert counted == [METHOD, METHOD, "/inference.GRPCInferenceService/ModelStreamInfer"]
    assert not [r for r in caplog.records if r.name == grpc_log.GRPC_LOGGER]  # no ERROR, no traceback
    warnings = [r.getMessage() for r in caplog.records if r.name == "auxnet.server"]
    assert warnings == [f"grpc could not finish a call to {METHOD} that its client had just left (counted in "
                        "auxnet_grpc_failed_batches_total; grpc logs it as an ExecuteBatchError)"]
    clock.now += 31  # a minute after the first warning: the next one says how many went unmentioned
    failed_batch(logger)
    assert caplog.records[-1].getMessage().endswith("(2 more since the last such warning)")
    assert caplog.records[-1].levelno == logging.WARNING


def test_other_grpc_records_pass(grpc_logger):
    logger, counted, clock, caplog = grpc_logger
    logger.error("Exception not handled by _handle_exceptions in servicer method [/x/y]")
    logger.warning("Aborting method [/x/y] due to server stop.")
    assert [r.getMessage() for r in caplog.records if r.name == grpc_log.GRPC_LOGGER] == [
        "Exception not handled by _handle_exceptions in servicer method [/x/y]", "Aborting method [/x/y] due to server stop."]
    assert counted == []


def test_the_server_installs_it_and_counts_on_metrics(server):
    """A running server (conftest's) has its filter on grpc's logger, counting into the server's registry."""
    app, _ = server
    assert app._grpc_log in logging.getLogger(grpc_log.GRPC_LOGGER).filters
    record = logging.LogRecord(grpc_log.GRPC_LOGGER, logging.ERROR, __file__, 1,
                               f"ExecuteBatchError raised in core by servicer method [{METHOD}]", None, None)
    assert app._grpc_log.filter(record) is False
    assert app.metrics.registry.get_sample_value("auxnet_grpc_failed_batches_total", {"method": METHOD}) == 1.0
