"""`python -m export evaluate REPO/NAME --data FOLDER`: how a published model does on a labelled image folder
(FOLDER/<class>/<image>, as the test split and a user's own held-out images come), decoded and normalised as
the server does and run through its ONNX segments on the CPU: each exit's top-1, and the served policy's
accuracy, its drop against the final exit, mean MFLOPs and exit rates, beside what the manifest promised on
the validation split. The promise was made out of sample on validation; this is where a user checks it on
their own data. `--strict` exits 1 when the policy lost more than it promised (for a deployment pipeline).
The drop comes with its standard error on these images; a miss says whether it is within that noise.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np

from export.calibration import softmax
from export.policy import ExitScores, drop_standard_error, evaluate, paired_drop
from server.decode import ImageLimits, decode_encoded, to_model_input
from server.errors import InvalidInput
from server.loadgen import labelled_files
from server.repository import ModelInfo, load_manifest

BATCH = 256  # images per ONNX Runtime call
NOISE_Z = 1.645  # a miss beyond this many standard errors is unlikely (5%, one-sided) if the promise held


def cpu_chain(info: ModelInfo, threads: int = 1) -> list:
    """One ONNX Runtime CPU session per segment, with the server's thread settings."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return [ort.InferenceSession(str(e.onnx), opts, providers=["CPUExecutionProvider"]) for e in info.exits]


def exit_scores(info: ModelInfo, chain: list, images: list[bytes], labels: np.ndarray,
                names: list[str] | None = None) -> ExitScores:
    """Every exit's policy score and answer on the labelled images (each exit judged on every image). An image
    the server would refuse is refused here too, named by `names[i]` if given."""
    size, limits = info.input_shape[1:], ImageLimits()

    def model_input(i: int) -> np.ndarray:
        try:
            return to_model_input(decode_encoded(images[i], limits, size), info.input_shape, info.mean, info.std)
        except InvalidInput as e:
            raise ValueError(f"{names[i] if names else f'image {i}'}: {e}") from e

    logits = [[] for _ in chain]
    for i in range(0, len(images), BATCH):  # decoded a batch at a time: 224 px images would not fit at once
        feed = np.stack([model_input(j) for j in range(i, min(i + BATCH, len(images)))])
        for k, s in enumerate(chain):
            out = s.run(None, {"input": feed})
            logits[k].append(out[-1].astype(np.float64))
            feed = out[0]
    probs = [softmax(np.concatenate(z) / e.temperature) for z, e in zip(logits, info.exits)]
    return ExitScores.from_probs(probs, labels, info.policy_score)


def labelled_images(folder: str | Path, classes: tuple[str, ...], per_class: int | None = None
                    ) -> tuple[list[bytes], np.ndarray, list[str]]:
    """The folder's images, their labels as the model's class indices and their file paths; the first
    `per_class` of each class in the folder's order, if given. A class folder the model does not know is
    refused by name."""
    files, names = labelled_files(folder)
    if unknown := sorted({c for c in names if c not in classes}):
        raise ValueError(f"{folder}: class folders {unknown} are not classes of the model ({list(classes)})")
    if per_class:
        seen, keep = collections.Counter(), []
        for i, n in enumerate(names):
            seen[n] += 1
            if seen[n] <= per_class:
                keep.append(i)
        files, names = [files[i] for i in keep], [names[i] for i in keep]
    return [f.read_bytes() for f in files], np.asarray([classes.index(n) for n in names]), [str(f) for f in files]


def evaluate_model(model_dir: str | Path, folder: str | Path, per_class: int | None = None, threads: int = 1) -> dict:
    """Each exit's top-1 and the served policy's figures on the folder, with the manifest's promise."""
    info = load_manifest(model_dir)
    images, labels, files = labelled_images(folder, info.classes, per_class)
    scores = exit_scores(info, cpu_chain(info, threads), images, labels, files)
    mflops = [e.mflops for e in info.exits]
    thresholds = [e.threshold for e in info.exits]
    served = evaluate(scores, thresholds, mflops)
    served["drop_se"] = drop_standard_error(paired_drop(scores, thresholds))
    policy = info.manifest["policy"]
    return {"model": info.name, "version": info.version, "precision": info.precision, "images": len(labels),
            "folder": str(folder), "score": info.policy_score, "thresholds": [e.threshold for e in info.exits[:-1]],
            "exits": [{"exit": e.index, "layer": e.layer, "mflops": e.mflops, "top1": float(scores.correct[k].mean()),
                       "val_top1": e.val_top1} for k, e in enumerate(info.exits)],
            "policy": {**served, "x_final_cost": served["mean_mflops"] / mflops[-1]},
            "promised_max_drop": policy.get("max_drop"), "promise_confidence": policy.get("promise_confidence"),
            "validation": {"accuracy": policy.get("val_accuracy"), "mean_mflops": policy.get("mean_mflops"),
                           "held_out_drop": policy.get("held_out", {}).get("drop")}}


def report(r: dict) -> list[str]:
    p = r["policy"]
    lines = [f"model {r['model']} ({r['version']}, {r['precision']}); policy on {r['score']}, thresholds "
             f"{r['thresholds']}; {r['images']} images of {r['folder']}",
             "exit  layer  MFLOPs   top-1   (validation)"]
    lines += [f"{e['exit']:4d}  {e['layer']:5d}  {e['mflops']:6.1f}  {100 * e['top1']:6.2f}%  ({100 * e['val_top1']:.2f}%)"
              for e in r["exits"]]
    lines.append(f"policy: {100 * p['accuracy']:.2f}% (final exit {100 * p['final_accuracy']:.2f}%, drop "
                 f"{100 * p['drop']:.2f} +- {100 * p['drop_se']:.2f} pp{verdict(r)}) at {p['mean_mflops']:.1f} MFLOPs per "
                 f"image ({p['x_final_cost']:.2f}x the final exit); exit rates {' / '.join(f'{100 * x:.0f}%' for x in p['exit_rates'])}")
    return lines


def verdict(r: dict) -> str:
    """Whether the drop on these images kept the manifest's promise; a miss says how many of this sample's
    standard errors it is (export/policy.py's drop_standard_error): one test set is one draw, and a promise
    made on average misses on some draws (28% of 40 for the default model, bench/RESULTS.md §23)."""
    promise, p = r["promised_max_drop"], r["policy"]
    if promise is None:
        return ""
    level = "" if r.get("promise_confidence") is None else f" with {r['promise_confidence']:g} confidence"
    head = f"; promised <= {100 * promise:g} pp{level}: "
    if p["drop"] <= promise + 1e-12:
        return head + "kept"
    over = p["drop"] - promise
    z = over / p["drop_se"] if p["drop_se"] > 0 else float("inf")
    noise = "within this sample's noise" if z < NOISE_Z else "beyond this sample's noise"
    return head + f"NOT kept, by {100 * over:.2f} pp = {z:.1f} standard errors, {noise}"


def main(args) -> int:
    r = evaluate_model(args.model_dir, args.data, args.per_class, args.threads)
    print("\n".join(report(r)))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    promise = r["promised_max_drop"]
    return 1 if args.strict and promise is not None and r["policy"]["drop"] > promise + 1e-12 else 0
