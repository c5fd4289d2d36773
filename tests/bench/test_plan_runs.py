"""bench/gpu/plan_runs.py: the paper runs' plan from speed probes, computed by hand on written metrics."""

import json

import pytest

from bench.gpu.plan_runs import main, plan, shared_throughput


def row(time, images, train_s, steady=None):
    return {"time": time, "train_s": train_s, "images_per_s_with_warmup": images / train_s,
            "images_per_s": steady or images / train_s}


def write(path, rows):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_shared_rate_counts_only_the_seconds_all_probes_ran():
    # a compiled fast and ran alone from t=10 to t=20 at 1000 img/s (those epochs must not count); b's first
    # epoch ended at t=20. From 20 to 30 both ran: a 400 + 400 images, b 600 + 600 (epochs ending at 25, 30).
    probes = {"a": [row(10, 100, 5), row(15, 5000, 5), row(20, 5000, 5), row(25, 400, 5), row(30, 400, 5)],
              "b": [row(20, 100, 20), row(25, 600, 5), row(30, 600, 5)]}
    rate, window = shared_throughput(probes)
    assert window == 10 and rate == pytest.approx((800 + 1200) / 10)
    # The plain sum of last rates would have said 80 + 120 as well here, but with a's earlier epochs last
    # it would say 1000 + 120: the window is what protects the plan.
    probes["a"] = probes["a"][:3]
    assert shared_throughput(probes) == (1000 + 120, 0.0)  # no common window: flagged by a zero length


def test_plan_starts_the_runs_whose_share_fits_the_floor_and_skips_failed_probes(tmp_path):
    # Alone: 10,000 img/s, evaluation 1 s an epoch (3 s the first time, 2 of them compiling).
    write(tmp_path / "probe1", [{"images_per_s": 9000, "eval_s": 3.0}, {"images_per_s": 10000, "eval_s": 1.0}])
    # Three side by side at 6,000 img/s in all over the common window 100..110 s; warm-up 20 s (first epoch:
    # 2,000 images in 20.2 s, of which 0.2 s at the steady 10,000 img/s); the third probe died after one epoch.
    for n, name in enumerate(["a", "b", "c"]):
        rows = [row(100, 2000, 20.2, steady=10000)] + ([row(105, 10000, 5), row(110, 10000, 5)] if name != "c" else [])
        write(tmp_path / f"probe_all_{n}", rows)
    # a and b share 40,000 images over 10 s = 4,000 img/s in all, 2,000 each.
    lines, runs, epochs = plan(tmp_path, left_s=1000, min_epochs=10, max_epochs=400, names=["a", "b", "c"])
    assert "probe of c failed" in lines[0] and "2 side by side 4000 img/s" in lines[1]
    # Two runs: epoch (45,000 + 1 s x 10,000) / 2,000 = 27.5 s; 0.9 x (1000 - 20 - 2) / 27.5 = 32 epochs >= 10.
    assert (runs, epochs) == (2, 32) and lines[-1] == "2 32 a b"
    # A floor of 40 epochs: only one run fits it, alone: (45,000 + 10,000) / 10,000 = 5.5 s -> 160 epochs.
    assert plan(tmp_path, 1000, 40, 400, ["a", "b", "c"])[1:] == (1, 160)
    assert plan(tmp_path, 1000, 40, 100, ["a", "b", "c"])[1:] == (1, 100)  # capped at the paper's schedule


def test_no_working_probe_stops_the_plan(tmp_path):
    write(tmp_path / "probe1", [{"images_per_s": 9000, "eval_s": 3.0}, {"images_per_s": 10000, "eval_s": 1.0}])
    with pytest.raises(SystemExit, match="nothing to start"):
        plan(tmp_path, 1000, 10, 400, ["a"])


def test_a_failed_probe_alone_is_named_not_a_traceback(tmp_path):
    write(tmp_path / "probe1", [{"images_per_s": 9000, "eval_s": 3.0}])  # died in its second epoch
    with pytest.raises(SystemExit, match=r"probe1: the run alone finished 1 of its two epochs \(probe1.log\)"):
        plan(tmp_path, 1000, 10, 400, ["a"])


def test_the_command_line_prints_the_plan_last_and_refuses_bad_numbers(tmp_path, capsys):
    test_plan_starts_the_runs_whose_share_fits_the_floor_and_skips_failed_probes(tmp_path)  # writes the probes
    main([str(tmp_path), "1000", "10", "400", "a", "b", "c"])  # paper_runs.sh's call: it reads the last line
    assert capsys.readouterr().out.splitlines()[-1] == "2 32 a b"
    for bad in (["nan", "10", "400"], ["1000", "0", "400"], ["1000", "200", "100"], ["1000", "ten", "400"]):
        with pytest.raises(SystemExit) as e:
            main([str(tmp_path), *bad, "a"])
        assert e.value.code == 2
    assert "min_epochs <= max_epochs, got 1000.0 200 100" in capsys.readouterr().err
