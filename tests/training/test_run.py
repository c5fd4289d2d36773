"""python -m training.run end to end on synthetic data: metrics, table, checkpoint, exact resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.run import get_args_parser, main

ARGS = ["--depth", "14", "--exits", "5,9,14", "--dataset", "synthetic", "--precision", "fp32", "--device", "cpu",
        "--batch-size", "64", "--max-batches", "4", "--val-size", "128", "--seed", "3"]


def run(tmp_path, name, *extra):
    return main(get_args_parser().parse_args(ARGS + ["--out", str(tmp_path / name), *extra]))


def test_resume_from_epoch_1_matches(tmp_path, monkeypatch):
    import training.run as tr

    run(tmp_path, "straight", "--epochs", "2")
    # Stop after the first epoch by making the loop see only epoch 0, as a killed process would leave it.
    original = tr.save_atomic
    calls = {"n": 0}

    def save_then_die(obj, path):
        original(obj, path)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "killed", "--epochs", "2")
    monkeypatch.setattr(tr, "save_atomic", original)
    assert load_checkpoint(tmp_path / "killed")["epoch"] == 1
    run(tmp_path, "killed", "--epochs", "2", "--resume")
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "killed")
    assert b["epoch"] == 2
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k], rtol=0, atol=0)
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_metrics_and_checkpoint_contents(tmp_path):
    metrics = run(tmp_path, "m", "--epochs", "1")
    assert len(metrics["val_top1_err"]) == 3 and len(metrics["loss"]) == 3
    row = json.loads((tmp_path / "m" / "metrics.jsonl").read_text())
    assert set(row) >= {"epoch", "lr", "loss", "images_per_s", "val_top1_err", "val_top5_err", "test_top1_err", "eval_s"}
    assert row["eval_s"] > 0
    ck = load_checkpoint(tmp_path / "m")
    assert ck["config"]["exits"] == (5, 9, 14) and len(ck["data"]["val_indices"]) == 128
    assert ck["args"]["method"] == "multiway" and "optimizers" in ck["method"]


def test_no_eval_trains_and_checkpoints_without_evaluating(tmp_path, monkeypatch):
    """A speed probe (bench/gpu/paper_runs.sh) needs the training rate only; with --compile on a GPU the first
    evaluation would compile its graphs too."""
    import training.run as tr

    def refuse(*a, **k):
        raise AssertionError("evaluated despite --no-eval")

    monkeypatch.setattr(tr, "evaluate", refuse)
    metrics = run(tmp_path, "probe", "--epochs", "2", "--no-eval")
    rows = [json.loads(line) for line in (tmp_path / "probe" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["images_per_s"] > 0 for r in rows)
    assert not any(k.startswith(("val_", "test_")) or k == "eval_s" for k in metrics)
    assert load_checkpoint(tmp_path / "probe")["epoch"] == 2


def test_resume_with_other_arguments_is_refused(tmp_path):
    run(tmp_path, "r", "--epochs", "1")
    with pytest.raises(ValueError, match="--resume: method is 'joint' but the checkpoint was trained with 'multiway'"):
        run(tmp_path, "r", "--epochs", "1", "--resume", "--method", "joint")
    # A recipe option too: a resumed run with another distillation temperature would learn something else.
    with pytest.raises(ValueError, match="--resume: distill_temperature is 2.0 but the checkpoint was trained with 3.0"):
        run(tmp_path, "r", "--epochs", "1", "--resume", "--distill-temperature", "2")


def test_resume_where_no_run_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"--resume: .*empty holds no run to continue \(no last\.pt\); leave out --resume"):
        run(tmp_path, "empty", "--epochs", "1", "--resume")
    assert not (tmp_path / "empty").exists()  # nothing written for a refused run


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="last.pt is corrupt or not a torch checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    # A text file (torch's own error was "invalid literal for int() with base 10") and an empty one.
    for name, data in (("text.pt", b"garbage\n"), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"checkpoint .*{name} is corrupt or not a torch checkpoint"):
            load_checkpoint(tmp_path / name)


class _RunsCode:
    """Unpickling this calls a function: what a hostile checkpoint would do."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["AUXNET_TEST_MARKER"]),))


