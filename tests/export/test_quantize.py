"""`python -m export all --int8`: every segment quantized, calibrated on what the quantized chain answers,
refused when int8 costs an exit too much accuracy, and served as any model is."""

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export import quantize
from export.__main__ import main as export_main
from export.build import export_model, model_from_checkpoint, validation_logits
from export.calibration import fit_temperature
from export.check import check_model
from server.repository import load_manifest
from tests.server.conftest import running_server
from tests.server.helpers import images, png
from training.checkpoint import load_checkpoint
from training.data.batches import iterate


@pytest.fixture(scope="module")
def int8_repo(tiny_run, tmp_path_factory):
    repo = tmp_path_factory.mktemp("int8")
    export_model(str(tiny_run), str(repo), int8=True, measure=False, log=lambda *a: None)
    return repo


def only_model(repo):
    (model_dir,) = [p for p in repo.iterdir() if not p.name.startswith(".")]
    return model_dir


def test_every_segment_is_quantized_with_float_input_and_outputs(int8_repo, tiny_repo):
    model_dir = only_model(int8_repo)
    assert model_dir.name.endswith("-int8")
    info, float_info = load_manifest(model_dir), load_manifest(tiny_repo / "tiny")
    for e, f in zip(info.exits, float_info.exits):
        g = onnx.load(str(e.onnx)).graph
        ops = [n.op_type for n in g.node]
        convs = ops.count("Conv")
        assert convs > 0 and ops.count("QuantizeLinear") > 0
        weights = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        # Every convolution's weight arrives through a DequantizeLinear of an int8 initializer (per channel).
        dq = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
        for conv in (n for n in g.node if n.op_type == "Conv"):
            src = dq[conv.input[1]]
            assert weights[src.input[0]].dtype == np.int8
            assert weights[src.input[1]].shape == (weights[src.input[0]].shape[0],)  # one scale per out channel
        # The contract with the server is unchanged: float32 in, float32 features and logits out.
        assert [i.type.tensor_type.elem_type for i in g.input] == [onnx.TensorProto.FLOAT]
        assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in g.output)
        assert e.input_shape == f.input_shape and e.feature_shape == f.feature_shape
        assert e.onnx.stat().st_size < f.onnx.stat().st_size


def test_calibration_is_fitted_on_the_quantized_chain(int8_repo, tiny_run):
    model_dir = only_model(int8_repo)
    info = load_manifest(model_dir)
    ckpt = load_checkpoint(tiny_run)
    float_logits, labels, splits = validation_logits(model_from_checkpoint(ckpt, str(tiny_run)), ckpt, None)
    logits, labels2 = quantize.chain_logits([e.onnx for e in info.exits],
                                            iterate(splits.val, splits, 64, False, 0, torch.device("cpu")))
    np.testing.assert_array_equal(labels, labels2)
    block = info.manifest["quantization"]
    assert block["precision"] == "int8" and block["calibration_images"] == min(quantize.CALIBRATION_IMAGES, len(labels))
    for k, e in enumerate(info.exits):
        int8_acc = float((logits[k].argmax(1) == labels).mean())
        float_acc = float((float_logits[k].argmax(1) == labels).mean())
        row = block["per_exit"][k]
        assert row["int8_val_top1"] == pytest.approx(int8_acc, abs=1e-5) == pytest.approx(e.val_top1, abs=1e-5)
        assert row["float_val_top1"] == pytest.approx(float_acc, abs=1e-5)
        assert row["top1_agreement"] == pytest.approx(float((logits[k].argmax(1) == float_logits[k].argmax(1)).mean()), abs=1e-5)
        assert e.temperature == pytest.approx(fit_temperature(logits[k], labels), rel=1e-4)
        # Quantized, not a copy of the float model: the logits move, the answers mostly do not.
        assert np.abs(logits[k] - float_logits[k]).max() > 1e-4
        assert row["top1_agreement"] >= 0.9


