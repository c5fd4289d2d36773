"""The model repository: the only contract between export and server (DESIGN.md).

    <repo>/<name>            a symlink to the current version directory (atomic replacement)
    <repo>/.versions/<name>-<stamp>/manifest.json, exit_<k>.onnx, exit_<k>.plan (optional)

`load_manifest` validates everything the server relies on and names the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from server.policy import POLICY_SCORES

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class RepositoryError(ValueError):
    """A model repository the server must refuse; the message names the file and the problem."""


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
    """Read and validate `<model_dir>/manifest.json` and the files it names."""
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
    _check_policy(path, m["policy"])
    inp = m["input"]
    shape = tuple(inp.get("shape", ()))
    if len(shape) != 3 or inp.get("layout") != "NCHW" or inp.get("dtype") != "float32":
        raise RepositoryError(f"{path}: input must be float32 NCHW with a (C, H, W) shape; got {inp}")
    norm = inp.get("normalization", {})
    mean, std = tuple(norm.get("mean", ())), tuple(norm.get("std", ()))
    if len(mean) != shape[0] or len(std) != shape[0] or any(s <= 0 for s in std):
        raise RepositoryError(f"{path}: normalization mean/std must have {shape[0]} entries, std > 0; got {norm}")
    exits = []
    prev_features = shape
    for i, e in enumerate(m["exits"]):
        if missing := [k for k in REQUIRED_EXIT if k not in e]:
            raise RepositoryError(f"{path}: exit {i} lacks keys {missing}")
        if e["index"] != i:
            raise RepositoryError(f"{path}: exit {i} has index {e['index']}; exits must be listed shallow to deep")
        onnx = model_dir / e["onnx"]
        if not onnx.is_file():
            raise RepositoryError(f"{onnx}: segment file named by the manifest is missing")
        if verify_checksums and sha256_file(onnx) != e["sha256"]:
            raise RepositoryError(f"{onnx}: checksum mismatch (sha256 {sha256_file(onnx)[:12]}..., manifest says "
                                  f"{e['sha256'][:12]}...): the file was modified or corrupted")
        plan = model_dir / e["plan"] if e.get("plan") else None
        if plan is not None and not plan.is_file():
            raise RepositoryError(f"{plan}: TensorRT plan named by the manifest is missing")
        if tuple(e["input_shape"]) != tuple(prev_features):
            raise RepositoryError(f"{onnx}: segment {i} takes {tuple(e['input_shape'])} but segment {i - 1} "
                                  f"produces {tuple(prev_features)}: the segments do not chain")
        final = i == len(m["exits"]) - 1
        feat = None if final else tuple(e.get("feature_shape") or ())
        if not final and not feat:
            raise RepositoryError(f"{path}: exit {i} is not final but records no feature_shape")
        if not (isinstance(e["temperature"], (int, float)) and e["temperature"] > 0):
            raise RepositoryError(f"{path}: exit {i} temperature {e['temperature']!r} must be a positive number")
        thr = m["policy"].get("thresholds", [1.0] * len(m["exits"]))
        exits.append(ExitInfo(i, int(e["layer"]), onnx, plan, tuple(e["input_shape"]), feat, float(e["temperature"]),
                              float(thr[i]) if i < len(thr) else 1.0, float(e["mflops"]), int(e["params"]),
                              float(e["val_top1"]), e))
        prev_features = feat
    if not exits:
        raise RepositoryError(f"{path}: the manifest lists no exits")
    quantization = m.get("quantization")
    if quantization is not None and not (isinstance(quantization, dict) and quantization.get("precision") == "int8"):
        raise RepositoryError(f"{path}: 'quantization' must be an object with precision \"int8\" (export --int8 writes "
                              f"it); got {str(quantization)[:80]}")
    classes = tuple(m["classes"])
    if len(classes) < 2:
        raise RepositoryError(f"{path}: needs at least two classes, has {len(classes)}")
    return ModelInfo(m["name"], model_dir.resolve(), m, tuple(exits), classes, shape, mean, std)


def _check_policy(path: Path, policy) -> None:
    """The parts of the manifest's policy the server reads: its thresholds and the score they are compared with."""
    if not isinstance(policy, dict):
        raise RepositoryError(f"{path}: 'policy' must be an object; got {str(policy)[:80]}")
    if policy.get("score", "top1") not in POLICY_SCORES:
        raise RepositoryError(f"{path}: policy score {policy.get('score')!r} is not one this server knows "
                              f"({'; '.join(f'{k!r}: {v}' for k, v in POLICY_SCORES.items())})")
    thresholds = policy.get("thresholds", [])
    if not (isinstance(thresholds, list) and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in thresholds)):
        raise RepositoryError(f"{path}: policy thresholds must be a list of numbers; got {str(thresholds)[:80]}")


def list_models(repo: str | Path) -> list[Path]:
    """Model directories (or links to them) directly under `repo` that hold a manifest."""
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist or is not a directory")
    return sorted(p for p in repo.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file())
