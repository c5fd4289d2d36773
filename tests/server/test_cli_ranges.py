"""python -m server refuses numbers outside their range before loading anything, naming the option (exit 2)."""

import subprocess
import sys

import pytest

from server.__main__ import RANGES, check_ranges, get_args_parser


@pytest.mark.parametrize("argv, says", [
    (["--port", "99999"], "--port 99999 must be in [0, 65535]"),  # served on port 34463 before
    (["--metrics-port", "70000"], "--metrics-port 70000 must be in [-1, 65535]"),  # an OverflowError traceback
    (["--http-port", "-2"], "--http-port -2 must be in [-1, 65535]"),
    (["--max-batch", "0"], "--max-batch 0 must be in [1, 4096]"),  # an IndexError at start-up
    (["--threads", "0"], "--threads 0 must be in [1, 1024]"),  # a ValueError from the executor
    (["--decode-threads", "0"], "--decode-threads 0 must be in [1, 1024]"),
    (["--max-inflight", "0"], "--max-inflight 0 must be in [1, 10000000]"),
    (["--max-queue-delay-ms", "-1"], "--max-queue-delay-ms -1 must be in [0, 60000]"),
    (["--max-message-mb", "0"], "--max-message-mb 0 must be in [0.001, 2047]"),
    (["--max-message-mb", "4096"], "--max-message-mb 4096 must be in [0.001, 2047]"),  # past gRPC's int32 limit
    (["--grace-s", "nan"], "--grace-s nan must be in [0, 86400]"),
    (["--poll-s", "-1"], "--poll-s -1 must be in [0, 86400]"),
    (["--max-pixels", "0"], "--max-pixels 0 must be in [1, 1099511627776]"),
    (["--default-budget-ms", "-5"], "--default-budget-ms -5 must be in [0, 3600000]"),
    (["--access-log-sample", "2"], "--access-log-sample 2 must be in [0, 1]"),
    (["--max-connection-age-s", "-1"], "--max-connection-age-s -1 must be in [0, 1000000]"),
    (["--priority-levels", "0"], "--priority-levels 0 must be in [1, 1000]"),
    (["--response-cache-mb", "-1"], "--response-cache-mb -1 must be in [0, 1000000]"),
    # Found by running every option with -1, 0, nan, inf, 1e400, 10**21 (2026-12-02); before, the first three were
    # OverflowError tracebacks at start-up and the rest started a server that waited or slept forever.
    (["--max-connection-age-s", "inf"], "--max-connection-age-s inf must be in [0, 1000000]"),
    (["--idle-timeout-s", "1e400"], "--idle-timeout-s inf must be in [0, 1000000]"),
    (["--max-inflight", "999999999999999999999"], "--max-inflight 1e+21 must be in [1, 10000000]"),
    (["--workers", "999999999999999999999"], "--workers 1e+21 must be in [1, 256]"),
    (["--max-queue-delay-ms", "inf"], "--max-queue-delay-ms inf must be in [0, 60000]"),
    (["--grace-s", "inf"], "--grace-s inf must be in [0, 86400]"),
    (["--inline-compute-ms", "nan"], "--inline-compute-ms nan must be in [0, 60000]"),
    (["--threads", "999999999999999999999"], "--threads 1e+21 must be in [1, 1024]"),
    (["--max-streams-per-connection", "-1"], "--max-streams-per-connection -1 must be in [0, 2147483647]"),
])
def test_a_number_out_of_range_is_refused_by_option(argv, says, capsys):
    parser = get_args_parser()
    with pytest.raises(SystemExit) as e:
        check_ranges(parser, parser.parse_args(["--repo", "r", *argv]))
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_the_defaults_and_the_bounds_themselves_pass():
    parser = get_args_parser()
    check_ranges(parser, parser.parse_args(["--repo", "r"]))
    for name, low, high in RANGES:
        for value in (low, high):
            if value is not None:
                check_ranges(parser, parser.parse_args(["--repo", "r", f"--{name.replace('_', '-')}", str(value)]))


def test_the_command_exits_2_before_loading_a_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "server", "--repo", str(tmp_path / "none"), "--max-batch", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--max-batch 0 must be in [1, 4096]" in r.stderr and "repository" not in r.stderr


@pytest.mark.parametrize("text, says", [("png,tiff,eps", "unknown EPS; choose among PNG,JPEG,WEBP,BMP,GIF,TIFF"),
                                        (" , ", "no format; choose among")])
def test_image_formats_are_names_of_the_supported_ones(text, says, capsys):
    with pytest.raises(SystemExit) as e:
        get_args_parser().parse_args(["--repo", "r", "--image-formats", text])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert get_args_parser().parse_args(["--repo", "r", "--image-formats", "jpeg, PNG,jpeg"]).image_formats == ("JPEG", "PNG")


def test_a_default_priority_level_beyond_the_levels_is_refused(tmp_path):
    r = subprocess.run([sys.executable, "-m", "server", "--repo", str(tmp_path / "none"), "--priority-levels", "2",
                        "--default-priority-level", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--default-priority-level 3 must be at most --priority-levels 2" in r.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "1", "1e400"])
def test_monitor_false_alarm_samples_must_be_a_finite_count_above_one(value, tmp_path):
    r = subprocess.run([sys.executable, "-m", "server", "--repo", str(tmp_path / "none"), "--monitor-false-alarm-samples",
                        value], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--monitor-false-alarm-samples" in r.stderr and "must be more than 1 and at most 1e9" in r.stderr


@pytest.mark.parametrize("given, expected", [("warning", "WARNING"), ("Debug", "DEBUG"), ("ERROR", "ERROR")])
def test_log_level_in_any_case(given, expected):
    assert get_args_parser().parse_args(["--repo", "r", "--log-level", given]).log_level == expected


def test_an_unknown_log_level_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as e:  # a ValueError traceback from logging.basicConfig before
        get_args_parser().parse_args(["--repo", "r", "--log-level", "verbose"])
    assert e.value.code == 2 and "unknown level 'verbose'; valid: DEBUG, INFO, WARNING, ERROR, CRITICAL" in capsys.readouterr().err


# Found by bench.cli_fuzz on the server (2026-12-02, this form): a port file in a missing folder or with too long a
# name was a FileNotFoundError / OSError traceback once the server served, '' silently wrote none, a too long trace
# file name failed only when the traces were written, and trace numbers past 32 bits were taken.
@pytest.mark.parametrize("argv, says", [
    (["--port-file", "missing/ports"], "--port-file missing/ports: its folder"),
    (["--port-file", "p" * 300], "a file name of at most"),
    (["--port-file", ""], "argument --port-file: '' names no file or folder"),
    (["--trace-file", ""], "argument --trace-file: '' names no file or folder"),
    (["--trace-file", "t" * 250], "a file name of at most"),
    (["--trace-rate", "999999999999999999999"], "trace rate 999999999999999999999 must be at least 1"),
    (["--trace-count", "4294967296"], "must be -1 (no limit) or the number of traces still to collect, at most 4294967295"),
    (["--trace-log-frequency", "4294967296"], "or the traces per file, at most 4294967295"),
    # bench.cli_fuzz, 2026-12-03: the shared trace count's files in a missing folder were a traceback at start-up
    (["--worker-state", "missing/x"], "--worker-state missing/x: not a writable folder"),
    (["--worker-state", "w" * 5000], f"--worker-state {'w' * 64}: not a writable folder"),
])
def test_output_files_and_trace_numbers_are_checked_before_serving(argv, says, tmp_path):
    r = subprocess.run([sys.executable, "-m", "server", "--repo", str(tmp_path / "none"), *argv], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr[-400:]
