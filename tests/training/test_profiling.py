"""--profile-steps: the report's arithmetic, and that profiling leaves training exactly as it was."""

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.profiling import StepProfiler, busy_seconds
from training.run import get_args_parser, main

ARGS = ["--depth", "8", "--exits", "5,8", "--dataset", "synthetic", "--precision", "fp32", "--device", "cpu",
        "--batch-size", "16", "--max-batches", "14", "--val-size", "64", "--seed", "1", "--no-eval"]


def test_busy_time_is_the_union_of_kernel_intervals():
    assert busy_seconds([]) == 0
    assert busy_seconds([(5, 6), (0, 2), (1, 3)]) == 4  # overlap counted once, gap (3, 5) not at all
    assert busy_seconds([(0, 10), (2, 3), (4, 12)]) == 12  # nested, then extending
    assert busy_seconds([(0, 1), (1, 2)]) == 2  # touching


def test_profiled_run_trains_exactly_as_an_unprofiled_one_and_writes_the_report(tmp_path, capsys):
    main(get_args_parser().parse_args(ARGS + ["--out", str(tmp_path / "plain")]))
    main(get_args_parser().parse_args(ARGS + ["--out", str(tmp_path / "prof"), "--profile-steps", "3"]))
    a, b = load_checkpoint(tmp_path / "plain"), load_checkpoint(tmp_path / "prof")
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k], rtol=0, atol=0)
    report = (tmp_path / "prof" / "profile_epoch1.txt").read_text()
    assert report.startswith("profiled training steps 11..13 of the first epoch (3 steps of 16 images) on cpu")
    assert "wall per step:" in report and "aten::convolution_backward" in report
    assert "device busy" not in report  # no device figures from a CPU
    assert "whole profile:" in capsys.readouterr().err


def test_profile_window_longer_than_the_epoch_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--profile-steps 10 needs 20 batches in an epoch .* this epoch has 14"):
        main(get_args_parser().parse_args(ARGS + ["--out", str(tmp_path / "r"), "--profile-steps", "10"]))


def test_profiler_window_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="must both be >= 1"):
        StepProfiler(0, 5, 16, torch.device("cpu"), tmp_path / "p.txt")


def test_cuda_report_counts_kernel_time_once_per_step():
    # The CUDA branch cannot run here; its arithmetic can, on a stand-in for the profiler's results: two
    # overlapping kernels (0-100 us, 50-150 us) and a CPU event over 2 steps of 0.5 ms wall each.
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from training.profiling import format_report

    def event(device, start, end):
        return SimpleNamespace(device_type=device, time_range=SimpleNamespace(start=start, end=end))

    prof = SimpleNamespace(
        events=lambda: [event(DeviceType.CUDA, 0, 100), event(DeviceType.CUDA, 50, 150), event(DeviceType.CPU, 0, 1000)],
        key_averages=lambda: SimpleNamespace(table=lambda sort_by, row_limit: f"table sorted by {sort_by}"))
    report = format_report(prof, wall_s=0.001, steps=2, batch_size=128, first=11, device_type="cuda").splitlines()
    assert report[1] == "wall per step: 0.500 ms (256000 img/s under the profiler)"
    assert report[2].startswith("device busy per step: 0.075 ms (15% of the wall; 1 kernels a step)")
    assert report[3] == "table sorted by self_device_time_total"
