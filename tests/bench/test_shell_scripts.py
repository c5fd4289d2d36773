"""The device scripts run where a syntax error costs a GPU lease's minutes: every shell script of the project
must at least parse (`bash -n`), and the MPS helpers must fall back to time-slicing when the daemon is missing."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.relative_to(ROOT) for p in [*ROOT.glob("bench/**/*.sh"), ROOT / ".ci" / "run"])


@pytest.mark.parametrize("script", SCRIPTS, ids=str)
def test_shell_script_parses(script):
    r = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_mps_falls_back_when_the_daemon_is_missing(tmp_path):
    log = tmp_path / "machine.txt"
    # PATH without the daemon (this machine has none; /usr/local/nvidia/bin is searched too and absent here).
    r = subprocess.run(["bash", "-c", f"source bench/gpu/mps.sh; start_mps {log}; echo rc=$?; "
                        "echo pipe=${CUDA_MPS_PIPE_DIRECTORY:-unset}"],
                       cwd=ROOT, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert "rc=1" in r.stdout and "pipe=unset" in r.stdout, r.stdout + r.stderr
    assert log.read_text() == "mps: off, nvidia-cuda-mps-control not found\n"


def test_mps_stops_the_daemon_when_a_cuda_client_fails_under_it(tmp_path):
    # A stand-in daemon that records its calls; a python3 whose CUDA client fails, as on a machine where MPS
    # does not work.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "nvidia-cuda-mps-control").write_text(f'#!/bin/bash\necho "$* $(cat)" >> {calls}\n')
    (bin_dir / "python3").write_text("#!/bin/bash\necho 'RuntimeError: no CUDA device' >&2\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    log = tmp_path / "machine.txt"
    r = subprocess.run(["bash", "-c", f"source bench/gpu/mps.sh; start_mps {log} < /dev/null; echo rc=$?; "
                        "echo pipe=${CUDA_MPS_PIPE_DIRECTORY:-unset}"],
                       cwd=ROOT, capture_output=True, text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert "rc=1" in r.stdout and "pipe=unset" in r.stdout, r.stdout + r.stderr
    assert log.read_text() == "mps: off, a CUDA client failed under it (RuntimeError: no CUDA device); daemon stopped\n"
    assert [line.split()[0] for line in calls.read_text().splitlines()] == ["-d", "quit"]
