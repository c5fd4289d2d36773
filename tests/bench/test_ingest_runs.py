"""bench.gpu.ingest_runs: a lease's returned files put in place, later calls over earlier ones, and a run's
state (epochs in metrics and checkpoint, planned) read off them."""

import io
import json
import tarfile

import pytest
import torch

from bench.gpu.ingest_runs import ingest, report


def call_dir(path, files: dict[str, str], ckpts: dict[str, int]):
    path.mkdir(parents=True)
    with tarfile.open(path / "runs.tar.gz", "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"paper_runs/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    for run, epoch in ckpts.items():
        torch.save({"epoch": epoch, "model": {}}, path / f"ckpt_{run}.pt")
    return path


def rows(n, ips=1000.0):
    return "".join(json.dumps({"epoch": e, "images_per_s": ips + e, "test_top1_err": [40.0 - e, 20.0 - e]}) + "\n"
                   for e in range(1, n + 1))


def test_later_call_replaces_earlier_and_states_are_reported(tmp_path):
    cmd = "python -m training.run --preset auxnet56_5 --method multiway --epochs 4 --seed 0\n"
    c1 = call_dir(tmp_path / "call1", {"a.cmd": cmd, "a.log": "call 1\n", "a/metrics.jsonl": rows(2),
                                       "b.cmd": cmd, "b/metrics.jsonl": rows(1), "plan.txt": "2 4\n",
                                       "probe1/metrics.jsonl": rows(1), "profile_a.txt": "profiled\n"}, {"a": 2, "b": 1})
    # Call 2 (RESUME): a finished; b was stopped by the time limit with its checkpoint one epoch behind its metrics.
    c2 = call_dir(tmp_path / "call2", {"a.cmd": cmd, "a.log": "call 1\ncall 2\n", "a/metrics.jsonl": rows(4),
                                       "b.cmd": cmd, "b/metrics.jsonl": rows(3)}, {"a": 4, "b": 2})
    summary = ingest("lease", [c1, c2], tmp_path / "results", tmp_path / "runs")
    out = tmp_path / "results" / "lease"
    assert sorted(p.name for p in out.iterdir()) == ["a.cmd", "a.log", "a.metrics.jsonl", "b.cmd", "b.metrics.jsonl",
                                                      "plan.txt", "profile_a.txt"]  # no probe dirs, no .pt
    assert (out / "a.log").read_text() == "call 1\ncall 2\n"
    assert torch.load(tmp_path / "runs" / "lease" / "b" / "last.pt", weights_only=True)["epoch"] == 2
    assert [(s["run"], s["metrics_epochs"], s["checkpoint_epoch"], s["planned_epochs"]) for s in summary] == [
        ("a", 4, 4, 4), ("b", 3, 2, 4)]
    assert summary[0]["test_top1_err"] == [36.0, 16.0] and summary[0]["median_images_per_s"] == 1002.5
    text = report(summary, "lease", tmp_path / "runs")
    assert "| a | 4 / 4 / 4 | 16.00 / 36.00 (deepest first) | 1002 |" in text
    assert "checkpoint behind its metrics (the call was stopped mid-copy): b;" in text
    assert "unfinished: b " in text
    assert f"--checkpoint {tmp_path / 'runs' / 'lease' / 'a'} --checkpoint {tmp_path / 'runs' / 'lease' / 'b'}" in text


def test_missing_archive_and_empty_archive_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="runs.tar.gz does not exist"):
        ingest("x", [tmp_path / "empty"], tmp_path / "r", tmp_path / "k")
    c = call_dir(tmp_path / "c", {"speed.txt": "probe\n"}, {})
    with pytest.raises(ValueError, match=r"no run \(RUN.cmd\) in the archives"):
        ingest("x", [c], tmp_path / "r", tmp_path / "k")
