"""Static-shape segment runs (issue 14): every batch is padded to a power-of-two bucket and run through
IOBinding on buffers allocated once per bucket, so that on ONNX Runtime's CUDA provider each bucket's run
can be captured as a CUDA graph and replayed: one launch instead of one per kernel (a segment of
ResNet-56 is 44-70 ONNX nodes, tens of kernels after fusion, a few microseconds of launch each: expected,
not yet measured, to outweigh the GPU's compute at small batches). On the CPU provider the same buffers run
without graphs: that is how this path is tested.

Chaining without copies: segment k's `features` output buffer for bucket b is bound, as is, as the input of
segment k+1's "chained" binding for bucket b, so a batch that goes on keeps its features on the device.
A captured graph fixes the addresses it reads and writes, so a buffer must not be rewritten while its
contents are still wanted: each segment has a lock, held from its run until its features are consumed
(the next segment's run read them, or they were copied to the host). `run_bound` returns those features
as a `FeaturesLease`; whoever takes it must consume or release it (the engine does, in a finally). Locks
are only ever taken in increasing segment order while one is held, so leases cannot deadlock.

UNVERIFIED on a GPU: the CUDA graph capture (`enable_cuda_graph`, `gpu_graph_id`) follows ONNX Runtime's
own test (onnxruntime/test/python/onnxruntime_test_python_cudagraph.py) but has never run here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


def buckets_up_to(max_batch: int) -> list[int]:
    """Powers of two below max_batch, then max_batch itself: at most 2x padding, few graphs to capture."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1; got {max_batch}")
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


class FeaturesLease:
    """Segment k's features for the first `n` rows of bucket `bucket`, valid while its lock is held."""

    def __init__(self, owner: StaticBatchBackend, bucket: int, n: int):
        self.owner, self.bucket, self.n = owner, bucket, n
        self.held = True

    def to_host(self) -> np.ndarray:
        """Copy the features to a host array (the buffer is reused by the next run) and release."""
        try:
            return self.copy()
        finally:
            self.release()

    def copy(self) -> np.ndarray:
        """A host copy of the features, the lease kept (the next segment may still read the buffer)."""
        if not self.held:
            raise RuntimeError("features lease already released: its buffer may have been rewritten")
        # On the CPU provider numpy() is a view of the bound buffer, on CUDA a copy of all `bucket` rows.
        return np.array(self.owner.features_out[self.bucket].numpy()[: self.n], copy=True)

    def release(self) -> None:
        if self.held:
            self.held = False
            self.owner.lock.release()


