"""`python -m export check REPO/NAME`: what the server would refuse, plus ONNX checks and torch parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.repository import load_manifest


def check_model(model_dir: str, checkpoint: str | None = None, log=print, rebuild: bool = False,
                data_dir: str | None = None) -> list[str]:
    """Return a list of problems (empty when the model is sound). `rebuild`: also export the segments again
    from `checkpoint` and require the published files byte for byte (export is reproducible on any CPU since
    2026-12-01: bench/RESULTS.md §27), which proves which checkpoint a repository was built from."""
    import onnx

    from export.segments import PARITY_ATOL, onnx_session

    info = load_manifest(model_dir)  # files, checksums, schema, chaining of declared shapes
    problems = []
    x = np.random.default_rng(0).standard_normal((3, *info.input_shape)).astype(np.float32)
    for e in info.exits:
        try:
            onnx.checker.check_model(str(e.onnx), full_check=True)
        except onnx.checker.ValidationError as err:
            problems.append(f"{e.onnx}: ONNX checker: {str(err).splitlines()[0]}")
            continue
        problems += _memory_figures_differ(e, log)
        out = onnx_session(e.onnx).run(None, {"input": x})
        if out[-1].shape != (3, len(info.classes)):
            problems.append(f"{e.onnx}: logits shape {out[-1].shape}, expected (3, {len(info.classes)})")
        if e.feature_shape is not None:
            if tuple(out[0].shape[1:]) != e.feature_shape:
                problems.append(f"{e.onnx}: features {out[0].shape[1:]} but manifest says {e.feature_shape}")
            x = out[0]
    if checkpoint and not problems and "quantization" in info.manifest:
        # An int8 model cannot meet the float tolerance; what it costs was measured on the validation split at
        # export, where real images set the ranges (random inputs here would saturate them).
        log(f"{Path(model_dir)}: int8 model: parity with the checkpoint not checked; the manifest's quantization "
            "block has each exit's validation top-1 in float and int8")
    elif checkpoint and not problems:
        import torch

        from export.build import model_from_checkpoint
        from export.segments import segment_parity
        from training.checkpoint import load_checkpoint

        model = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
        images = torch.from_numpy(np.random.default_rng(1).standard_normal((16, *info.input_shape)).astype(np.float32))
        for r in segment_parity(model, [e.onnx for e in info.exits], images):
            worst = max(r["segment_max_abs_diff"], r["chain_max_abs_diff"]) / r["output_scale"]
            if worst > PARITY_ATOL:
                problems.append(f"exit {r['exit']}: ONNX differs from the checkpoint by {worst:.2e} > {PARITY_ATOL}")
    if rebuild and not problems:
        problems += _rebuilt_differences(model_dir, info, checkpoint, data_dir, log)
    log(f"{Path(model_dir)}: " + ("OK" if not problems else f"{len(problems)} problem(s)"))
    for p in problems:
        log(f"  - {p}")
    return problems


def _memory_figures_differ(e, log) -> list[str]:
    """The manifest's memory figures (what the server checks a load against) are what export/memory.py finds in the
    file; a manifest without them is sound, and the server falls back to a rule from file sizes."""
    from export.memory import MemoryEstimateError, session_memory

    if "memory" not in e.raw:
        log(f"{e.onnx}: no memory figures in the manifest: the server estimates this model's load from its file sizes "
            "(exported before 2026-12-02; export it again to record them)")
        return []
    try:
        found = session_memory(e.onnx)
    except MemoryEstimateError as err:
        return [f"{e.onnx}: memory figures cannot be checked: {err}"]
    if e.raw["memory"] != found:
        return [f"{e.onnx}: the manifest's memory figures {e.raw['memory']} differ from the file's {found}"]
    return []


def _rebuilt_differences(model_dir: str, info, checkpoint: str, data_dir: str | None, log) -> list[str]:
    import tempfile

    from export.build import rebuild_segments
    from server.repository import sha256_file

    with tempfile.TemporaryDirectory(prefix="auxnet-rebuild-") as tmp:
        rebuilt = [sha256_file(p) for p in rebuild_segments(checkpoint, info.manifest, Path(tmp), data_dir)]
    differ = [(e, h) for e, h in zip(info.exits, rebuilt) if h != e.raw["sha256"]]
    if not differ:
        log(f"{Path(model_dir)}: rebuilt from {checkpoint}: all {len(rebuilt)} segment files byte-identical")
        return []
    built_with = info.manifest.get("export", {}).get("versions", {})
    return [f"exit {e.index}: rebuilt from {checkpoint}, {e.onnx.name} differs from the published file (sha256 {h[:12]} "
            f"against {e.raw['sha256'][:12]}): another checkpoint, files changed since export, an export before 2026-12-01, "
            f"or other versions (it was exported with {built_with or 'unrecorded versions'})" for e, h in differ]
