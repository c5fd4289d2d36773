"""Triton's logging extension: the server's log settings, read and changed while it runs (gRPC LogSettings, HTTP
GET|POST /v2/logging; tritonclient's get_log_settings / update_log_settings).

Triton's settings, names and types:
  log_info, log_warnings, log_errors (bool)  whether the server's INFO, WARNING, ERROR (and CRITICAL) lines are
                                             written; independent of each other, as Triton's
  log_verbose_level (uint32)                 0: no verbose lines; 1 or more: the server's DEBUG lines too (it has
                                             one level of detail: every level >= 1 is the same)
  log_format ("default" | "ISO8601")         default: --log-level's format, local time; ISO8601: the time in UTC,
                                             ISO 8601 with milliseconds and a Z
  log_file ("")                              read only: the log goes to standard error, which the process manager
                                             collects (systemd, Kubernetes); a file named through the API could
                                             be any file the server may write, so naming one is refused
The start values follow --log-level. In python -m server, log_info/log_warnings/log_errors govern every line
written to standard error, gRPC's, aiohttp's and asyncio's too (the filter sits on the handler; since 2026-12-02,
before only the server's own logger); log_verbose_level turns on the server's own DEBUG lines only (other
libraries' debug output is noise to an operator). Where the process's logging belongs to someone else (a server
started inside another program, the tests) only the server's logger is governed. A change applies to every
setting it names or to none (each is checked first). Under --workers / --recycle-rss-mb a change reaches every
worker (server/worker_sync.py).
"""

from __future__ import annotations

import logging
import time

from server.arguments import UINT32_MAX
from server.errors import FailedPrecondition, InvalidInput

LOGGER = "auxnet.server"
DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # python -m server's logging.basicConfig
FORMATS = ("default", "ISO8601")
KINDS = {"log_file": str, "log_info": bool, "log_warnings": bool, "log_errors": bool, "log_verbose_level": int,
         "log_format": str}


class Iso8601Formatter(logging.Formatter):
    """2026-12-02T00:15:03.127Z INFO auxnet.server: message"""

    converter = time.gmtime

    def formatTime(self, record, datefmt=None):  # noqa: N802 - logging's name
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"


class LogControl(logging.Filter):
    """The settings, and the filter on the server's logger that applies them. `handlers`: those whose format
    log_format sets (python -m server's own; none in a process whose logging belongs to someone else)."""

    def __init__(self, start_level: int | str = logging.INFO, runtime_updates: bool = True,
                 handlers: tuple[logging.Handler, ...] = ()):
        super().__init__()
        level = logging.getLevelName(start_level.upper()) if isinstance(start_level, str) else start_level
        level = level if isinstance(level, int) else logging.INFO
        self.values: dict = {"log_file": "", "log_info": level <= logging.INFO, "log_warnings": level <= logging.WARNING,
                             "log_errors": level <= logging.ERROR, "log_verbose_level": int(level <= logging.DEBUG),
                             "log_format": "default"}
        self.runtime_updates = runtime_updates
        self.handlers: tuple[logging.Handler, ...] = ()
        self._formats: dict = {}
        self.own(handlers)
        self.logger = logging.getLogger(LOGGER)
        self._level = self.logger.level
        self.installed = False

    def own(self, handlers: tuple[logging.Handler, ...]) -> None:
        """The handlers whose format log_format sets (their formats are put back at close)."""
        self.handlers = tuple(handlers)
        self._formats = {h: h.formatter for h in self.handlers}

    def install(self) -> None:
        """Apply the settings from now on (the server's start)."""
        self.logger.addFilter(self)
        for h in self.handlers:  # python -m server's own: every library's lines pass them
            h.addFilter(self)
        self.installed = True
        self._apply()

    def close(self) -> None:
        """Leave the logger and handlers as they were (an in-process server's logging is its host's)."""
        if self.installed:
            self.logger.removeFilter(self)
            for h in self.handlers:
                h.removeFilter(self)
            self.logger.setLevel(self._level)
            for h, f in self._formats.items():
                h.setFormatter(f)
            self.installed = False

    def filter(self, record: logging.LogRecord) -> bool:
        v = self.values
        if record.levelno >= logging.ERROR:
            return v["log_errors"]
        if record.levelno >= logging.WARNING:
            return v["log_warnings"]
        if record.levelno >= logging.INFO:
            return v["log_info"]
        return v["log_verbose_level"] > 0

    def settings(self) -> dict:
        return dict(self.values)

    def update(self, changes: dict) -> dict:
        """Check every named setting, then apply them all; returns every setting's value after."""
        if not self.runtime_updates:
            raise FailedPrecondition("log settings are fixed in a server started with --reuse-port alone: its sibling "
                                     "processes would not follow; run them under one supervisor (--workers)")
        new = dict(self.values)
        for key, value in changes.items():
            new[key] = _checked(key, value)
        if new["log_file"] != self.values["log_file"]:
            raise InvalidInput("log_file cannot be set here: the server logs to standard error, which the process "
                               "manager collects; a file named through the API could be any file the server may write")
        self.values = new
        self._apply()
        return self.settings()

    def adopt(self, values: dict) -> None:
        """Take settings another worker process checked and applied (server/worker_sync.py)."""
        if values != self.values:
            self.values = {**self.values, **values}
            if self.installed:  # before install() (a worker converging at start) install applies them
                self._apply()

    def _apply(self) -> None:
        # The logger's own level lets records through that --log-level (the root's) would stop; the filter then
        # keeps exactly the levels switched on.
        self.logger.setLevel(logging.DEBUG if self.values["log_verbose_level"] > 0 else logging.INFO)
        formatter = (Iso8601Formatter(DEFAULT_FORMAT) if self.values["log_format"] == "ISO8601"
                     else logging.Formatter(DEFAULT_FORMAT))
        for h in self.handlers:
            h.setFormatter(formatter)


def _checked(key: str, value):
    if key not in KINDS:
        raise InvalidInput(f"unknown log setting {key[:64]!r}; valid: {', '.join(KINDS)}")
    kind = KINDS[key]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT32_MAX:
            raise InvalidInput(f"log setting {key!r} must be a whole number in [0, {UINT32_MAX}]; got {value!r:.40}")
        return value
    if not isinstance(value, kind):
        raise InvalidInput(f"log setting {key!r} must be a {'boolean' if kind is bool else 'string'}; got {value!r:.40}")
    if key == "log_format" and value not in FORMATS:
        raise InvalidInput(f"log_format {value[:40]!r} is not offered; valid: {', '.join(FORMATS)}")
    return value