class StaticBatchBackend:
    """One segment's ONNX Runtime session with a bound buffer set per bucket. `previous` is the segment
    before it (its features buffers become this segment's chained inputs); None for the first."""

    static_batches = True  # the engine always binds it: a chain's features stay in its buffers

    def __init__(self, path: Path, device: str, max_batch: int, previous: StaticBatchBackend | None = None,
                 cuda_graphs: bool | None = None, tf32: bool | None = None):
        import onnxruntime as ort

        if device not in ("cpu", "cuda"):
            raise ValueError(f"static batches run on --device cpu or cuda; got {device!r}")
        self.ort = ort
        self.cuda_graphs = device == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and device != "cuda":
            raise ValueError("CUDA graphs need --device cuda")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"--device cuda needs onnxruntime-gpu; this onnxruntime offers "
                               f"{sorted(ort.get_available_providers())}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device == "cuda":
            from server.backends import load_cuda_libraries

            load_cuda_libraries(ort)
            # A graph replays fixed addresses: ONNX Runtime's memory-pattern planner must not move them.
            opts.enable_mem_pattern = False
            options = {"enable_cuda_graph": "1" if self.cuda_graphs else "0"}
            if tf32 is not None:  # as OnnxRuntimeBackend's tf32
                options["use_tf32"] = str(int(tf32))
            providers = [("CUDAExecutionProvider", options)]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        running = self.session.get_providers()[0]
        if device == "cuda" and running != "CUDAExecutionProvider":
            raise RuntimeError(f"--device cuda: ONNX Runtime could not start the CUDA provider for {path.name} "
                               "and fell back to the CPU; refusing to serve on the CPU")
        self.device_type = device
        self.name = f"onnxruntime:{running}+" + ("cudagraphs" if self.cuda_graphs else "static")
        self.previous = previous
        self.buckets = buckets_up_to(max_batch)
        self.lock = threading.Lock()
        inp = self.session.get_inputs()[0]
        self.input_name, self.sample_shape = inp.name, tuple(inp.shape[1:])
        if not all(isinstance(d, int) for d in self.sample_shape):
            raise ValueError(f"{path.name}: static batches need fixed input dimensions besides the batch; got {inp.shape}")
        self.output_names = [o.name for o in self.session.get_outputs()]
        out_shapes = {o.name: tuple(o.shape[1:]) for o in self.session.get_outputs()}
        if previous is not None and previous.features_shape != self.sample_shape:
            raise ValueError(f"{path.name}: input {self.sample_shape} does not match the previous segment's features "
                             f"{previous.features_shape}")
        self.features_shape = out_shapes.get("features")
        self.staging, self.inputs, self.features_out, self.logits_out = {}, {}, {}, {}
        self.bind_host, self.bind_chained, self.run_host, self.run_chained = {}, {}, {}, {}
        for i, b in enumerate(self.buckets):
            self.staging[b] = np.zeros((b, *self.sample_shape), np.float32)  # host rows, zero padded
            self.inputs[b] = self._buffer((b, *self.sample_shape))
            self.logits_out[b] = self._buffer((b, *out_shapes["logits"]))
            if self.features_shape is not None:
                self.features_out[b] = self._buffer((b, *self.features_shape))
            self.bind_host[b], self.run_host[b] = self._binding(self.inputs[b], b, 2 * i + 1)
            if previous is not None:
                self.bind_chained[b], self.run_chained[b] = self._binding(previous.features_out[b], b, 2 * i + 2)

    def _buffer(self, shape: tuple[int, ...]):
        return self.ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device_type, 0)

    def _binding(self, input_value, b: int, graph_id: int):
        io = self.session.io_binding()
        io.bind_ortvalue_input(self.input_name, input_value)
        for name in self.output_names:
            io.bind_ortvalue_output(name, self.features_out[b] if name == "features" else self.logits_out[b])
        options = self.ort.RunOptions()
        if self.cuda_graphs:  # one captured graph per bucket and input source; ids must be positive
            options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return io, options

    def bucket_for(self, n: int) -> int:
        for b in self.buckets:
            if n <= b:
                return b
        raise ValueError(f"batch of {n} exceeds the largest bucket ({self.buckets[-1]})")

    # --- runs -------------------------------------------------------------------------------------------

    def run_bound(self, x):
        """`x`: a host batch (n, ...) or the previous segment's FeaturesLease. Returns [FeaturesLease, logits]
        ([logits] for the final segment); logits are a host array of n rows. The caller owns the lease."""
        self.lock.acquire()
        try:
            if isinstance(x, FeaturesLease):
                if x.owner is not self.previous or not x.held:
                    raise ValueError("features lease does not come from the previous segment, or was released")
                b, n = x.bucket, x.n
                try:
                    self.session.run_with_iobinding(self.bind_chained[b], self.run_chained[b])
                finally:
                    x.release()  # its buffer has been read (or the run failed): the previous segment may run again
            else:
                n = len(x)
                b = self.bucket_for(n)
                stage = self.staging[b]
                stage[:n] = x
                stage[n:] = 0.0  # padding rows are computed and ignored; zeros keep them finite
                self.inputs[b].update_inplace(stage)
                self.session.run_with_iobinding(self.bind_host[b], self.run_host[b])
            logits = np.array(self.logits_out[b].numpy()[:n], copy=True)
        except BaseException:
            self.lock.release()
            raise
        if self.features_shape is None:
            self.lock.release()
            return [logits]
        return [FeaturesLease(self, b, n), logits]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Host in, host out (latency calibration, the agreement monitor): like OnnxRuntimeBackend.run."""
        outputs = self.run_bound(x)
        if len(outputs) == 2:
            outputs[0] = outputs[0].to_host()
        return outputs

    def warm(self) -> None:
        """Run every bucket's bindings until ONNX Runtime has captured their graphs (it captures on a later
        run than the first), so that no request pays for a capture. Host path, then chained from the previous
        segment's same bucket."""
        for b in self.buckets:
            for _ in range(3):
                self.run(np.zeros((b, *self.sample_shape), np.float32))
                if self.previous is not None:
                    lease = self.previous.run_bound(np.zeros((b, *self.previous.sample_shape), np.float32))[0]
                    out = self.run_bound(lease)
                    if len(out) == 2:
                        out[0].release()


def static_chain(paths: list[Path], device: str, max_batch: int, cuda_graphs: bool | None = None,
                 tf32: bool | None = None) -> list[StaticBatchBackend]:
    """One StaticBatchBackend per segment, each chained to the one before, warmed."""
    chain: list[StaticBatchBackend] = []
    for path in paths:
        chain.append(StaticBatchBackend(path, device, max_batch, chain[-1] if chain else None, cuda_graphs, tf32))
    for backend in chain:
        backend.warm()
    return chain