def test_report_refuses_an_exit_that_loses_too_much():
    labels = np.arange(100) % 10
    right = np.eye(10)[labels] * 5.0  # (100, 10) logits, every image right
    worse = right.copy()
    worse[:2] = np.eye(10)[(labels[:2] + 1) % 10] * 5.0  # two images wrong at exit 1 only: 2 pp
    with pytest.raises(quantize.QuantizationError,
                       match=r"int8 exit 1 reaches 98.00% validation top-1 against 100.00% in float \(2.00 pp lost > "
                             r"--int8-max-drop-pp 1\)"):
        quantize.report([right, right], [right, worse], labels, 100, 1.0)
    block = quantize.report([right, right], [right, worse], labels, 100, 2.0)
    assert block["per_exit"][1] == {"exit": 1, "float_val_top1": 1.0, "int8_val_top1": 0.98, "top1_agreement": 0.98}
    assert block["per_exit"][0]["top1_agreement"] == 1.0


def conv_weights(model_dir) -> list[np.ndarray]:
    """Every convolution's int8 weight initializer, over the chain."""
    out = []
    for e in load_manifest(model_dir).exits:
        g = onnx.load(str(e.onnx)).graph
        weights = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        dq = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
        out += [weights[dq[n.input[1]].input[0]] for n in g.node if n.op_type == "Conv"]
    return out


