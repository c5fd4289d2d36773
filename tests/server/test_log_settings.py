"""Triton's logging extension (server/log_settings.py): start values from --log-level, each level switched on and
off on its own, verbose lines, the ISO 8601 format, refusals that change nothing; through Triton's clients over
gRPC and HTTP, and end to end on python -m server's own standard error."""

import io
import logging
import re

import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from server.errors import FailedPrecondition, InvalidInput
from server.log_settings import LOGGER, LogControl
from tests.server.helpers import start_server_process
from tests.server.v2_helpers import http, v2_server

ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO auxnet\.server: ")


def lines_written(control: LogControl, stream: io.StringIO) -> list[str]:
    log = logging.getLogger(LOGGER)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        log.log(level, "line at %s", logging.getLevelName(level))
    return [line.rsplit(" ", 1)[-1] for line in stream.getvalue().splitlines()]


@pytest.fixture
def captured():
    """A handler on the server's logger alone (not the root's, which pytest owns), and the control."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger(LOGGER)
    log.addHandler(handler)
    propagate, log.propagate = log.propagate, False
    control = LogControl("WARNING", handlers=(handler,))
    control.install()
    yield control, stream, handler
    control.close()
    log.removeHandler(handler)
    log.propagate = propagate


def test_start_values_follow_the_log_level_and_each_level_switches_on_its_own(captured):
    control, stream, _ = captured
    assert control.settings() == {"log_file": "", "log_info": False, "log_warnings": True, "log_errors": True,
                                  "log_verbose_level": 0, "log_format": "default"}
    assert lines_written(control, stream) == ["WARNING", "ERROR"]
    stream.truncate(0), stream.seek(0)
    control.update({"log_info": True, "log_warnings": False})
    assert lines_written(control, stream) == ["INFO", "ERROR"]
    stream.truncate(0), stream.seek(0)
    control.update({"log_verbose_level": 2, "log_errors": False})
    assert lines_written(control, stream) == ["DEBUG", "INFO"]
    assert LogControl("debug").settings()["log_verbose_level"] == 1 and LogControl("ERROR").settings()["log_warnings"] is False


def test_the_iso8601_format_and_close_puts_everything_back(captured):
    control, stream, handler = captured
    control.update({"log_format": "ISO8601", "log_info": True})
    logging.getLogger(LOGGER).info("hello")
    assert ISO_LINE.match(stream.getvalue()), stream.getvalue()
    control.close()
    assert handler.formatter is None and logging.getLogger(LOGGER).filters == []  # the fixture's handler had none
    assert logging.getLogger(LOGGER).level == logging.NOTSET


@pytest.mark.parametrize("change, says", [
    ({"log_info": "yes"}, "log setting 'log_info' must be a boolean; got 'yes'"),
    ({"log_verbose_level": True}, "must be a whole number in [0, 4294967295]; got True"),
    ({"log_verbose_level": -1}, "must be a whole number in [0, 4294967295]; got -1"),
    ({"log_verbose_level": 2**32}, "got 4294967296"),
    ({"log_format": "json"}, "log_format 'json' is not offered; valid: default, ISO8601"),
    ({"log_file": "/etc/passwd"}, "log_file cannot be set here"),
    ({"log_colour": True}, "unknown log setting 'log_colour'; valid: log_file, log_info"),
    ({"log_info": True, "log_errors": 3}, "log setting 'log_errors' must be a boolean"),
])
def test_a_bad_setting_is_refused_naming_it_and_nothing_changes(change, says):
    control = LogControl("INFO")
    before = control.settings()
    with pytest.raises(InvalidInput) as e:
        control.update(change)
    assert says in str(e.value) and control.settings() == before


def test_with_reuse_port_alone_the_settings_are_fixed():
    # Under a --workers supervisor they are shared (tests/server/test_worker_sync.py); a process started with
    # --reuse-port by hand has no supervisor to tell its siblings.
    with pytest.raises(FailedPrecondition, match="fixed in a server started with --reuse-port alone"):
        LogControl("INFO", runtime_updates=False).update({"log_info": False})


@pytest.mark.parametrize("module", [tgrpc, thttp], ids=["grpc", "http"])
def test_tritons_clients_read_and_change_the_settings(tiny_repo, module):
    with v2_server(tiny_repo) as (app, target, url):
        c = module.InferenceServerClient(target if module is tgrpc else url)
        kw = {"as_json": True} if module is tgrpc else {}

        def flat(got):
            if module is thttp:
                return got
            return {k: next(iter(v.values())) for k, v in got["settings"].items()}

        start = flat(c.get_log_settings(**kw))
        assert start == {"log_file": "", "log_info": True, "log_warnings": True, "log_errors": True,
                         "log_verbose_level": 0, "log_format": "default"}
        now = flat(c.update_log_settings({"log_info": False, "log_verbose_level": 1}, **kw))
        assert now["log_info"] is False and now["log_verbose_level"] == 1 and now["log_errors"] is True
        assert app.log_control.settings() == now
        with pytest.raises(InferenceServerException) as e:
            c.update_log_settings({"log_format": "json"})
        assert "log_format 'json' is not offered" in e.value.message()
        assert e.value.status() in ("StatusCode.INVALID_ARGUMENT", "400")
        assert "logging" in c.get_server_metadata(**kw)["extensions"]
    assert logging.getLogger(LOGGER).filters == []  # the server's shutdown left the logger as it was


def test_the_logging_api_needs_the_token(tiny_repo, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with v2_server(tiny_repo, auth_token_file=str(token)) as (app, target, url):
        assert http(f"http://{url}/v2/logging", "POST", {"log_info": False})[0] == 401
        assert app.log_control.settings()["log_info"] is True
        ok = http(f"http://{url}/v2/logging", "POST", {"log_info": False}, {"Authorization": "Bearer s3cret"})
        assert ok[0] == 200 and app.log_control.settings()["log_info"] is False


def test_the_command_logs_info_in_iso8601_once_switched_on(tiny_repo):
    proc, target, _ = start_server_process(tiny_repo, "--model-control-mode", "explicit")  # --log-level WARNING
    try:
        g = tgrpc.InferenceServerClient(target)
        g.update_log_settings({"log_info": True, "log_format": "ISO8601"})
        g.load_model("tiny")  # logs "model tiny loaded: ..." at INFO
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    loaded = [line for line in err.splitlines() if "model tiny loaded" in line]
    assert len(loaded) == 1 and ISO_LINE.match(loaded[0]), err[-2000:]


def test_in_the_servers_own_process_the_switches_govern_other_libraries_lines_too():
    """python -m server hands its stderr handler to the control: gRPC's, aiohttp's, asyncio's lines obey log_errors
    and the others as the server's do (before 2026-12-02 they kept --log-level whatever the settings said)."""
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    control = LogControl("INFO", handlers=(handler,))
    other = logging.getLogger("aiohttp.server")
    other.addHandler(handler)
    try:
        control.install()
        other.error("first")
        control.update({"log_errors": False})
        other.error("second")
        control.update({"log_errors": True, "log_warnings": False})
        other.warning("third")
        other.error("fourth")
    finally:
        control.close()
        other.removeHandler(handler)
    assert [line.split()[-1] for line in stream.getvalue().splitlines()] == ["first", "fourth"]
    assert handler.filters == []  # close() leaves the handler as it was
