"""The model repository: the only contract between export and server (DESIGN.md).

    <repo>/<name>            a symlink to the current version directory (atomic replacement)
    <repo>/.versions/<name>-<stamp>/manifest.json, exit_<k>.onnx, exit_<k>.plan (optional)

`load_manifest` validates everything the server relies on and names the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from server.manifest_fields import Fields, RepositoryError, agreement_table
from server.policy import POLICY_SCORES

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ExitInfo:
    index: int
    layer: int
    onnx: Path
    plan: Path | None
    input_shape: tuple[int, ...]  # per-sample shape fed to this segment
    feature_shape: tuple[int, ...] | None  # per-sample features passed on (None for the final segment)
    temperature: float
    threshold: float  # the default policy's confidence threshold at this exit
    mflops: float
    params: int
    val_top1: float
    raw: dict


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path  # the resolved version directory
    manifest: dict
    exits: tuple[ExitInfo, ...]
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def version(self) -> str:
        return self.path.name

    @property
    def precision(self) -> str:
        """"int8" for a model exported with --int8 (its manifest's quantization block), else "fp32"."""
        return str(self.manifest.get("quantization", {}).get("precision", "fp32"))

    @property
    def policy_score(self) -> str:
        """What the calibrated policy's thresholds are compared with (server/policy.py's POLICY_SCORES); manifests
        written before export chose between scores have none: the top-1 probability."""
        return str(self.manifest.get("policy", {}).get("score", "top1"))


REQUIRED_TOP = ("schema_version", "name", "architecture", "classes", "input", "exits", "policy")
REQUIRED_EXIT = ("index", "layer", "onnx", "sha256", "input_shape", "temperature", "mflops", "params", "val_top1")


def load_manifest(model_dir: str | Path, verify_checksums: bool = True) -> ModelInfo:
    """Read and validate `<model_dir>/manifest.json` and the files it names: every field the server reads has
    its type and range checked (server/manifest_fields.py)."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST
    if not path.is_file():
        raise RepositoryError(f"{path}: no manifest (is {model_dir} a model exported by python -m export?)")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RepositoryError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(m, dict):
        raise RepositoryError(f"{path}: the manifest must be a JSON object")
    if missing := [k for k in REQUIRED_TOP if k not in m]:
        raise RepositoryError(f"{path}: missing keys {missing}")
    if m["schema_version"] != SCHEMA_VERSION:
        raise RepositoryError(
            f"{path}: schema version {m['schema_version']!r} unknown; this server reads version {SCHEMA_VERSION}"
        )
    f = Fields(path)
    f.text("name", m["name"])
    f.text("architecture", m["architecture"])
    thresholds = _check_policy(f, m["policy"])
    shape, mean, std = _check_input(f, m["input"])
    if "training" in m:
        f.obj("training", m["training"])
    exits_raw = m["exits"]
    if not isinstance(exits_raw, list) or not exits_raw:
        raise f.fail("exits", "a non-empty list", exits_raw)
    exits = []
    prev_features = shape
    for i, e in enumerate(exits_raw):
        info = _check_exit(f, model_dir, i, e, last=i == len(exits_raw) - 1, verify_checksums=verify_checksums)
        if info.input_shape != tuple(prev_features):
            raise RepositoryError(f"{info.onnx}: segment {i} takes {info.input_shape} but segment {i - 1} "
                                  f"produces {tuple(prev_features)}: the segments do not chain")
        exits.append(replace(info, threshold=thresholds[i] if i < len(thresholds) else 1.0))
        prev_features = info.feature_shape
    if "quantization" in m:
        quantization = m["quantization"]
        if not (isinstance(quantization, dict) and quantization.get("precision") == "int8"):
            raise RepositoryError(f"{path}: 'quantization' must be an object with precision \"int8\" (export --int8 "
                                  f"writes it); got {str(quantization)[:80]}")
        measured = f.obj("quantization.measured_on", quantization.get("measured_on", {}))
        instructions = measured.get("cpu_int8_instructions", [])
        if not (isinstance(instructions, list) and all(isinstance(x, str) for x in instructions)):
            raise f.fail("quantization.measured_on.cpu_int8_instructions", "a list of strings", instructions)
    classes = m["classes"]
    if not (isinstance(classes, list) and all(isinstance(c, str) and c for c in classes)):
        raise f.fail("classes", "a list of non-empty strings", classes)
    if len(classes) < 2:
        raise RepositoryError(f"{path}: needs at least two classes, has {len(classes)}")
    return ModelInfo(m["name"], model_dir.resolve(), m, tuple(exits), tuple(classes), shape, mean, std)


def _check_input(f: Fields, inp) -> tuple[tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    """The input block: float32 NCHW, (C, H, W), a mean and a positive std per channel."""
    inp = f.obj("input", inp)
    if inp.get("layout") != "NCHW" or inp.get("dtype") != "float32":
        raise RepositoryError(f"{f.path}: input must be float32 NCHW with a (C, H, W) shape; got {str(inp)[:120]}")
    shape = f.shape("input.shape", inp.get("shape"), rank=3)
    norm = f.obj("input.normalization", inp.get("normalization", {}))
    mean = f.numbers("input.normalization.mean", norm.get("mean"), length=shape[0])
    std = f.numbers("input.normalization.std", norm.get("std"), length=shape[0], positive=True)
    return shape, tuple(mean), tuple(std)


def _check_exit(f: Fields, model_dir: Path, i: int, e, last: bool, verify_checksums: bool) -> ExitInfo:
    """One exit's entry and the files it names (its threshold is set by the caller, from the policy)."""
    where = f"exits[{i}]"
    e = f.obj(where, e)
    if missing := [k for k in REQUIRED_EXIT if k not in e]:
        raise RepositoryError(f"{f.path}: exit {i} lacks keys {missing}")
    if f.integer(f"{where}.index", e["index"]) != i:
        raise RepositoryError(f"{f.path}: exit {i} has index {e['index']}; exits must be listed shallow to deep")
    onnx = f.file_in(f"{where}.onnx", e["onnx"], model_dir)
    if not onnx.is_file():
        raise RepositoryError(f"{onnx}: segment file named by the manifest is missing")
    digest = f.text(f"{where}.sha256", e["sha256"])
    if verify_checksums and sha256_file(onnx) != digest:
        raise RepositoryError(f"{onnx}: checksum mismatch (sha256 {sha256_file(onnx)[:12]}..., manifest says "
                              f"{digest[:12]}...): the file was modified or corrupted")
    plan = None
    if e.get("plan") not in (None, ""):
        plan = f.file_in(f"{where}.plan", e["plan"], model_dir)
        if not plan.is_file():
            raise RepositoryError(f"{plan}: TensorRT plan named by the manifest is missing")
    feature = None
    if not last:
        if not e.get("feature_shape"):
            raise RepositoryError(f"{f.path}: exit {i} is not final but records no feature_shape")
        feature = f.shape(f"{where}.feature_shape", e["feature_shape"])
        if e.get("agreement") is not None:
            agreement_table(f, f"{where}.agreement", e["agreement"])
    if e.get("memory") is not None:
        _check_memory(f, where, e["memory"], onnx, feature)
    return ExitInfo(i, f.integer(f"{where}.layer", e["layer"], low=0), onnx, plan,
                    f.shape(f"{where}.input_shape", e["input_shape"]), feature,
                    f.number(f"{where}.temperature", e["temperature"], positive=True), 1.0,
                    f.number(f"{where}.mflops", e["mflops"], low=0.0), f.integer(f"{where}.params", e["params"], low=0),
                    f.number(f"{where}.val_top1", e["val_top1"], low=0.0, high=1.0), e)


def _check_memory(f: Fields, where: str, memory, onnx: Path, feature: tuple[int, ...] | None) -> None:
    """Export's memory figures (export/memory.py), which a load while serving is checked against: figures that the
    file itself contradicts would let a load through that does not fit (an upload's manifest is the client's)."""
    memory = f.obj(f"{where}.memory", memory)
    weights = f.integer(f"{where}.memory.weight_bytes", memory.get("weight_bytes"), low=0)
    activations = f.integer(f"{where}.memory.activation_bytes_per_image", memory.get("activation_bytes_per_image"), low=0)
    size = onnx.stat().st_size
    if not size // 2 <= weights <= size:  # the initializers are most of a segment's file, and within it
        raise f.fail(f"{where}.memory.weight_bytes", f"between half and all of {onnx.name}'s {size} bytes", weights)
    handed_on = 4 * math.prod(feature) if feature else 0  # float32 features, alive at the segment's end
    if activations < handed_on:
        raise f.fail(f"{where}.memory.activation_bytes_per_image", f"at least the {handed_on} bytes of the features "
                     "it hands on", activations)


def _check_policy(f: Fields, policy) -> list[float]:
    """The parts of the manifest's policy the server reads: the score its thresholds are compared with, the
    thresholds, and the figures GetModelInfo reports. Returns the thresholds."""
    policy = f.obj("policy", policy)
    score = policy.get("score", "top1")
    if not isinstance(score, str) or score not in POLICY_SCORES:
        raise RepositoryError(f"{f.path}: policy score {score!r} is not one this server knows "
                              f"({'; '.join(f'{k!r}: {v}' for k, v in POLICY_SCORES.items())})")
    thresholds = policy.get("thresholds", [])
    if not isinstance(thresholds, list):
        raise f.fail("policy.thresholds", "a list of numbers", thresholds)
    for key in ("val_accuracy", "mean_mflops"):
        if key in policy:
            f.number(f"policy.{key}", policy[key], low=0.0)
    return f.numbers("policy.thresholds", thresholds)


def list_models(repo: str | Path) -> list[Path]:
    """Model directories (or links to them) directly under `repo` that hold a manifest."""
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist or is not a directory")
    return sorted(p for p in repo.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file())