def simulated_logits(model_dir, x: np.ndarray) -> list[np.ndarray]:
    """The chain's logits with ONNX Runtime's graph optimisations off: QuantizeLinear / DequantizeLinear run as
    written and every convolution in float on the dequantized values, so no integer kernel's 16-bit sums can
    saturate: what the quantized model means, on any CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    out, feed = [], x
    for e in load_manifest(model_dir).exits:
        outputs = ort.InferenceSession(str(e.onnx), opts, providers=["CPUExecutionProvider"]).run(None, {"input": feed})
        out.append(outputs[-1])
        feed = outputs[0]  # the features (the final segment's first output is its logits, and nothing follows)
    return out


def test_weights_take_seven_bits_by_default_and_answer_as_simulated(tiny_run, int8_repo, tmp_path):
    model_dir = only_model(int8_repo)
    block = load_manifest(model_dir).manifest["quantization"]
    assert block["reduce_range"] is True and block["weights"] == quantize.REDUCED_WEIGHTS
    reduced = conv_weights(model_dir)
    assert all(w.min() >= -64 and w.max() <= 64 for w in reduced) and max(int(np.abs(w).max()) for w in reduced) >= 63
    assert export_main(["all", "--int8", "--int8-full-range", "--checkpoint", str(tiny_run), "--out", str(tmp_path),
                        "--name", "full", "--no-measure"]) == 0
    full = load_manifest(tmp_path / "full").manifest["quantization"]
    assert full["reduce_range"] is False and full["weights"] == quantize.SETTINGS["weights"]
    assert max(int(np.abs(w).max()) for w in conv_weights(tmp_path / "full")) == 127  # the ends of int8
    # No saturation: the optimised integer kernels answer what the quantized graph means, on this CPU whatever
    # its instructions (full-range weights would not, on a CPU without VNNI: bench/RESULTS.md §24).
    x = np.stack([img.transpose(2, 0, 1) / 255.0 for img in images(16, seed=5)]).astype(np.float32)
    logits, _ = quantize.chain_logits([e.onnx for e in load_manifest(model_dir).exits], [(torch.from_numpy(x), torch.zeros(16))])
    # Measured on an AVX2-only EPYC: 0 and 1.2% of the logits' scale (requantisation rounding); the same model
    # with full-range weights 6.6 and 6.2%.
    for served, meant in zip(logits, simulated_logits(model_dir, x)):
        assert np.abs(served - meant).max() <= 0.03 * max(1.0, float(np.abs(meant).max()))


def test_bad_requests_are_refused_before_any_work(tiny_run, tmp_path, capsys):
    assert export_main(["all", "--int8", "--trt", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "r")]) == 2
    assert "--int8 makes ONNX Runtime models for CPUs; --trt builds TensorRT's own engines" in capsys.readouterr().err
    assert export_main(["all", "--int8", "--int8-max-drop-pp", "-1", "--checkpoint", str(tiny_run),
                        "--out", str(tmp_path / "r")]) == 2
    assert "--int8-max-drop-pp -1.0 must be a percentage-point drop in [0, 100]" in capsys.readouterr().err
    assert export_main(["all", "--int8-full-range", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "r")]) == 2
    assert "--int8-full-range chooses how --int8 quantizes the weights: add --int8" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_check_rebuilds_the_int8_files_byte_for_byte(int8_repo, tiny_run):
    said = []
    assert check_model(str(only_model(int8_repo)), str(tiny_run), log=said.append, rebuild=True) == []
    assert any("all 2 segment files byte-identical" in line for line in said)


def test_check_accepts_the_int8_model_and_says_why_parity_is_not_checked(int8_repo, tiny_run):
    model_dir = only_model(int8_repo)
    lines = []
    assert check_model(str(model_dir), str(tiny_run), log=lines.append) == []
    assert any("int8" in line and "quantization" in line for line in lines)


def test_server_answers_from_the_int8_files(int8_repo):
    from server.client import Client

    model_dir = only_model(int8_repo)
    info = load_manifest(model_dir)
    imgs = images(4, seed=40)
    x = np.stack(imgs).astype(np.float32) / 255
    x = ((x - np.array(info.mean, np.float32)) / np.array(info.std, np.float32)).transpose(0, 3, 1, 2).copy()
    logits, _ = quantize.chain_logits([e.onnx for e in info.exits], [(torch.from_numpy(x), torch.zeros(4))])
    with running_server(int8_repo) as (app, target), Client(target) as c:
        assert c.model_info(info.name).precision == "int8"
        from server.v2.model import triton_config

        assert triton_config(app.engines[info.name])["parameters"]["precision"] == {"string_value": "int8"}
        series = [s for m in app.metrics.registry.collect() if m.name == "auxnet_model_info" for s in m.samples]
        assert [(s.labels["model"], s.labels["precision"], s.value) for s in series] == [(info.name, "int8", 1.0)]
        for i, im in enumerate(imgs):
            r = c.classify(png(im), model=info.name)  # no budget, no threshold: the final exit
            assert r.exit_index == len(info.exits) - 1 and r.label == int(logits[-1][i].argmax())


def test_the_embedded_int8_model_is_whole_and_within_its_promise():
    from pathlib import Path

    model_dir = Path(__file__).resolve().parents[2] / "models" / "repository-int8" / "auxnet56_5-cifar10-int8"
    info = load_manifest(model_dir)  # checksums of every file included
    block = info.manifest["quantization"]
    assert info.precision == "int8" and [e.layer for e in info.exits] == [15, 25, 35, 45, 56]
    for row, e in zip(block["per_exit"], info.exits):
        assert row["float_val_top1"] - row["int8_val_top1"] <= block["max_drop_pp"] / 100 + 1e-9
        assert row["int8_val_top1"] == e.val_top1
    assert info.manifest["calibration"]["images"] == 5000


def test_export_exit_k_quantizes_and_reports_only_the_served_segments(tiny_run, tmp_path):
    assert export_main(["exit", "0", "--int8", "--checkpoint", str(tiny_run), "--out", str(tmp_path), "--name", "e0",
                        "--no-measure"]) == 0
    info = load_manifest(tmp_path / "e0")
    assert len(info.exits) == 1 and not (tmp_path / "e0" / "exit_1.onnx").exists()
    assert [r["exit"] for r in info.manifest["quantization"]["per_exit"]] == [0]
    assert info.manifest["quantization"]["per_exit"][0]["int8_val_top1"] == info.exits[0].val_top1


def test_a_malformed_quantization_block_is_refused_by_name(int8_repo, tmp_path):
    import json
    import shutil

    from server.repository import RepositoryError

    model_dir = only_model(int8_repo)
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    m = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**m, "quantization": {**m["quantization"], "precision": "int4"}}))
    with pytest.raises(RepositoryError, match="'quantization' must be an object with precision \"int8\".*'int4'"):
        load_manifest(copy)


def test_widened_keeps_seven_significant_bits_and_only_grows_the_range():
    assert quantize.widened(1.0, math.ceil) == 1.0  # already on the grid
    assert quantize.widened(1.0 + 2**-10, math.ceil) == 1.0 + 2**-6  # [1, 2): a step of 2^-6
    assert quantize.widened(1.0 + 2**-10, math.floor) == 1.0
    assert quantize.widened(-3.3, math.floor) == -3.3125  # [-4, -2): steps of 2^-5; -105.6 steps -> -106
    assert quantize.widened(0.02, math.ceil) == 0.02001953125  # [2^-6, 2^-5): steps of 2^-12; 81.92 -> 82
    assert quantize.widened(0.0, math.floor) == 0.0
    for v in np.random.default_rng(0).standard_normal(200) * 10.0 ** np.random.default_rng(1).integers(-4, 4, 200):
        lo, hi = quantize.widened(float(v), math.floor), quantize.widened(float(v), math.ceil)
        assert lo <= v <= hi and hi - lo <= abs(v) * 2**-6 and float(np.float32(hi)) == hi


def _quantized_files(float_dir, images: np.ndarray, out) -> list[bytes]:
    out.mkdir()
    paths = []
    for e in load_manifest(float_dir).exits:
        paths.append(out / e.onnx.name)
        paths[-1].write_bytes(e.onnx.read_bytes())
    quantize.quantize_chain(paths, images)
    return [p.read_bytes() for p in paths]


def test_int8_files_do_not_move_with_last_bit_differences_in_the_measured_activations(tiny_repo, tmp_path, monkeypatch):
    """Another CPU's float kernels measure each activation range a few ulps apart (RESULTS §27); images scaled
    by 1 - 2^-20 do the same here (every activation moves by about 1e-6 relative; the pixels stay within [0, 1],
    whose ends are grid points: 1 + 2^-20 would move the input's own range, which no CPU computes). With ranges
    widened to 7 bits the files stay the same; measured as they are, they moved."""
    x = np.stack([img.transpose(2, 0, 1) / 255.0 for img in images(64, seed=9)]).astype(np.float32)
    nudged = (x * np.float32(1 - 2**-20)).astype(np.float32)
    assert not np.array_equal(x, nudged)
    assert _quantized_files(tiny_repo / "tiny", x, tmp_path / "a") == _quantized_files(tiny_repo / "tiny", nudged, tmp_path / "b")
    monkeypatch.setattr(quantize, "widened", lambda value, rounding: value)  # ranges as measured, the old way
    measured = _quantized_files(tiny_repo / "tiny", x, tmp_path / "c")
    assert measured != _quantized_files(tiny_repo / "tiny", nudged, tmp_path / "d")
    # Handed over as overrides, the measured ranges give exactly the file quantize_static makes on its own.
    assert measured[0] == _quantize_static_alone(load_manifest(tiny_repo / "tiny").exits[0].onnx, x, tmp_path / "e")


def _quantize_static_alone(float_onnx, x: np.ndarray, tmp) -> bytes:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp.mkdir()
    quant_pre_process(str(float_onnx), str(tmp / "prepared.onnx"), skip_symbolic_shape=True)
    quantize_static(str(tmp / "prepared.onnx"), str(tmp / "int8.onnx"), quantize._Batches(x), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, reduce_range=True)
    return (tmp / "int8.onnx").read_bytes()
