"""INT8 exits for CPU serving (`python -m export all --int8`): ONNX Runtime static quantization of every
segment, its activation ranges measured on the validation split, and the model calibrated anew on what the
quantized chain outputs.

Why static QDQ with uint8 activations and per-channel int8 weights: measured on the default AuxNet-56-5 on a
2-core AMD EPYC with AVX-512 VNNI (bench/RESULTS.md §20), the quantized chain ran 1.76-2.07x the float one at
batch 32 and 2.0x at batch 1, with every exit's validation top-1 within 0.4 pp; uint8 x int8 is what VNNI's
dot product takes natively (int8 activations ran ~10% slower in a prototype). Activation ranges are MinMax
over the calibration images, widened outward to 7 significant bits. Why: the float chain that measures them
runs on this CPU's kernels, whose last bits differ between CPUs; exported on an AVX2 CPU and on an AVX-512 one,
the same checkpoint gave int8 files whose activation scales differed by ~3e-7 relative (bench/RESULTS.md §27).
A range end rounded to a 2^-7 relative grid lands on the same grid point unless it lies within such a
difference of a grid boundary (from the differences measured between those two CPUs: 0.002 expected crossings
over the default chain), so the same checkpoint now gives the same files on almost any CPU; widening a range by
at most 0.8% costs about 0.01 bit of activation resolution.

Each segment is quantized on its own: its input and outputs stay float32, so the repository's contract
(features handed from one segment to the next, logits out) is unchanged, and the server runs the files as it
runs float ones. Each segment's ranges come from the features the float chain before it produces.

A CPU without VNNI (AVX2 only) multiplies uint8 x int8 with vpmaddubsw, which adds two products in a
saturating 16-bit sum: 255 x 127 x 2 overflows it, so such a CPU answers differently from the one the export
measured (on the default model, 1.9 pp lower top-1 at the final exit on an AVX2-only EPYC: bench/RESULTS.md
§24). The manifest records the int8 instructions of the CPU that measured the accuracy and the server warns on
a CPU without them. So the weights are quantized to 7 bits by default ([-64, 63], ONNX Runtime's `reduce_range`,
which its documentation recommends for non-VNNI CPUs): 255 x 64 x 2 fits in 16 bits, no sum saturates and every
x86 CPU computes the same integers, for one bit of weight precision (measured: every exit within 0.3 pp of float
on test, on an AVX2-only CPU; the same files gave the same test accuracy at every exit on a VNNI + AMX CPU, at the
speed of 8-bit weights there, §24). `--int8-full-range` keeps 8-bit weights, for fleets that all have VNNI. The CUDA
provider runs QDQ graphs with float kernels between quantize/dequantize pairs, so an --int8 model is for CPUs
(the server warns there too: server/precision.py).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from server.precision import cpu_int8_instructions

CALIBRATION_IMAGES = 512  # validation images whose activations set the ranges (the calibrator keeps them all)
BATCH = 64
RANGE_BITS = 7  # significant bits kept of each activation range's ends (module docstring)
MAX_DROP_PP = 1.0  # an exit that loses more validation top-1 than this to int8 is refused by default
SETTINGS = {"format": "QDQ (ONNX Runtime static quantization)", "activations": "uint8, asymmetric, per tensor",
            "weights": "int8, symmetric, per output channel",
            "ranges": "MinMax over the calibration images, widened outward to 7 significant bits"}
REDUCED_WEIGHTS = "int8 in a 7-bit range [-64, 63] (reduce_range: no 16-bit saturation without VNNI), symmetric, per output channel"


class QuantizationError(RuntimeError):
    pass


def cpu_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol over one array of segment inputs."""

    def __init__(self, x: np.ndarray):
        self._it = iter([{"input": x[i:i + BATCH]} for i in range(0, len(x), BATCH)])

    def get_next(self):
        return next(self._it, None)


