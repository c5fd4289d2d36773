"""python -m export {all,exit,check,choose,evaluate}: turn a training checkpoint into a model repository.

(Use the `python -m export` form: a console script named `export` would be shadowed by the shell builtin.)
"""

from __future__ import annotations

import argparse
import re
import sys

from export.quantize import MAX_DROP_PP
from server.arguments import at_least, named
from server.policy import POLICY_SCORES


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m export", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for cmd in ("all", "exit"):
        s = sub.add_parser(cmd, help="export every exit" if cmd == "all" else "export exits 0..K only")
        if cmd == "exit":
            s.add_argument("k", type=int, help="exit index (0 = shallowest)")
        s.add_argument("--checkpoint", required=True, help="a run directory (uses last.pt) or a .pt file")
        s.add_argument("--out", required=True, type=named, help="model repository directory")
        s.add_argument("--name", type=model_name, help="model name (default from the architecture and data set)")
        s.add_argument("--data-dir", help="where the checkpoint's data set lies now (for calibration)")
        s.add_argument("--trt", action="store_true", help="also build one TensorRT engine per exit")
        s.add_argument("--fp16", action="store_true", help="TensorRT FP16 (TensorRT 10)")
        s.add_argument("--max-batch", type=int, default=64, help="TensorRT optimisation profile maximum batch")
        s.add_argument("--no-measure", action="store_true", help="skip the ONNX Runtime latency measurement")
        s.add_argument("--int8", action="store_true",
                       help="quantize every segment to int8 for CPU serving, ranges and calibration from the validation "
                            "split (export/quantize.py)")
        s.add_argument("--int8-max-drop-pp", type=float, default=MAX_DROP_PP,
                       help="refuse when an exit loses more validation top-1 than this to int8, in pp (default 1.0)")
        s.add_argument("--int8-full-range", action="store_true",
                       help="8-bit int8 weights instead of the default 7: only for CPUs with VNNI, since without it "
                            "(AVX2) their 16-bit sums saturate and the answers change (export/quantize.py)")
        s.add_argument("--policy-score", choices=("auto", *POLICY_SCORES), default="auto",
                       help="what the policy's thresholds are compared with: auto (the cheaper on validation with the "
                            "promise kept), top1 (the calibrated top-1 probability) or margin (top-1 minus top-2)")
        s.add_argument("--max-drop-pp", type=float, default=0.5,
                       help="accuracy the early-exit policy may lose against the final exit, in percentage points, "
                            "out of sample (default 0.5)")
        _promise_confidence(s)
    ch = sub.add_parser("choose", help="export the best of several checkpoints, judged on validation (export/choose.py)")
    ch.add_argument("--checkpoint", action="append", required=True, help="a candidate run directory (repeat)")
    ch.add_argument("--out", type=named, help="model repository directory")
    ch.add_argument("--name", type=model_name, help="model name to publish the winner under")
    ch.add_argument("--dry-run", action="store_true", help="rank the candidates and say why; publish nothing")
    ch.add_argument("--data-dir", help="where the checkpoints' data set lies now (for calibration)")
    ch.add_argument("--max-drop-pp", type=float, default=0.5, help="the policy's promise (default 0.5)")
    _promise_confidence(ch)
    c = sub.add_parser("check", help="validate a model directory REPO/NAME")
    c.add_argument("model_dir")
    c.add_argument("--checkpoint", type=named, help="also check parity with this checkpoint")
    c.add_argument("--rebuild", action="store_true",
                   help="also export the segments again from --checkpoint and require byte-identical files")
    c.add_argument("--data-dir", help="with --rebuild of an int8 model: where the checkpoint's data set lies now")
    ev = sub.add_parser("evaluate", help="each exit's and the served policy's accuracy on a labelled folder "
                                         "(export/evaluate.py)")
    ev.add_argument("model_dir", help="REPO/NAME")
    ev.add_argument("--data", required=True, help="labelled images: DATA/<class>/<image> (JPEG or PNG)")
    ev.add_argument("--per-class", type=at_least(1), help="only the first N images of each class")
    ev.add_argument("--threads", type=at_least(1, 1024), default=1, help="ONNX Runtime intra-op threads per segment")
    ev.add_argument("--json", help="also write the figures to this file")
    ev.add_argument("--strict", action="store_true", help="exit 1 when the policy loses more than it promised")
    return p


def _promise_confidence(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--promise-confidence", type=float, metavar="LEVEL",
                        help="promise the drop with this confidence (e.g. 0.9: the cross-validated drop plus 1.28 "
                             "standard errors within --max-drop-pp) instead of on average; costs compute "
                             "(bench/RESULTS.md §23)")


def model_name(text: str) -> str:
    """--name: a folder name the server lists and a client can type in a URL or a metric query (a DEL character or an
    empty name was taken as given, or silently replaced by the default)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a model name: 1-128 letters, digits, '_', '.' or '-', "
                                         "starting with a letter or digit")
    return text


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    from export.trt import TensorRTUnavailable
    from server.repository import RepositoryError

    try:
        if args.command == "check":
            from export.check import check_model

            if args.rebuild and not args.checkpoint:
                raise ValueError("--rebuild needs --checkpoint: the checkpoint the model is said to come from")
            return 1 if check_model(args.model_dir, args.checkpoint, rebuild=args.rebuild, data_dir=args.data_dir) else 0
        if args.command == "evaluate":
            from export.evaluate import main as evaluate_main

            return evaluate_main(args)
        if args.command == "choose":
            from export.choose import choose

            choose(args.checkpoint, args.out, args.name, args.data_dir, args.max_drop_pp, dry_run=args.dry_run,
                   promise_confidence=args.promise_confidence)
            return 0
        from export.build import export_model

        export_model(args.checkpoint, args.out, args.name, args.data_dir, getattr(args, "k", None), args.trt,
                     args.fp16, args.max_batch, measure=not args.no_measure,
                     max_drop_pp=args.max_drop_pp, int8=args.int8, int8_max_drop_pp=args.int8_max_drop_pp,
                     policy_score=args.policy_score, promise_confidence=args.promise_confidence,
                     int8_full_range=args.int8_full_range)
        return 0
    except TensorRTUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (RepositoryError, ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
