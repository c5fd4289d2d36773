"""Training faults (issue 6, item 8): SIGKILL mid-epoch, atomic checkpoints, corrupt checkpoints."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from training.checkpoint import load_checkpoint, save_atomic

ARGS = ["-m", "training.run", "--depth", "14", "--exits", "5,9,14", "--dataset", "synthetic", "--precision", "fp32",
        "--device", "cpu", "--batch-size", "32", "--max-batches", "40", "--val-size", "64", "--epochs", "3",
        "--seed", "5"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    straight = subprocess.run([sys.executable, *ARGS, "--out", str(tmp_path / "straight")], capture_output=True,
                              text=True, timeout=300, env=env)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *ARGS, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    while not (out / "metrics.jsonl").exists() and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # well inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert load_checkpoint(out)["epoch"] == 1
    resumed = subprocess.run([sys.executable, *ARGS, "--out", str(out), "--resume"], capture_output=True, text=True,
                             timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(out)
    assert b["epoch"] == 3
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k], rtol=0, atol=0)
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"model": {}, "config": {}, "epoch": 1, "data": {}}, path)

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"model": {}, "config": {}, "epoch": 2, "data": {}}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_missing_keys_is_named(tmp_path):
    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"x.pt lacks keys \['config', 'epoch', 'data'\]"):
        load_checkpoint(tmp_path / "x.pt")
