"""What an ONNX Runtime session of a segment will hold, from its graph: weights, and activations per image.

The server refuses a load that would leave it too little memory (server/load_memory.py). Weights are what the file
holds; what a session holds beyond them is mostly activations, which grow with the batch and the image: per image
a ResNet-50 at 224 px needs 26x the activations of the CIFAR network, with 11x its weights, so no rule from file
sizes fits both. Export records, per exit, the peak bytes of activations alive at once for one image, and the
server multiplies it by its batch cap.

How: the batch dimension fixed at 1, ONNX Runtime's own symbolic shape inference (it follows the Shape/Slice/Concat
arithmetic of a computed Pad, and quantized operators, where onnx's inference leaves sizes unknown) gives every
tensor's size; then the nodes are walked in graph order, each output allocated when its node runs and freed after
its last consumer, the graph's outputs kept to the end (they are handed back), its input not counted (the caller's).
What a session really holds beyond twice its weights was measured at 2.0-3.0x this walk's figure times the batch
(RESULTS §61): the server's factor covers that; the walk is the part that scales with the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class MemoryEstimateError(RuntimeError):
    pass


def session_memory(path: Path) -> dict:
    """{"weight_bytes", "activation_bytes_per_image"} of the segment in `path` (dynamic batch on axis 0)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    weight_bytes = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    for value in model.graph.input:
        batch = value.type.tensor_type.shape.dim[0]
        batch.Clear()
        batch.dim_value = 1
    sizes = _tensor_bytes(_infer_shapes(model), helper)
    return {"weight_bytes": int(weight_bytes), "activation_bytes_per_image": peak_live_bytes(model.graph, sizes)}


def peak_live_bytes(graph, sizes: dict[str, int]) -> int:
    """The largest total of node outputs alive at once, walking `graph`'s nodes in order (see the module's note)."""
    alias = _quantization_aliases(graph)
    root = lambda name: alias.get(name, name)  # noqa: E731
    last_use = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            last_use[root(name)] = i
    kept = {root(o.name) for o in graph.output}
    missing = [o for node in graph.node for o in node.output if o and o not in alias and o not in sizes]
    if missing:
        raise MemoryEstimateError(f"shape inference left {len(missing)} tensors without a size, e.g. {missing[:3]}")
    live, peak = {}, 0
    for i, node in enumerate(graph.node):
        for name in node.output:
            if name and name not in alias:
                live[name] = sizes[name]
        peak = max(peak, sum(live.values()))
        for name in {root(n) for n in [*node.input, *node.output]}:  # free what no later node reads
            if name in live and last_use.get(name, -1) <= i and name not in kept:
                del live[name]
    return int(peak)


def _quantization_aliases(graph) -> dict[str, str]:
    """QuantizeLinear and DequantizeLinear outputs as names of the float tensor they come from. ONNX Runtime fuses
    a quantized (QDQ) graph's pairs into its integer operators, and measured, an int8 chain's arenas are as large as
    the float chain's (RESULTS §61): so an int8 graph is walked as the float graph it was quantized from."""
    alias = {}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
    return alias


def _infer_shapes(model):
    """`model` with every tensor's type and shape, by ONNX Runtime's symbolic shape inference."""
    import os
    import tempfile

    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # Where inference is incomplete it saves the model, with its weights as files of random names, into the working
    # directory before raising: run it in a folder of its own (export and `export check` are single-threaded CLIs).
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="auxnet-shapes-") as scratch:
        os.chdir(scratch)
        try:
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        except Exception as e:  # noqa: BLE001 - its failures are of many types; the message says which file
            raise MemoryEstimateError(f"ONNX Runtime's shape inference failed: {type(e).__name__}: {e}") from e
        finally:
            os.chdir(here)


def _tensor_bytes(model, helper) -> dict[str, int]:
    """Bytes of every tensor whose type and dimensions are all known."""
    sizes = {}
    for value in [*model.graph.value_info, *model.graph.output]:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape") or not all(d.HasField("dim_value") for d in tensor.shape.dim):
            continue
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        sizes[value.name] = int(np.prod([d.dim_value for d in tensor.shape.dim], dtype=np.int64)) * itemsize
    return sizes