def quantize_chain(paths: list[Path], images: np.ndarray, reduce_range: bool = True) -> None:
    """Replace each float segment in `paths` (in chain order) by its int8 version, in place. Segment k's
    activation ranges are measured on what the float segments before it make of `images`. `reduce_range`:
    7-bit weights (module docstring)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    feed = np.ascontiguousarray(images, dtype=np.float32)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # per-channel axis notes on BatchNormalization's 1-D scales
    try:
        for k, path in enumerate(paths):
            outputs = cpu_session(path).run(None, {"input": feed})
            with tempfile.TemporaryDirectory(prefix="auxnet-int8-") as tmp:
                prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
                # Shape inference and the graph's own folding (BN into the convolution before it) first, as
                # ONNX Runtime's documentation asks, so ranges are measured on the graph that is quantized.
                quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
                try:
                    ranges = activation_ranges(prepared, feed, Path(tmp) / "augmented.onnx")
                    # The ranges go in as overrides of every calibrated tensor (given unwidened, they reproduce
                    # quantize_static's own files byte for byte); its own calibration then sees one batch only.
                    quantize_static(str(prepared), str(quantized), _Batches(feed[:BATCH]), quant_format=QuantFormat.QDQ,
                                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    calibrate_method=CalibrationMethod.MinMax, reduce_range=reduce_range,
                                    extra_options={"TensorQuantOverrides": ranges})
                except Exception as e:  # noqa: BLE001 - name the segment; ONNX Runtime's own message follows
                    raise QuantizationError(f"quantizing {path.name} (segment {k}) failed: {type(e).__name__}: {e}") from e
                os.replace(quantized, path)
            feed = outputs[0] if len(outputs) == 2 else None
    finally:
        logging.getLogger().setLevel(quiet)


def activation_ranges(model: Path, feed: np.ndarray, augmented: Path) -> dict[str, list[dict]]:
    """MinMax of every tensor ONNX Runtime calibrates in `model` over `feed`, each range widened to
    RANGE_BITS significant bits, as quantize_static's TensorQuantOverrides."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(model, None, augmented_model_path=str(augmented), calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(_Batches(feed))
    ranges = {}
    for name, data in calibrator.compute_data().items():
        lowest, highest = (float(np.asarray(v).reshape(-1)[0]) for v in data.range_value)
        ranges[name] = [{"rmin": np.float32(widened(lowest, math.floor)), "rmax": np.float32(widened(highest, math.ceil))}]
    return ranges


def widened(value: float, rounding, bits: int = RANGE_BITS) -> float:
    """`value` rounded (math.floor: down, math.ceil: up) to `bits` significant bits; exact in float32."""
    if value == 0.0 or not math.isfinite(value):
        return value
    quantum = math.ldexp(1.0, math.frexp(value)[1] - bits)  # |value| lies in [2^(e-1), 2^e)
    return rounding(value / quantum) * quantum


def chain_logits(paths: list[Path], batches) -> tuple[list[np.ndarray], np.ndarray]:
    """Logits of every exit of the ONNX chain over (x, y) torch batches, and the labels: what the server's
    files answer, to calibrate the quantized model on."""
    sessions = [cpu_session(p) for p in paths]
    outs, ys = [[] for _ in paths], []
    for x, y in batches:
        feed = x.numpy()
        for k, s in enumerate(sessions):
            out = s.run(None, {"input": feed})
            outs[k].append(out[-1])
            feed = out[0]
        ys.append(y.numpy())
    return [np.concatenate(o).astype(np.float64) for o in outs], np.concatenate(ys)


def report(float_logits: list[np.ndarray], int8_logits: list[np.ndarray], labels: np.ndarray, n_calibration: int,
           max_drop_pp: float, reduce_range: bool = True) -> dict:
    """The manifest's `quantization` block; refuses a model whose int8 exit loses more than `max_drop_pp`
    validation top-1 against its float version."""
    import onnxruntime

    rows = []
    for k, (zf, zq) in enumerate(zip(float_logits, int8_logits)):
        pf, pq = zf.argmax(1), zq.argmax(1)
        rows.append({"exit": k, "float_val_top1": round(float((pf == labels).mean()), 5),
                     "int8_val_top1": round(float((pq == labels).mean()), 5),
                     "top1_agreement": round(float((pf == pq).mean()), 5)})
    worst = max(rows, key=lambda r: r["float_val_top1"] - r["int8_val_top1"])
    drop_pp = 100 * (worst["float_val_top1"] - worst["int8_val_top1"])
    if drop_pp > max_drop_pp + 1e-9:  # 100 * (1.0 - 0.98) is 2.0000000000000018
        raise QuantizationError(
            f"int8 exit {worst['exit']} reaches {100 * worst['int8_val_top1']:.2f}% validation top-1 against "
            f"{100 * worst['float_val_top1']:.2f}% in float ({drop_pp:.2f} pp lost > --int8-max-drop-pp {max_drop_pp:g}); "
            "nothing was published: export it in float, or allow a larger drop")
    settings = {**SETTINGS, "weights": REDUCED_WEIGHTS} if reduce_range else SETTINGS
    return {"precision": "int8", **settings, "reduce_range": reduce_range, "calibration_images": n_calibration,
            "calibration_split": "validation (the images the temperatures and thresholds are also fitted on)",
            "per_exit": rows, "max_drop_pp": max_drop_pp,
            "parity": "each exit's parity_max_abs_diff is the float export's against torch, checked before quantizing",
            "measured_on": {"cpu_int8_instructions": cpu_int8_instructions(), "machine": platform.machine(),
                            "onnxruntime": onnxruntime.__version__}}
