"""Checkpoint -> `<repo>/<name>/`: ONNX per exit, parity, calibration, costs, plot, manifest, optional TRT."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from export import quantize
from export.atomic import staged_model
from export.calibration import default_policy, fit_temperature, softmax, threshold_table
from export.measure import machine_label, segment_latency_ms
from export.memory import session_memory
from export.plot import plot_tradeoff
from export.policy import (
    ExitScores,
    agreement_table,
    choose_policy,
    conditional_table,
    drop_curve,
    served_rule,
    served_score,
    z_score,
)
from export.segments import PARITY_ATOL, export_segment, segment_parity
from server.policy import POLICY_SCORES
from server.repository import MANIFEST, SCHEMA_VERSION, load_manifest, sha256_file
from training.checkpoint import checkpoint_splits, load_checkpoint
from training.checkpoint import model_from_checkpoint as checkpoint_model
from training.data.batches import iterate
from training.engine import collect_logits
from training.model import AuxNet, segment_costs
from training.run import RECIPE_DEFAULTS


class ExportError(RuntimeError):
    pass


def model_from_checkpoint(ckpt: dict, path: str) -> AuxNet:
    try:
        return checkpoint_model(ckpt, path)
    except ValueError as e:
        raise ExportError(str(e)) from e


def validation_logits(model: AuxNet, ckpt: dict, data_dir: str | None) -> tuple[list[np.ndarray], np.ndarray, object]:
    info = ckpt["data"]
    root = data_dir or info.get("data_dir")
    try:
        splits = checkpoint_splits(ckpt, root)  # its validation images, at the size it was trained at
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(f"calibration needs the validation split of {info['dataset']} from {root}: {e} "
                          "(pass --data-dir)") from e
    if len(splits.val) == 0:
        raise ExportError("the checkpoint recorded an empty validation split; calibration needs one (train with --val-size > 0)")
    batches = iterate(splits.val, splits, 256, False, 0, torch.device("cpu"))
    logits, labels = collect_logits(model, batches)
    return [z.numpy().astype(np.float64) for z in logits], labels.numpy(), splits


def export_model(checkpoint: str, repo: str, name: str | None = None, data_dir: str | None = None,
                 only_exit: int | None = None, trt: bool = False, fp16: bool = False, max_batch: int = 64,
                 measure: bool = True, max_drop_pp: float = 0.5, log=print, int8: bool = False,
                 int8_max_drop_pp: float = quantize.MAX_DROP_PP, policy_score: str = "auto",
                 promise_confidence: float | None = None, int8_full_range: bool = False) -> Path:
    """Build the whole repository entry in a staging folder and publish it atomically. With `int8`, the
    segments are quantized (export/quantize.py) and everything calibrated is fitted on the quantized chain.
    `policy_score`: "auto" serves the cheaper of POLICY_SCORES on validation, or force one of them.
    `promise_confidence`: the level at which the policy's drop is promised (None: on average).
    `int8_full_range`: 8-bit int8 weights, which saturate on CPUs without VNNI (default: 7 bits; export/quantize.py)."""
    if policy_score != "auto" and policy_score not in POLICY_SCORES:
        raise ValueError(f"policy score {policy_score!r} unknown; valid: auto, {', '.join(POLICY_SCORES)}")
    if trt and int8:
        raise ExportError("--int8 makes ONNX Runtime models for CPUs; --trt builds TensorRT's own engines from float ONNX "
                          "(use --fp16 there): ask for one or the other")
    if int8_full_range and not int8:
        raise ExportError("--int8-full-range chooses how --int8 quantizes the weights: add --int8")
    if trt and max_batch < 1:
        raise ExportError(f"--max-batch {max_batch} must be at least 1 (TensorRT's profile maximum batch)")
    if trt:  # refuse before any work, and leave nothing behind
        from export.trt import require_tensorrt

        require_tensorrt()
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, checkpoint)
    cfg = model.cfg
    name = name or f"{cfg.name().lower().replace('/', '_w')}-{ckpt['data']['dataset']}" + ("-int8" if int8 else "")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if only_exit is not None and not 0 <= only_exit < model.num_outputs:
        raise ExportError(f"exit {only_exit} does not exist; this model has exits 0..{model.num_outputs - 1}")
    if not 0 <= max_drop_pp <= 100:
        raise ExportError(f"--max-drop-pp {max_drop_pp} must be a percentage-point drop in [0, 100]")
    if promise_confidence is not None and not 0.5 <= promise_confidence < 1:
        raise ExportError(f"--promise-confidence {promise_confidence} must be a level in [0.5, 1), e.g. 0.9")
    if int8 and not 0 <= int8_max_drop_pp <= 100:
        raise ExportError(f"--int8-max-drop-pp {int8_max_drop_pp} must be a percentage-point drop in [0, 100]")
    log(f"calibrating {cfg.name()} on the validation split ...")
    logits, labels, splits = validation_logits(model, ckpt, data_dir)
    costs = segment_costs(model)
    # `export exit K` serves a cascade that ends at K: its policy and figures are that cascade's.
    kept = model.num_outputs if only_exit is None else only_exit + 1
    images = torch.from_numpy(_first_images(splits, 16))
    repo_path = Path(repo)
    with staged_model(repo_path, name) as stage:
        paths, ios = _export_segments(model, stage)
        parity = segment_parity(model, paths, images) + segment_parity(model, paths, images[:1])
        worst = max(max(r["segment_max_abs_diff"], r["chain_max_abs_diff"]) / r["output_scale"] for r in parity)
        if worst > PARITY_ATOL:
            raise ExportError(f"ONNX differs from torch by {worst:.2e} (relative to the output scale) > {PARITY_ATOL}: "
                              f"{parity}")
        if only_exit is not None:  # `export exit K` keeps the segments that feed K
            for path in paths[kept:]:
                path.unlink()
            paths, ios, logits = paths[:kept], ios[:kept], logits[:kept]
        quantization = None
        if int8:  # the float files passed parity; now they are replaced, and calibrated anew on what is served
            log(f"quantizing to int8 (activation ranges from {quantize.CALIBRATION_IMAGES} validation images) ...")
            calibration_images = _first_images(splits, quantize.CALIBRATION_IMAGES)
            try:
                quantize.quantize_chain(paths, calibration_images, reduce_range=not int8_full_range)
                float_logits = logits
                logits, labels = quantize.chain_logits(paths, iterate(splits.val, splits, 256, False, 0, torch.device("cpu")))
                quantization = quantize.report(float_logits, logits, labels, len(calibration_images), int8_max_drop_pp,
                                               reduce_range=not int8_full_range)
            except quantize.QuantizationError as e:
                raise ExportError(str(e)) from e
        temps = [fit_temperature(z, labels) for z in logits]
        probs = [softmax(z / t) for z, t in zip(logits, temps)]
        policy = make_policy(probs, labels, [c["mflops"] for c in costs[:kept]], max_drop_pp / 100,
                             tuple(POLICY_SCORES) if policy_score == "auto" else (policy_score,), promise_confidence)
        scores = ExitScores.from_probs(probs, labels, policy["score"])  # what the served thresholds are compared with
        exits = []
        for k, (path, io) in enumerate(zip(paths, ios)):
            acc = float((probs[k].argmax(1) == labels).mean())
            exits.append({"index": k, "layer": cfg.exits[k], "params": costs[k]["params"],
                          "mflops": round(costs[k]["mflops"], 4), "segment_mflops": round(costs[k]["segment_mflops"], 4),
                          "onnx": path.name, **io, "val_top1": round(acc, 5), "temperature": round(temps[k], 5),
                          "thresholds": threshold_table(probs[k], labels),
                          "conditional_thresholds": conditional_table(scores, policy["thresholds"], k)})
            if k < kept - 1:
                exits[-1]["agreement"] = agreement_table(scores, k, policy["thresholds"])
        for e, path in zip(exits, paths):
            e["sha256"] = sha256_file(path)
            e["memory"] = session_memory(path)  # what the server checks a load against (server/load_memory.py)
            e["parity_max_abs_diff"] = max(r["segment_max_abs_diff"] for r in parity if r["exit"] == e["index"])
            if measure:
                e["latency_ms"] = {"onnxruntime_cpu": {"batch_1": segment_latency_ms(path, e["input_shape"], 1),
                                                       "batch_32": segment_latency_ms(path, e["input_shape"], 32)},
                                   "machine": machine_label()}
        if trt:
            _build_trt(stage, exits, max_batch, fp16, log)
        manifest = _manifest(name, cfg, ckpt, splits, exits, policy, len(labels))
        if quantization is not None:
            manifest["quantization"] = quantization
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1))
        plot_tradeoff(policy, exits, f"{cfg.name()} on {ckpt['data']['dataset']} (validation split"
                      + (", int8)" if int8 else ")"), stage / "tradeoff.png")
        load_manifest(stage)  # the server's own validation, before anything is published
    log(f"wrote {repo_path / name} ({len(exits)} exits{', int8' if int8 else ''}; parity max |diff| {worst:.1e}; "
        f"policy thresholds {policy['thresholds'][:-1]} -> held-out drop {100 * policy['held_out']['drop']:.2f} "
        f"+- {100 * policy['held_out']['drop_se']:.2f} pp (over {100 * policy['max_drop']:g} pp on ~"
        f"{policy['fresh_set_miss_rate']['rate']:.0%} of fresh {policy['fresh_set_miss_rate']['images']:,}-image sets), "
        f"{policy['held_out']['mean_mflops']:.1f} MFLOPs/image vs {costs[kept - 1]['mflops']:.1f})")
    return repo_path / name


def _export_segments(model: AuxNet, stage: Path) -> tuple[list[Path], list[dict]]:
    """Every segment as float ONNX in `stage`, each traced on what the one before outputs."""
    x = torch.zeros(2, *model.input_shape())
    paths, ios = [], []
    for k in range(model.num_outputs):
        path = stage / f"exit_{k}.onnx"
        ios.append(export_segment(model, k, x, path))
        with torch.no_grad():
            out = model.segment(k)(x)
        x = out[0] if isinstance(out, tuple) else x
        paths.append(path)
    return paths, ios


def make_policy(probs: list[np.ndarray], labels: np.ndarray, mflops: list[float], max_drop: float,
                scores: tuple[str, ...] = tuple(POLICY_SCORES), confidence: float | None = None) -> dict:
    """The manifest's policy: the served score's served rule (export/policy.py: per-exit thresholds or one shared
    threshold, on the top-1 probability or the top-1 minus top-2 margin, whichever is cheapest on validation
    with its promise kept) at the top level, where the server reads it; that score's two rules beside it, every
    score's served figures under `scores`, and the curves the trade-off plot draws. `scores`: the candidates
    (export --policy-score may force one). `confidence`: the promise's level (export/policy.py), None = on average."""
    by_score = {score: choose_policy(probs, labels, mflops, max_drop, score=score, confidence=confidence) for score in scores}
    score = served_score(by_score)
    chosen = by_score[score]
    served = served_rule(chosen)
    final_acc = float((probs[-1].argmax(axis=1) == labels).mean())
    return {
        "rule": (f"confidence thresholds of least mean MFLOPs whose accuracy drop against the final exit is "
                 f"<= {100 * max_drop:g} pp out of sample: the smallest safety margin whose mean held-out drop in "
                 "repeated 2-fold cross-validation on the validation split (5 random splits) keeps the promise"
                 + ("" if confidence is None else f" with {confidence:g} confidence (the held-out drop plus "
                    f"{z_score(confidence):.2f} standard errors within it)") + ", then "
                 "thresholds chosen on the whole split at (drop - margin); per exit, or one shared threshold where "
                 "that kept the promise at less cost; compared with the calibrated top-1 probability, or with the "
                 "top-1 minus top-2 probability where that kept the promise at less cost"),
        "score": score, "served_rule": served, "max_drop": max_drop, "promise_confidence": confidence, **chosen[served],
        "final_exit_val_accuracy": round(final_acc, 5),
        "per_exit": chosen["per_exit"], "shared": chosen["shared"],
        "scores": {s: {"served_rule": served_rule(c), **{k: v for k, v in c[served_rule(c)].items() if k != "folds"}}
                   for s, c in by_score.items()},
        "curve": default_policy(probs, labels, mflops)["curve"],  # shared threshold on the top-1 probability, swept
        "per_exit_curve": drop_curve(ExitScores.from_probs(probs, labels, score), mflops),
    }


