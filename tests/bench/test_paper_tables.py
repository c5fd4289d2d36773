"""bench/paper_tables.py: our runs beside the paper's printed figures, in both run-folder layouts."""

import json
import re

import pytest

from bench.paper_tables import load_run, table1, table2, table6, with_heads

ERRS = {"multiway": [48.0, 23.0, 18.0, 14.0, 13.5], "none": [55.0, 43.0, 35.0, 16.5, 14.0],
        "distill": [40.0, 17.0, 9.0, 6.0, 5.9]}


def write_run(root, name, cmd, errs, epochs_done, nested=False):
    (root / f"{name}.cmd").write_text(f"python -m training.run {cmd} --dataset folder --data-dir /tmp/cifar10-jpeg --seed 0\n")
    rows = [{"epoch": e, "test_top1_err": [x + 10 for x in errs]} for e in range(1, epochs_done)]
    rows.append({"epoch": epochs_done, "test_top1_err": errs})
    rows.append({"epoch": epochs_done + 1, "images_per_s": 1.0})  # a --no-eval row: no errors, not the result
    metrics = root / name / "metrics.jsonl" if nested else root / f"{name}.metrics.jsonl"
    metrics.parent.mkdir(exist_ok=True)
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))


def runs(tmp_path):
    write_run(tmp_path, "a_multiway", "--preset auxnet56_5 --method multiway --epochs 4", ERRS["multiway"], 4, nested=True)
    write_run(tmp_path, "none", "--preset auxnet56_5 --method none --epochs 4", ERRS["none"], 4)
    write_run(tmp_path, "c_distill", "--preset auxnet56_5 --method multiway --epochs 6 --distill-weight 0.5 "
              "--distill-temperature 3 --schedule cosine", ERRS["distill"], 3, nested=True)
    (tmp_path / "orphan.cmd").write_text("python -m training.run --preset auxnet56_5\n")  # no metrics: skipped
    return [r for f in sorted(tmp_path.glob("*.cmd")) if (r := load_run(f)) is not None]


def test_rows_carry_our_errors_beside_the_papers(tmp_path):
    found = {r.name: r for r in runs(tmp_path)}
    assert sorted(found) == ["a_multiway", "c_distill", "none"]
    assert found["none"].network == "ResNet-56" and found["a_multiway"].network == "AuxNet-56-5"
    assert found["c_distill"].label == "3 of 6 ep, seed 0, cifar10-jpeg"
    t1 = table1(list(found.values()))
    assert "| ResNet-56 | none | - | 14.00 | 6.08 |" in t1[2]  # the paper's row order: original BP first
    assert any(row.startswith("| AuxNet-56-5 | multiway | - | 13.50 | 5.53 |") for row in t1)
    distill = next(row for row in t1 if "--distill-weight 0.5" in row)
    assert "| 5.90 | - |" in distill  # beyond the paper: no paper figure beside it
    t2 = "\n".join(table2(list(found.values()), cifar100=False))
    assert "| AuxNet-56-5 | {56, 45, 35, 25, 15} | 13.50 | 5.53 |" in t2 and "distill" not in t2
    assert "| ResNet-56 | {56} | 14.00 | 6.08 |" in t2
    assert "| ResNet-56 | {56} | 14.00 | 28.46 |" in "\n".join(table2(list(found.values()), cifar100=True))


def test_table6_lists_every_run_per_output_with_the_papers_columns(tmp_path):
    t6 = table6(runs(tmp_path))
    assert t6[0].count("ours: ") == 3
    assert "| ours: a_multiway (multiway, 4 ep) | ours: c_distill (multiway, recipe, 3 ep) | ours: none (ResNet, probes, 4 ep) |" in t6[0]
    out25 = next(row for row in t6 if row.startswith("| output-25 |"))
    assert out25 == "| output-25 | 23.00 | 17.00 | 43.00 | 18.94 | 45.07 |"
    assert next(row for row in t6 if row.startswith("| output-56 |")).endswith("| 5.53 | 6.56 |")


def write_heads(path, errs, **fields):
    record = {"source": "runs/x/a_multiway", "pool": 4, "views": 8, "epochs": 4, "test_top1_err": errs, **fields}
    path.write_text(json.dumps(record))
    return path


def test_retrained_heads_add_a_table6_column_and_leave_tables_1_and_2(tmp_path):
    found = runs(tmp_path)
    heads = write_heads(tmp_path / "heads.json", [30.0, 19.0, 15.0, 13.9, 13.5])
    grid = with_heads(found, f"a_multiway={heads}")
    assert grid.last["test_top1_err"] == [30.0, 19.0, 15.0, 13.9, 13.5] and grid.heads == "4x4 heads, 4 ep on 8 views"
    assert found[0].last["test_top1_err"] == ERRS["multiway"]  # the run's own row is untouched
    t6 = table6([*found, grid])
    assert t6[0].count("ours: ") == 4 and "ours: a_multiway + grid heads (multiway, 4 ep)" in t6[0]
    assert next(row for row in t6 if row.startswith("| output-15 |")) == "| output-15 | 48.00 | 40.00 | 55.00 | 30.00 | 50.35 | 63.01 |"
    assert t6[-1].startswith("- a_multiway + grid heads: AuxNet-56-5 multiway, 4 ep") and t6[-1].endswith(
        "auxiliary heads retrained (training.heads): 4x4 heads, 4 ep on 8 views")
    mlp = with_heads(found, f"a_multiway={write_heads(tmp_path / 'mlp.json', [20.0] * 5, hidden=512, epochs=16)}")
    assert mlp.heads == "4x4 heads with 512 hidden units, 16 ep on 8 views"
    assert "ours: a_multiway + grid MLP heads (multiway, 4 ep)" in table6([*found, grid, mlp])[0]


@pytest.mark.parametrize("spec, message", [
    ("a_multiway", "expected RUN=FILE"),
    ("nobody={heads}", "no run named 'nobody' (runs: a_multiway, c_distill, none)"),
    ("a_multiway={short}", "has no test_top1_err for 5 outputs"),
    ("a_multiway={other}", "is not a heads.json of training.heads"),
])
def test_retrained_heads_refusals_name_what_is_wrong(tmp_path, spec, message):
    found = runs(tmp_path)
    files = {"heads": write_heads(tmp_path / "h.json", [1.0] * 5), "short": write_heads(tmp_path / "s.json", [1.0] * 4),
             "other": tmp_path / "o.json"}
    files["other"].write_text(json.dumps({"test_top1_err": [1.0] * 5}))
    with pytest.raises(ValueError, match=re.escape(message)):
        with_heads(found, spec.format(**files))
