"""A hostile or damaged manifest: every field the server reads, replaced by values of the wrong type or range,
is refused at load with a RepositoryError that names the manifest, never another exception (a TypeError at
start-up is a traceback; at request time a broken GetModelInfo). What loads must also serve: the monitor's
tables, the precision check and GetModelInfo's answer (service.py's own function) are built from it here."""

import copy
import json
import shutil

import pytest

from server.monitor import monitors_from_manifest
from server.precision import precision_warnings
from server.repository import RepositoryError, load_manifest
from server.service import model_info_message

BAD_VALUES = [None, "x", -1, 0, 2.5, True, [], {}, [1, "a"], [-3, 0, 2], {"a": 1}, "../exit_0.onnx", float("nan")]
# Where the server reads a manifest (top level, input, policy, one auxiliary exit, the final exit, int8 block).
FIELDS = [
    ("name",), ("architecture",), ("classes",), ("input",), ("input", "shape"), ("input", "layout"),
    ("input", "normalization"), ("input", "normalization", "mean"), ("input", "normalization", "std"),
    ("exits",), ("policy",), ("policy", "thresholds"), ("policy", "score"), ("policy", "val_accuracy"),
    ("policy", "mean_mflops"), ("training",), ("quantization",),
    *[("exits", k, f) for k in (0, -1) for f in ("index", "layer", "onnx", "sha256", "input_shape", "temperature",
                                                  "mflops", "params", "val_top1", "plan")],
    ("exits", 0, "feature_shape"),  # the final exit's is not read
    ("exits", 0, "agreement"), ("exits", 0, "agreement", "bin_edges"), ("exits", 0, "agreement", "agreement"),
    *[("exits", k, "memory", *f) for k in (0, -1) for f in ((), ("weight_bytes",), ("activation_bytes_per_image",))],
]


def mutated(m: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(m)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def served_fields(info) -> None:
    """What the server builds from a loaded manifest besides the engine's sessions."""
    monitors_from_manifest(info.manifest["exits"], 10_000)
    precision_warnings(info, "cpu", cpu_instructions=[])
    n = len(info.exits)
    model_info_message(info, [e.threshold for e in info.exits], [0.5] * n, [0.1] * n, "onnxruntime", 32)


@pytest.fixture(scope="module")
def model_copy(tiny_repo, tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz") / "tiny"
    shutil.copytree(tiny_repo / "tiny", d)
    return d, json.loads((d / "manifest.json").read_text())


@pytest.mark.parametrize("path", FIELDS, ids=lambda p: ".".join(map(str, p)))
def test_a_wrong_field_is_refused_by_name_or_served(model_copy, path):
    d, m = model_copy
    served_fields(load_manifest(d))  # the unchanged manifest loads and serves
    refused = 0
    try:
        for value in BAD_VALUES:
            (d / "manifest.json").write_text(json.dumps(mutated(m, path, value)))
            try:
                info = load_manifest(d)
            except RepositoryError as e:
                assert str(d) in str(e), (path, value, str(e))  # names the manifest or the file it names
                refused += 1
                continue
            try:
                served_fields(info)
            except Exception as e:  # noqa: BLE001 - the point: what loads must serve
                pytest.fail(f"{path} = {value!r} loaded but breaks serving: {type(e).__name__}: {e}")
    finally:
        (d / "manifest.json").write_text(json.dumps(m))
    assert refused >= len(BAD_VALUES) // 2, f"{path}: only {refused} of {len(BAD_VALUES)} wrong values refused"
