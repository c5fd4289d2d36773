"""bench/paper_tables.py: our runs beside the paper's printed figures, in both run-folder layouts."""

import json

from bench.paper_tables import load_run, table1, table2, table6

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
    assert t6[0].count("ours (") == 3
    out25 = next(row for row in t6 if row.startswith("| output-25 |"))
    assert out25 == "| output-25 | 23.00 | 17.00 | 43.00 | 18.94 | 45.07 |"
    assert next(row for row in t6 if row.startswith("| output-56 |")).endswith("| 5.53 | 6.56 |")
