"""bench/plot_runs.py: curves from metrics.jsonl, and a named refusal of every bad argument (it used to end in
tracebacks: `--help` was taken for a run)."""

import json

import pytest

from bench.plot_runs import main


def _metrics(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_one_panel_a_run_is_written(tmp_path):
    rows = [{"epoch": e, "val_top1_err": [60 - e, 50 - e, 40 - e]} for e in (1, 2, 3)]
    a, b = _metrics(tmp_path / "a.jsonl", rows), _metrics(tmp_path / "b.jsonl", rows[:2])
    main([str(tmp_path / "one.png"), f"a={a}"])
    main([str(tmp_path / "two.png"), f"a={a}", f"b={b}"])
    from PIL import Image

    one, two = Image.open(tmp_path / "one.png"), Image.open(tmp_path / "two.png")
    assert one.format == two.format == "PNG"
    assert (one.size, two.size) == ((440, 396), (880, 396))  # 4 x 3.6 inches a panel at 110 dpi


@pytest.mark.parametrize("spec, message", [
    ("no-equals-sign", "'no-equals-sign': give a run as NAME=metrics.jsonl"),
    ("=x.jsonl", "give a run as NAME=metrics.jsonl"),
    ("a=missing.jsonl", "missing.jsonl: No such file or directory"),
    ("a=bad.jsonl", "bad.jsonl: not JSON lines"),
    ("a=noeval.jsonl", "noeval.jsonl: no validation errors"),
    ("a=empty.jsonl", "empty.jsonl: no validation errors"),
])
def test_a_bad_run_is_refused_by_name(tmp_path, monkeypatch, capsys, spec, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    _metrics(tmp_path / "noeval.jsonl", [{"epoch": 1, "val_top1_err": None}])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit) as e:
        main(["out.png", spec])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_help_and_an_unwritable_figure(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "NAME=metrics.jsonl" in capsys.readouterr().out
    good = _metrics(tmp_path / "a.jsonl", [{"epoch": 1, "val_top1_err": [50.0]}])
    with pytest.raises(SystemExit, match="no-such-folder/out.png: cannot write the figure"):
        main([str(tmp_path / "no-such-folder" / "out.png"), f"a={good}"])
