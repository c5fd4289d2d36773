"""Every option of the project's commands with bad values: what ends in a traceback, and what is accepted.

    python -m bench.cli_fuzz [--commands server training.run training.heads export client demo] [--jobs 2]
                             [--timeout-s 20]

Each command runs once per (option, value) in a sandbox folder of its own (its working directory; every path
value is inside it), after the arguments it needs to do real work (a tiny synthetic checkpoint and its exported
repository, made first). Numbers get -1, 0, nan, inf, 1e400, 10**21 and a word; text gets '', a missing path, a
path to a file, a control character, 5,000 characters and '-5'; choices get a wrong name and ''. A value is
TRACEBACK when a Python traceback reached stderr (the brief's rule: every bad input gets a clear error that names
what was wrong), ACCEPTED when the command succeeded or was still running at the timeout (a server serving):
read those, as some are right (port 0). Exit 1 if any traceback. 2026-12-02: the first run found ~30 defects
(README, Operating it and Training; the tests that hold them name this tool).
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

NUMBERS = ["-1", "0", "nan", "inf", "1e400", "999999999999999999999", "abc"]
TEXTS = ["", "missing/x", "a-file", "\x7f", "a" * 5000, "-5"]
CHOICES = ["NOPE", ""]


def options(parser: argparse.ArgumentParser, sub: str | None = None):
    """(subcommand or None, action) for every option that takes a value."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from ((name, x) for _, x in options(sp))
        elif a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction):
            yield sub, a


def values_for(a: argparse.Action) -> list[str]:
    if a.choices is not None:
        return CHOICES
    numeric = a.type in (int, float) or getattr(a.type, "__name__", "").startswith(("integer", "number")) or (
        isinstance(a.default, (int, float)) and not isinstance(a.default, bool))
    return NUMBERS if numeric else TEXTS


def parser_of(command: str) -> argparse.ArgumentParser:
    """The command's parser: its get_args_parser, or for the two built inside main() the parser main builds."""
    module = importlib.import_module({"server": "server.__main__", "export": "export.__main__", "client": "server.client",
                                      "demo": "server.demo"}.get(command, command))
    if hasattr(module, "get_args_parser"):
        return module.get_args_parser()
    captured = []
    real = argparse.ArgumentParser.parse_args

    def capture(self, *a, **k):
        captured.append(self)
        raise SystemExit(0)
    argparse.ArgumentParser.parse_args = capture
    try:
        module.main(["--help"])
    except SystemExit:
        pass
    finally:
        argparse.ArgumentParser.parse_args = real
    return captured[0]


def bases(sandbox: Path, checkpoint: Path, model_dir: Path, images: Path) -> dict:
    """The arguments each command (and subcommand) needs to do real work, before the fuzzed option."""
    repo = str(model_dir.parent)
    return {
        "server": {None: ["--repo", repo, "--port", "0", "--metrics-port", "-1", "--http-port", "-1", "--health-port", "-1"]},
        "training.run": {None: ["--depth", "8", "--exits", "5,8", "--dataset", "synthetic", "--epochs", "1",
                                "--max-batches", "2", "--precision", "fp32", "--out", "run", "--overwrite"]},
        "training.heads": {None: ["--checkpoint", str(checkpoint), "--out", "heads", "--overwrite", "--views", "1",
                                  "--epochs", "1"]},
        "export": {"all": ["--checkpoint", str(checkpoint), "--out", "exported", "--no-measure"],
                   "exit": ["0", "--checkpoint", str(checkpoint), "--out", "exported", "--no-measure"],
                   "choose": ["--checkpoint", str(checkpoint), "--dry-run"], "check": [str(model_dir)],
                   "evaluate": [str(model_dir), "--data", str(images)]},
        "client": {None: ["--target", "127.0.0.1:1", "--timeout-s", "0.5", str(next(images.rglob("*.png")))]},
        "demo": {None: ["--repo", repo, "--images", str(images)]},
    }


def prepare(sandbox: Path) -> tuple[Path, Path, Path]:
    """A tiny synthetic checkpoint, its exported repository and a labelled image folder, inside the sandbox."""
    import numpy as np
    from PIL import Image

    run = [sys.executable, "-m", "training.run", "--depth", "8", "--exits", "5,8", "--dataset", "synthetic", "--epochs",
           "1", "--max-batches", "2", "--precision", "fp32", "--out", str(sandbox / "tiny")]
    subprocess.run(run, check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "export", "all", "--checkpoint", str(sandbox / "tiny"), "--out",
                    str(sandbox / "repo"), "--no-measure", "--name", "tiny"], check=True, capture_output=True, timeout=300)
    rng = np.random.default_rng(0)
    for c in range(10):
        (sandbox / "images" / f"class{c}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(sandbox / "images" / f"class{c}" / "0.png")
    (sandbox / "a-file").write_text("a file, not a folder\n")
    return sandbox / "tiny", sandbox / "repo" / "tiny", sandbox / "images"


def run_one(command: str, argv: list[str], cwd: Path, timeout_s: float) -> tuple[str, str]:
    module = {"client": "server.client", "demo": "server.demo"}.get(command, command)
    try:
        r = subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, capture_output=True, text=True,
                           timeout=timeout_s, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        return "ACCEPTED", "still running at the timeout"
    last = (r.stderr.strip().splitlines() or [""])[-1][:160]
    if "Traceback" in r.stderr:
        return "TRACEBACK", last
    return ("ACCEPTED" if r.returncode == 0 else f"refused ({r.returncode})"), last


def main(argv=None) -> int:
    p = argparse.ArgumentParser("python -m bench.cli_fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--commands", nargs="+", default=["server", "training.run", "training.heads", "export", "client", "demo"])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--timeout-s", type=float, default=20.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cli_fuzz-") as tmp:
        sandbox = Path(tmp)
        base = bases(sandbox, *prepare(sandbox))
        jobs = []
        for command in args.commands:
            for i, (sub, action) in enumerate(options(parser_of(command))):
                for j, value in enumerate(values_for(action)):
                    cwd = sandbox / "cwd" / f"{command}-{sub}-{i}-{j}"  # each its own: '' or '-5' as a folder stays here
                    cwd.mkdir(parents=True)
                    (cwd / "a-file").write_text("a file, not a folder\n")
                    pre = base[command].get(sub, base[command].get(None, []))
                    jobs.append((command, ([sub] if sub else []) + pre + [f"{action.option_strings[-1]}={value}"], cwd))
        tracebacks = 0
        with ThreadPoolExecutor(args.jobs) as pool:
            for (command, argv, _), (verdict, last) in zip(jobs, pool.map(lambda j: run_one(*j, args.timeout_s), jobs)):
                tracebacks += verdict == "TRACEBACK"
                if not verdict.startswith("refused"):
                    print(f"{verdict:9} {command} {argv[-1][:70]!r}: {last}", flush=True)
        print(f"{len(jobs)} runs, {tracebacks} tracebacks")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