def test_checkpoint_cannot_run_code_when_loaded(tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("AUXNET_TEST_MARKER", str(marker))
    torch.save({"model": {}, "config": {}, "epoch": 1, "data": {}, "payload": _RunsCode()}, tmp_path / "hostile.pt")
    with pytest.raises(ValueError, match="hostile.pt is corrupt or not a torch checkpoint"):
        load_checkpoint(tmp_path / "hostile.pt")
    assert not marker.exists()


@pytest.mark.slow
def test_cli_prints_per_exit_table(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "training.run", "--preset", "auxnet20_2", "--epochs", "1", "--max-batches", "3",
         "--out", str(tmp_path / "cli")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "layers" in out.stdout and " 17 " in out.stdout and " 20 " in out.stdout
    bad = subprocess.run([sys.executable, "-m", "training.run", "--preset", "nonet"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'nonet'" in bad.stderr


@pytest.mark.slow
def test_imagenet_preset_trains_and_exports_at_one_image_size(tmp_path):
    """Issue 10 review: the ImageNet family trained on 32 px crops while its config (and so export and
    serving) said 224. Now the crop is --image-size (default 224) and the config records what was trained."""
    import numpy as np

    from export.build import export_model
    from server.repository import load_manifest
    from tests.training.test_data import write_image_folder

    write_image_folder(tmp_path / "data", 80, n_per_class=4, suffix=".jpg")
    metrics = main(get_args_parser().parse_args([
        "--preset", "auxnet34_2", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--image-size", "64",
        "--val-size", "2", "--batch-size", "3", "--epochs", "1", "--precision", "fp32", "--device", "cpu",
        "--workers", "0", "--out", str(tmp_path / "run")]))
    assert len(metrics["val_top1_err"]) == 2
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["config"]["image_size"] == 64 and ckpt["config"]["family"] == "imagenet"
    assert ckpt["data"]["image_size"] == 64 and ckpt["data"]["augment"] == "imagenet"
    info = load_manifest(export_model(str(tmp_path / "run"), str(tmp_path / "repo"), "in34", measure=False,
                                      log=lambda *a: None))
    assert info.input_shape == (3, 64, 64) and [e.layer for e in info.exits] == [29, 34]
    assert np.allclose(info.mean, (0.485, 0.456, 0.406))


@pytest.mark.slow
def test_compile_mode_auto_uses_cuda_graphs_only_on_a_gpu():
    from training.run import compile_mode

    assert compile_mode("auto", "cuda") == "reduce-overhead" and compile_mode("auto", "cpu") is None
    assert compile_mode("default", "cuda") is None  # torch.compile's own default mode
    assert compile_mode("max-autotune-no-cudagraphs", "cuda") == "max-autotune-no-cudagraphs"
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--compile-mode", "fastest"])


def test_compile_trains_with_static_batches_and_plain_checkpoint_keys(tmp_path):
    metrics = run(tmp_path, "compiled", "--compile", "--epochs", "1")
    assert len(metrics["val_top1_err"]) == 3
    ckpt = load_checkpoint(tmp_path / "compiled")
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])  # export reads it like any other


def test_cudnn_autotuning_only_on_cuda(monkeypatch):
    from training.precision import tune_cuda_kernels

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    tune_cuda_kernels(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False  # CPU runs keep torch's defaults
    tune_cuda_kernels(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True


def test_a_fresh_run_into_a_finished_runs_folder_is_refused_and_overwrite_starts_over(tmp_path):
    run(tmp_path, "r", "--epochs", "2")
    before = (tmp_path / "r" / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"already holds a run \(last.pt\): pass --resume to continue it, --overwrite"):
        run(tmp_path, "r", "--epochs", "1")
    assert (tmp_path / "r" / "last.pt").read_bytes() == before  # untouched
    run(tmp_path, "r", "--epochs", "1", "--overwrite")
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]  # not 1, 2, 1
    assert load_checkpoint(tmp_path / "r")["epoch"] == 1


def test_a_fresh_start_drops_the_rows_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": [9.9]}) + "\n")  # no last.pt
    run(tmp_path, "r", "--epochs", "1")
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["loss"] != [9.9]


@pytest.mark.parametrize("argv, says", [
    (["--batch-size", "0"], "argument --batch-size: 0 must be >= 1"),  # was a ZeroDivisionError
    (["--epochs", "0"], "argument --epochs: 0 must be >= 1"),  # was a run that wrote no checkpoint
    (["--epochs", "two"], "argument --epochs: 'two' is not an integer"),
    (["--depth", "14", "--exits", "5,x,14"], "argument --exits: '5,x,14' is not comma-separated layer numbers"),
    (["--val-size", "-1"], "argument --val-size: -1 must be >= 0"),
])
def test_bad_numbers_are_refused_by_option(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        get_args_parser().parse_args(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err
