"""Start a real server on a free port, in a thread with its own event loop, for the sync client."""

import asyncio
import threading
from contextlib import contextmanager

import pytest

from server.app import ServerApp, ServerConfig
from server.engine_config import EngineConfig


@contextmanager
def running_server(repo, **overrides):
    cfg = ServerConfig(repo=str(repo), port=0, metrics_port=0, threads=2,
                       **{"engine": EngineConfig(max_batch=16), "http_port": 0, **overrides})
    app = ServerApp(cfg)
    app.load_models()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(app.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30), "server did not start"
    app.loop = loop
    try:
        yield app, f"127.0.0.1:{app.port}"
    finally:
        if app.server is not None and not app.draining:  # not shut down by the test itself (with or without models)
            asyncio.run_coroutine_threadsafe(app.shutdown(2.0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="module")
def server(tiny_repo):
    with running_server(tiny_repo) as s:
        yield s
