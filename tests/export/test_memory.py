"""export/memory.py: weights and activations per image of a segment, the figures the server checks a load against."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.check import check_model
from export.memory import MemoryEstimateError, peak_live_bytes, session_memory

IMAGE = [2, 4, 4]  # 32 floats: 128 bytes an image


def save(tmp_path, nodes, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *IMAGE])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              list(initializers))
    path = tmp_path / "segment.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_peak_of_tensors_alive_at_once_by_hand(tmp_path):
    # a = relu(x); b = relu(a); c = a + b; d = relu(c); out = d + c: a lives until c is made, c until out.
    nodes = [helper.make_node("Relu", ["input"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("Add", ["d", "c"], ["out"])]
    weights = numpy_helper.from_array(np.ones((3, 3), np.float32), "unused_weight")
    got = session_memory(save(tmp_path, nodes, ["out"], [weights]))
    # at Add (a, b, c alive) 3 x 128; at the last Add (c, d, out) 3 x 128; the input is the caller's
    assert got == {"weight_bytes": 36, "activation_bytes_per_image": 3 * 128}


def test_graph_outputs_are_kept_to_the_end(tmp_path):
    # features = relu(x) is an output read again: it stays alive beside every later tensor
    nodes = [helper.make_node("Relu", ["input"], ["features"]), helper.make_node("Relu", ["features"], ["t1"]),
             helper.make_node("Relu", ["t1"], ["t2"]), helper.make_node("Relu", ["t2"], ["logits"])]
    assert session_memory(save(tmp_path, nodes, ["features", "logits"]))["activation_bytes_per_image"] == 3 * 128


def test_a_quantized_graph_is_walked_as_the_float_graph_it_came_from(tmp_path):
    """Measured, an int8 chain's arenas are as large as the float one's (RESULTS §61): QuantizeLinear and
    DequantizeLinear outputs are names of the float tensor they carry, not tensors of their own."""
    scale, zero = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(128), "z")
    float_nodes = [helper.make_node("Relu", ["input"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                   helper.make_node("Add", ["a", "b"], ["out"])]
    qdq_nodes = [helper.make_node("Relu", ["input"], ["a"]),
                 helper.make_node("QuantizeLinear", ["a", "s", "z"], ["a_q"]),
                 helper.make_node("DequantizeLinear", ["a_q", "s", "z"], ["a_dq"]),
                 helper.make_node("Relu", ["a_dq"], ["b"]), helper.make_node("Add", ["a_dq", "b"], ["out"])]
    (tmp_path / "f").mkdir()
    (tmp_path / "q").mkdir()
    floats = session_memory(save(tmp_path / "f", float_nodes, ["out"]))
    quantized = session_memory(save(tmp_path / "q", qdq_nodes, ["out"], [scale, zero]))
    assert quantized["activation_bytes_per_image"] == floats["activation_bytes_per_image"] == 3 * 128
    assert quantized["weight_bytes"] == 5  # a float32 scale and a uint8 zero point


def test_a_tensor_without_a_size_is_an_error_not_a_guess():
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["a"])], "g", [], [])
    with pytest.raises(MemoryEstimateError, match=r"shape inference left 1 tensors without a size, e\.g\. \['a'\]"):
        peak_live_bytes(graph, {})


def test_a_graph_shape_inference_cannot_follow_is_refused_and_leaves_no_files(tmp_path, monkeypatch):
    """ONNX Runtime's inference saves the model it gave up on into the working directory: not into the user's."""
    nodes = [helper.make_node("Mystery", ["input"], ["a"], domain="example.ops"), helper.make_node("Relu", ["a"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *IMAGE])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.ops", 1)])
    onnx.save(model, str(tmp_path / "segment.onnx"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(MemoryEstimateError, match="ONNX Runtime's shape inference failed: .*Incomplete symbolic shape inference"):
        session_memory(tmp_path / "segment.onnx")
    assert list(work.iterdir()) == [] and Path.cwd() == work


def test_export_records_the_figures_and_check_verifies_them(tiny_repo, tmp_path):
    import shutil

    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_repo / "tiny", model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for e in manifest["exits"]:
        assert e["memory"] == session_memory(model_dir / e["onnx"])
        if e["feature_shape"]:  # the features handed on are alive at the end, beside what made them
            assert e["memory"]["activation_bytes_per_image"] > 4 * int(np.prod(e["feature_shape"]))
        file_bytes = (model_dir / e["onnx"]).stat().st_size  # weights are most of the file
        assert 0.9 * file_bytes < e["memory"]["weight_bytes"] < file_bytes
    assert check_model(str(model_dir), log=lambda *a: None) == []
    manifest["exits"][1]["memory"]["activation_bytes_per_image"] //= 2  # a figure that would let a load through
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (problem,) = check_model(str(model_dir), log=lambda *a: None)
    assert problem.startswith(f"{model_dir / 'exit_1.onnx'}: the manifest's memory figures ") and "differ from the file's" in problem
