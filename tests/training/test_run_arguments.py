"""python -m training.run refuses what would train nonsense or clash, naming the option, before any work (exit 2).

Found by running every option with -1, 0, nan, inf, 1e400, 10**21, '', a path to a file (2026-12-02): each case
below trained to NaN weights and wrote a checkpoint of them, was ignored without a word, or ended in a traceback."""

import os
import subprocess
import sys

import pytest

from training.checkpoint import hold_run_directory
from training.run import get_args_parser, main


@pytest.mark.parametrize("option, value, says", [
    ("--lr", "nan", "argument --lr: nan must be a number in (0, 10]"),  # trained to NaN before
    ("--lr", "0", "argument --lr: 0 must be a number in (0, 10]"),
    ("--momentum", "1", "argument --momentum: 1 must be a number in [0, 1)"),  # inf: NaN weights
    ("--weight-decay", "inf", "argument --weight-decay: inf must be a number in [0, 1)"),
    ("--nu", "1e400", "argument --nu: 1e400 must be a number in [0, 100]"),
    ("--shortcut-scale", "nan", "argument --shortcut-scale: nan must be a number in [0, 1]"),
    ("--distill-temperature", "inf", "argument --distill-temperature: inf must be a number in (0, 100]"),
    ("--ema-decay", "1", "argument --ema-decay: 1 must be a number in [0, 1)"),
    ("--seed", "-1", "argument --seed: -1 must be >= 0"),  # torch's "expected non-negative integer" before
    ("--seed", str(2**64), f"argument --seed: {2**64} must be <= 4294967295"),  # "Overflow when unpacking long long"
    ("--lr", "fast", "argument --lr: 'fast' is not a number"),
    ("--out", "", "argument --out: '' names no file or folder"),  # trained into the working directory before
    # bench.cli_fuzz in its committed form (2026-12-02): --width 10**21 was an overflow traceback from torch
    ("--width", str(10**21), f"argument --width: {10**21} must be <= 64"),
    ("--epochs", "1000001", "argument --epochs: 1000001 must be <= 1000000"),
    ("--batch-size", str(10**21), f"argument --batch-size: {10**21} must be <= 1048576"),
    ("--workers", "1025", "argument --workers: 1025 must be <= 1024"),
])
def test_a_number_out_of_range_is_refused_by_argparse(option, value, says, capsys):
    with pytest.raises(SystemExit) as e:
        get_args_parser().parse_args(["--preset", "resnet20", option, value])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_the_bounds_and_the_defaults_themselves_pass():
    args = get_args_parser().parse_args(["--lr", "10", "--momentum", "0", "--weight-decay", "0", "--nu", "0",
                                         "--shortcut-scale", "0", "--distill-temperature", "100", "--seed", "4294967295"])
    assert (args.lr, args.momentum, args.seed) == (10.0, 0.0, 4294967295)
    defaults = get_args_parser().parse_args([])
    assert (defaults.lr, defaults.momentum, defaults.weight_decay, defaults.nu) == (0.1, 0.9, 1e-4, 2.0)


@pytest.mark.parametrize("argv, says", [
    (["--preset", "auxnet56_5", "--width", "2"], "--preset auxnet56_5 is the cifar family at width 1; --family cifar "
                                                 "--width 2 contradict it"),  # trained width 1 without a word
    (["--preset", "auxnet56_5", "--family", "imagenet"], "contradict it"),
    (["--preset", "resnet20", "--momentum", "0"], "--momentum 0 with Nesterov momentum (the default) is plain SGD: add "
                                                  "--no-nesterov"),  # torch's message named no option
    # bench.cli_fuzz (2026-12-02): a warm-up was ignored under the step schedule, and one as long as the run never
    # reached --lr
    (["--preset", "resnet20", "--warmup-epochs", "2"], "--warmup-epochs 2 applies to --schedule cosine only; this "
                                                       "run's is 'step'"),
    (["--preset", "resnet20", "--schedule", "cosine", "--warmup-epochs", "1"], "--warmup-epochs 1 must be fewer than "
                                                                              "--epochs 1"),
])
def test_contradictions_are_refused_before_any_work(argv, says, tmp_path):
    args = get_args_parser().parse_args(["--dataset", "synthetic", "--epochs", "1", "--max-batches", "1",
                                         "--out", str(tmp_path / "run"), *argv])
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        main(args)
    assert not (tmp_path / "run").exists()


def test_a_file_as_the_run_directory_is_named_not_a_traceback(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    r = subprocess.run([sys.executable, "-m", "training.run", "--preset", "resnet20", "--out", str(tmp_path / "notes.txt")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"--out {tmp_path / 'notes.txt'} is a file, not a run directory" in r.stderr
    assert "Traceback" not in r.stderr and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_second_run_into_a_directory_in_use_is_refused_naming_the_first(tmp_path):
    """Two runs given one --out overwrote each other's last.pt and interleaved metrics.jsonl, or one died on the
    other's temporary file ("No such file or directory: last.pt.tmp -> last.pt")."""
    out = tmp_path / "run"
    held = hold_run_directory(out)  # as a first run holds it while it trains
    try:
        r = subprocess.run([sys.executable, "-m", "training.run", "--preset", "resnet20", "--dataset", "synthetic",
                            "--epochs", "1", "--max-batches", "1", "--out", str(out)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2, r.stderr
        assert f"{out} is in use by another training process (pid {os.getpid()})" in r.stderr
        assert not (out / "last.pt").exists() and not (out / "metrics.jsonl").exists()
    finally:
        held.close()
    with pytest.raises(ValueError, match="in use by another training process"):
        hold_run_directory(out), hold_run_directory(out)  # within one process too: each open file is its own lock
    again = hold_run_directory(out)  # once released (closed, or its process ended), the directory is free again
    again.close()


def test_without_a_validation_split_no_validation_error_is_made_up(tmp_path, capsys):
    """--val-size 0 (train on the whole training set) reported 100% validation error every epoch."""
    metrics = main(get_args_parser().parse_args(["--depth", "8", "--dataset", "synthetic", "--val-size", "0", "--epochs",
                                                 "1", "--max-batches", "2", "--precision", "fp32", "--out", str(tmp_path / "r")]))
    assert metrics["val_top1_err"] is None and metrics["val_top5_err"] is None and 0 <= metrics["test_top1_err"][0] <= 100
    out = capsys.readouterr()
    assert "epoch 1: no validation split; test top1 err per exit [" in out.err
    table = out.out.splitlines()
    assert "val top1 err" in table[0] and table[2].split()[4] == "-"