def rebuild_segments(checkpoint: str, manifest: dict, out: Path, data_dir: str | None = None) -> list[Path]:
    """The segment files export would write today for the model `manifest` describes, from `checkpoint`,
    into `out`: float, or for an int8 model quantized as its manifest says (which needs the checkpoint's
    validation images, from `data_dir` or the recorded folder). For `export check --rebuild`."""
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, checkpoint)
    kept = len(manifest["exits"])
    if kept > model.num_outputs:
        raise ExportError(f"the manifest has {kept} exits, the checkpoint's network {model.num_outputs}: not its model")
    paths, _ = _export_segments(model, out)
    for path in paths[kept:]:
        path.unlink()
    paths = paths[:kept]
    block = manifest.get("quantization")
    if block:
        try:
            splits = checkpoint_splits(ckpt, data_dir)
        except (FileNotFoundError, ValueError) as e:
            raise ExportError(f"rebuilding int8 files needs the checkpoint's validation images: {e} (pass --data-dir)") from e
        quantize.quantize_chain(paths, _first_images(splits, block.get("calibration_images", quantize.CALIBRATION_IMAGES)),
                                reduce_range=block.get("reduce_range", False))
    return paths


def _first_images(splits, n: int) -> np.ndarray:
    x, _ = next(iterate(splits.val, splits, n, False, 0, torch.device("cpu")))
    return x.numpy()


