"""The server processes that benchmarks and the GPU script start (server/demo.py start_server) must import
what the caller's PYTHONPATH provides: on the GPU machine that is where onnxruntime-gpu and the newer grpc
were installed (bench/gpu/serving_gpu.sh); dropping it would run the machine's own CPU onnxruntime."""

import os
from pathlib import Path

from server.demo import start_server

PROBE = '''
import os, sys
open(os.environ["AUXNET_TEST_MARKER"], "a").write(os.environ.get("AUXNET_TEST_ORIGIN", "?") + "\\n")
'''


def test_server_processes_keep_the_callers_pythonpath_and_an_added_one(tiny_repo, tmp_path, monkeypatch):
    inherited, added = tmp_path / "inherited", tmp_path / "added"
    inherited.mkdir()
    added.mkdir()
    (inherited / "sitecustomize.py").write_text(PROBE.replace("?", "inherited"))
    (added / "auxnet_added_probe.py").write_text("")
    marker = tmp_path / "marker"
    monkeypatch.setenv("PYTHONPATH", str(inherited))
    proc, _, _ = start_server(str(tiny_repo), [], quiet=True,
                              env={"PYTHONPATH": str(added), "AUXNET_TEST_MARKER": str(marker)})
    try:
        pythonpath = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        entry = next(e for e in pythonpath if e.startswith(b"PYTHONPATH=")).decode().split("=", 1)[1].split(os.pathsep)
    finally:
        proc.terminate()
        proc.wait(30)
    assert entry[0] == str(added) and str(inherited) in entry  # the caller's packages are still found
    assert marker.read_text().splitlines() == ["inherited"]  # and were imported by the server process
