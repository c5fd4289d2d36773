"""After a GPU lease of bench/gpu/paper_runs.sh: put what its calls returned where the project keeps it, and say
how far each run got.

    python -m bench.gpu.ingest_runs NAME CALL_DIR [CALL_DIR ...]     (calls in the order they ran)

Each CALL_DIR holds one call's returned files (runs.tar.gz, ckpt_RUN.pt), e.g. .gpuruns/2026-12-01-call1. A
later call's files replace an earlier one's (its logs and metrics were appended to on the same machine, or
restored from the earlier archive with RESTORE). Writes:
- bench/results/NAME/: per run RUN.cmd, RUN.log, RUN.metrics.jsonl; the call's speed.txt, plan.txt,
  machine.txt, profile_*.txt/log; tables.md (bench.paper_tables) and curves.png (bench.plot_runs) made anew;
- runs/NAME/RUN/last.pt (git-ignored), the run directories `python -m export choose` and RESTORE take.
Prints per run: epochs in its metrics and in its checkpoint (a call the tool stopped may return a checkpoint
one epoch behind its metrics: resuming from it is still exact, training.run drops the extra rows), the last
test error per output, the median img/s; then the commands that come next.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CALL_FILES = ("speed.txt", "plan.txt", "machine.txt", "started.txt")  # from the archive's top level, besides runs


def read_archives(call_dirs: list[Path]) -> dict[str, bytes]:
    """paper_runs/... path -> bytes, later calls over earlier ones; .pt files are never in the archive."""
    files: dict[str, bytes] = {}
    for d in call_dirs:
        archive = d / "runs.tar.gz"
        if not archive.is_file():
            raise FileNotFoundError(f"{archive} does not exist: give the folders holding each call's returned files")
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.startswith("paper_runs/"):
                    files[m.name.removeprefix("paper_runs/")] = tar.extractfile(m).read()
    return files


def latest_checkpoints(call_dirs: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in call_dirs:
        for f in sorted(d.glob("ckpt_*.pt")):
            found[f.stem.removeprefix("ckpt_")] = f
    return found


def metrics_rows(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def ingest(name: str, call_dirs: list[Path], results_root: Path, runs_root: Path) -> list[dict]:
    files = read_archives(call_dirs)
    ckpts = latest_checkpoints(call_dirs)
    runs = sorted(p.removesuffix(".cmd") for p in files if p.endswith(".cmd") and "/" not in p)
    if not runs:
        raise ValueError(f"no run (RUN.cmd) in the archives of {', '.join(map(str, call_dirs))}")
    out = results_root / name
    out.mkdir(parents=True, exist_ok=True)
    for f in CALL_FILES:
        if f in files:
            (out / f).write_bytes(files[f])
    for f in files:
        if f.startswith("profile_") and "/" not in f:
            (out / f).write_bytes(files[f])
    summary = []
    for run in runs:
        (out / f"{run}.cmd").write_bytes(files[f"{run}.cmd"])
        if f"{run}.log" in files:
            (out / f"{run}.log").write_bytes(files[f"{run}.log"])
        rows = metrics_rows(files.get(f"{run}/metrics.jsonl", b""))
        if rows:
            (out / f"{run}.metrics.jsonl").write_bytes(files[f"{run}/metrics.jsonl"])
        ckpt_epoch = None
        if run in ckpts:
            dest = runs_root / name / run
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ckpts[run], dest / "last.pt")
            if rows:
                (dest / "metrics.jsonl").write_bytes(files[f"{run}/metrics.jsonl"])
            ckpt_epoch = int(torch.load(ckpts[run], map_location="cpu", weights_only=True)["epoch"])
        tested = [r for r in rows if "test_top1_err" in r]
        summary.append({"run": run, "metrics_epochs": rows[-1]["epoch"] if rows else 0, "checkpoint_epoch": ckpt_epoch,
                        "planned_epochs": _planned_epochs(files[f"{run}.cmd"].decode()),
                        "test_top1_err": tested[-1]["test_top1_err"] if tested else None,
                        "median_images_per_s": statistics.median(r["images_per_s"] for r in rows) if rows else None})
    return summary


def _planned_epochs(cmd: str) -> int | None:
    argv = cmd.split()
    return int(argv[argv.index("--epochs") + 1]) if "--epochs" in argv else None


def make_tables_and_curves(out: Path, runs: list[str]) -> None:
    tables = subprocess.run([sys.executable, "-m", "bench.paper_tables", "--runs", str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    (out / "tables.md").write_text(tables.stdout + tables.stderr)
    curves = [f"{r}={out / f'{r}.metrics.jsonl'}" for r in runs if (out / f"{r}.metrics.jsonl").exists()]
    if curves:
        subprocess.run([sys.executable, "-m", "bench.plot_runs", str(out / "curves.png"), *curves], cwd=ROOT, check=False)


def report(summary: list[dict], name: str, runs_root: Path) -> str:
    lines = ["| run | epochs (metrics / checkpoint / planned) | last test top-1 error per output (%) | median img/s |",
             "|---|---|---|---:|"]
    for s in summary:
        err = " / ".join(f"{e:.2f}" for e in reversed(s["test_top1_err"])) if s["test_top1_err"] else "-"
        ips = f"{s['median_images_per_s']:.0f}" if s["median_images_per_s"] else "-"
        lines.append(f"| {s['run']} | {s['metrics_epochs']} / {s['checkpoint_epoch'] or '-'} / {s['planned_epochs']} | "
                     f"{err} (deepest first) | {ips} |")
    behind = [s["run"] for s in summary if s["checkpoint_epoch"] is not None and s["checkpoint_epoch"] < s["metrics_epochs"]]
    if behind:
        lines.append(f"checkpoint behind its metrics (the call was stopped mid-copy): {', '.join(behind)}; a RESTORE "
                     "resumes from the checkpoint's epoch and drops the later rows")
    unfinished = [s["run"] for s in summary if s["planned_epochs"] and (s["checkpoint_epoch"] or 0) < s["planned_epochs"]]
    if unfinished:
        lines.append(f"unfinished: {', '.join(unfinished)} (continue on a lease: bench/gpu/README.md, RESTORE)")
    done = [str(runs_root / name / s["run"]) for s in summary if s["checkpoint_epoch"]]
    if done:
        lines.append("next, validation only: python -m export choose " + " ".join(f"--checkpoint {d}" for d in done)
                     + " --data-dir ../shared/data/cifar10-jpeg --dry-run")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser("python -m bench.gpu.ingest_runs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="a name for this lease's runs, e.g. h200_cifar10jpeg_160ep")
    p.add_argument("call_dirs", nargs="+", type=Path, help="each call's returned files, in the order the calls ran")
    p.add_argument("--results-root", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--runs-root", type=Path, default=ROOT / "runs")
    args = p.parse_args()
    summary = ingest(args.name, args.call_dirs, args.results_root, args.runs_root)
    make_tables_and_curves(args.results_root / args.name, [s["run"] for s in summary])
    print(report(summary, args.name, args.runs_root))


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, tarfile.TarError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
