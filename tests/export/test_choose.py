"""Choosing the served model among candidates, on validation only (issue 10)."""

import json

import pytest

from export.choose import Candidate, rank, table, verdicts
from tests.conftest_models import TINY
from training.run import get_args_parser, main


def cand(name, policy_acc, cost, final_acc=0.9, kept=True):
    return Candidate(name, "arch", "multiway", policy_acc, final_acc, cost, 125.0, kept)


def test_rank_takes_the_cheapest_among_those_within_the_promise_of_the_best():
    a, b = cand("a", 0.900, 80.0), cand("b", 0.905, 100.0)
    cheap_but_worse = cand("c", 0.850, 40.0)  # 5.5 pp below the best policy: not eligible, however cheap
    broken = cand("d", 0.910, 10.0, kept=False)  # its promise failed in cross-validation
    assert [c.checkpoint for c in rank([a, b, cheap_but_worse, broken], 0.5)] == ["a", "b"]


def test_rank_breaks_a_cost_tie_by_final_accuracy():
    a, e = cand("a", 0.90, 80.0, final_acc=0.90), cand("e", 0.90, 80.5, final_acc=0.92)  # within 1%
    f = cand("f", 0.90, 90.0, final_acc=0.99)  # 12% dearer: cost comes first
    assert [c.checkpoint for c in rank([a, e, f], 0.5)] == ["e", "a", "f"]


def test_verdicts_and_table_say_why_each_candidate_ranked_where_it_did():
    a, b = cand("a", 0.900, 80.0), cand("b", 0.905, 100.0)
    worse, broken = cand("c", 0.850, 40.0), cand("d", 0.910, 10.0, kept=False)
    assert verdicts([worse, b, a, broken], 0.5) == [
        "not eligible: policy 5.50 pp below the best", "eligible #2", "chosen",
        "not eligible: its policy broke its promise in cross-validation"]
    a = Candidate("runs/a", "AuxNet-8-2", "multiway", 0.9, 0.905, 80.0, 125.0, True, (0.61, 0.905), 0.0042,
                  "distill_weight=0.5", "margin")
    rows = table([a, cand("b", 0.905, 100.0)], 0.5)
    assert rows[2] == ("| runs/a | AuxNet-8-2 | multiway | distill_weight=0.5 | 61.0 / 90.5 | margin | 90.00 | 0.42 | "
                       "80.0 | 0.64 | chosen |")
    assert rows[3] == "| b | arch | multiway | - | - | top1 | 90.50 | - | 100.0 | 0.80 | eligible #2 |"


def test_rank_refuses_when_no_promise_was_kept():
    with pytest.raises(ValueError, match="no candidate's policy kept its promise"):
        rank([cand("a", 0.9, 80.0, kept=False)], 0.5)


@pytest.mark.slow
def test_choose_exports_and_checks_the_winner(tiny_run, tmp_path):
    from export.__main__ import main as export_main

    other = tmp_path / "joint"
    main(get_args_parser().parse_args([*TINY, "--method", "joint", "--seed", "1", "--out", str(other)]))
    repo = tmp_path / "repo"
    assert export_main(["choose", "--checkpoint", str(tiny_run), "--checkpoint", str(other), "--out", str(repo),
                        "--name", "chosen"]) == 0
    manifest = json.loads((repo / "chosen" / "manifest.json").read_text())
    assert manifest["name"] == "chosen" and manifest["policy"]["thresholds"]
    assert export_main(["choose", "--checkpoint", str(tiny_run), "--out", str(repo), "--name", "x"]) == 2


@pytest.mark.slow
def test_choose_dry_run_ranks_with_reasons_and_publishes_nothing(tiny_run, tmp_path, capsys):
    from export.__main__ import main as export_main

    other = tmp_path / "distilled"
    main(get_args_parser().parse_args([*TINY, "--distill-weight", "0.5", "--seed", "1", "--out", str(other)]))
    assert export_main(["choose", "--checkpoint", str(tiny_run), "--checkpoint", str(other), "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(f"| {tiny_run} |") or line.startswith(f"| {other} |")]
    assert len(rows) == 2 and "distill_weight=0.5" in rows[1] and "| multiway | - |" in rows[0]
    assert sum("chosen" in r for r in rows) == 1 and "--dry-run: nothing published" in out
    assert not list(tmp_path.glob("**/manifest.json"))  # no repository written anywhere
    assert export_main(["choose", "--checkpoint", str(tiny_run), "--checkpoint", str(other)]) == 2
    assert "give --out and --name (or --dry-run to only rank)" in capsys.readouterr().err
