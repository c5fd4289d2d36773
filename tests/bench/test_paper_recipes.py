"""Issue 10's runs a..g are one table (bench/paper_recipes.sh) that the GPU lease's script and the CPU's long runs
both source: every entry must parse with training.run's own parser (a typo would cost a lease's minutes), say
the recipe its name promises, and every run either script names by default must be in it."""

import functools
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from training.run import get_args_parser

ROOT = Path(__file__).resolve().parents[2]


@functools.cache  # one bash per test session, not one per lookup
def recipes() -> dict[str, str]:
    r = subprocess.run(["bash", "-c", 'source bench/paper_recipes.sh; for k in "${!PAPER_RECIPES[@]}"; do '
                       'printf "%s=%s\\n" "$k" "${PAPER_RECIPES[$k]}"; done'],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in r.stdout.splitlines())


def parsed(name: str):
    return get_args_parser().parse_args([*shlex.split(recipes()[name]), "--epochs", "160"])


def test_the_table_holds_the_issues_runs():
    assert sorted(recipes()) == ["a_multiway", "b_resnet56", "c_multiway_distill", "d_joint", "e_aux44", "e_resnet110",
                                 "f_multiway_preact", "g_multiway_cosine"]


@pytest.mark.parametrize(("name", "preset", "method"), [
    ("a_multiway", "auxnet56_5", "multiway"), ("b_resnet56", "auxnet56_5", "none"), ("d_joint", "auxnet56_5", "joint"),
    ("e_aux44", "auxnet44_3", "multiway"), ("e_resnet110", "resnet110", "none")])
def test_the_paper_recipe_runs_take_its_defaults(name, preset, method):
    a = parsed(name)
    assert (a.preset, a.method) == (preset, method)
    # the paper's recipe: step schedule, nothing beyond it
    assert (a.schedule, a.warmup_epochs, a.distill_weight, a.label_smoothing, a.ema_decay) == ("step", 0, 0.0, 0.0, 0.0)
    assert (a.lr, a.batch_size, a.weight_decay, a.momentum) == (0.1, 128, 1e-4, 0.9)


def test_the_runs_beyond_the_paper_say_what_their_names_promise():
    c, f, g = parsed("c_multiway_distill"), parsed("f_multiway_preact"), parsed("g_multiway_cosine")
    assert (c.method, c.distill_weight, c.distill_temperature, c.schedule, c.warmup_epochs) == ("multiway", 0.5, 3.0, "cosine", 5)
    assert (f.method, f.preact_shortcut, f.schedule) == ("multiway", True, "step")
    # g is c less the distillation
    assert (g.method, g.distill_weight, g.schedule, g.warmup_epochs) == ("multiway", 0.0, "cosine", 5)


@pytest.mark.parametrize("script", ["bench/gpu/paper_runs.sh", "bench/cpu_long_run.sh"])
def test_the_runs_each_script_names_are_in_the_table(script):
    text = (ROOT / script).read_text()
    named = set(re.findall(r"\b[a-g]_[a-z0-9_]+\b", " ".join(re.findall(r'(?:ORDER:-|RUN:-)([^}]+)\}', text))))
    assert named and named <= set(recipes()), named - set(recipes())