def _build_trt(stage: Path, exits: list[dict], max_batch: int, fp16: bool, log) -> None:
    from export.trt import build_engine, gpu_name

    cache = stage / "timing.cache"
    for e in exits:
        plan = stage / f"exit_{e['index']}.plan"
        info = build_engine(stage / e["onnx"], plan, e["input_shape"], max_batch, fp16, cache)
        e["plan"] = plan.name
        e["trt"] = {**info, "gpu": gpu_name(), "sha256": sha256_file(plan)}
        log(f"built {plan.name}")
    cache.unlink(missing_ok=True)


def _weights_label(ckpt: dict) -> str:
    """Which weights the training run left: the averaged ones (--ema-decay), also under retrained heads."""
    ema = ckpt.get("model_ema") or (ckpt.get("heads") or {}).get("trunk_weights") == "exponential moving average"
    return "exponential moving average" if ema else "last step"


def _manifest(name, cfg, ckpt, splits, exits, policy, n_val) -> dict:
    import onnx
    import onnxruntime

    args = ckpt.get("args", {})
    dataset = ckpt["data"]["dataset"]
    if dataset == "folder":  # name the folder, not just the format
        dataset = f"folder:{Path(ckpt['data'].get('data_dir', '?')).name}"
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "architecture": cfg.name(),
        "model_config": {**cfg.to_dict(), "exits": list(cfg.exits)},
        "classes": list(ckpt["data"]["classes"]),
        "input": {"shape": list(exits[0]["input_shape"]), "dtype": "float32", "layout": "NCHW",
                  "normalization": ckpt["data"]["normalization"]},
        "training": {"method": args.get("method"), "dataset": dataset, "epochs": ckpt["epoch"],
                     "seed": args.get("seed"), "batch_size": args.get("batch_size"), "lr": args.get("lr"),
                     "recipe": {k: args.get(k, default) for k, default in RECIPE_DEFAULTS.items()},
                     "weights": _weights_label(ckpt),
                     "precision": ckpt.get("precision"), "final_metrics": ckpt.get("metrics", {}),
                     # python -m training.heads retrained the auxiliary heads afterwards: how, from what
                     **({"auxiliary_heads_retrained": ckpt["heads"]} if ckpt.get("heads") else {})},
        "calibration": {"split": "validation (held out of the training set)", "images": n_val,
                        "temperature": "per exit, NLL-fitted"},
        "exits": exits,
        "policy": policy,
        "export": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
                   "command": " ".join(["python -m export", *sys.argv[1:]])},
    }
