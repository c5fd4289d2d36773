"""python -m export evaluate: each exit's top-1 and the served policy on a labelled folder, against what the
ONNX chain answers on the same decoded images (computed here independently of export/evaluate.py)."""

import json
import shutil

import numpy as np
import pytest
import torch

from export import quantize
from export.__main__ import main as export_main
from export.calibration import softmax
from export.evaluate import evaluate_model, verdict
from export.policy import ExitScores, evaluate
from server.decode import ImageLimits, decode_encoded, to_model_input
from server.policy import policy_confidence
from server.repository import load_manifest
from tests.server.helpers import images, png


@pytest.fixture(scope="module")
def folder(tiny_repo, tmp_path_factory):
    """Four PNGs per class of the tiny model, written as a user's labelled folder."""
    root = tmp_path_factory.mktemp("labelled")
    data, labels = [], []
    for c, name in enumerate(load_manifest(tiny_repo / "tiny").classes):
        (root / name).mkdir()
        for i, im in enumerate(images(4, seed=100 + 10 * c)):
            (root / name / f"{i}.png").write_bytes(png(im))
            data.append(png(im))
            labels.append(c)
    return root, data, np.array(labels)


def test_figures_are_what_the_onnx_chain_answers(tiny_repo, folder):
    root, data, labels = folder
    info = load_manifest(tiny_repo / "tiny")
    x = np.stack([to_model_input(decode_encoded(b, ImageLimits(), (32, 32)), info.input_shape, info.mean, info.std)
                  for b in data])
    logits, _ = quantize.chain_logits([e.onnx for e in info.exits], [(torch.from_numpy(x), torch.zeros(len(x)))])
    probs = [softmax(z.astype(np.float64) / e.temperature) for z, e in zip(logits, info.exits)]
    r = evaluate_model(tiny_repo / "tiny", root)
    assert r["images"] == len(labels) and r["score"] == info.policy_score
    assert [e["top1"] for e in r["exits"]] == [float((p.argmax(1) == labels).mean()) for p in probs]
    expected = evaluate(ExitScores.from_probs(probs, labels, info.policy_score), [e.threshold for e in info.exits],
                        [e.mflops for e in info.exits])
    assert r["policy"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert r["policy"]["mean_mflops"] == pytest.approx(expected["mean_mflops"])
    assert r["policy"]["exit_rates"] == pytest.approx(expected["exit_rates"])
    assert r["promised_max_drop"] == info.manifest["policy"]["max_drop"]
    # the drop's standard error: per image, final exit right minus the exit it stops at right
    conf, last = [policy_confidence(p, info.policy_score) for p in probs], len(info.exits) - 1
    stop = [next(k for k, e in enumerate(info.exits) if k == last or conf[k][i] >= e.threshold) for i in range(len(labels))]
    per_image = [int(probs[-1][i].argmax() == y) - int(probs[k][i].argmax() == y) for i, (k, y) in enumerate(zip(stop, labels))]
    assert r["policy"]["drop"] == pytest.approx(np.mean(per_image))
    assert r["policy"]["drop_se"] == pytest.approx(np.std(per_image, ddof=1) / np.sqrt(len(labels)))


def test_cli_report_json_per_class_and_strict(tiny_repo, folder, tmp_path, capsys):
    root, _, _ = folder
    out = tmp_path / "r.json"
    assert export_main(["evaluate", str(tiny_repo / "tiny"), "--data", str(root), "--per-class", "1",
                        "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["images"] == len(load_manifest(tiny_repo / "tiny").classes)  # one per class
    text = capsys.readouterr().out
    assert f"{r['images']} images of {root}" in text and f"policy: {100 * r['policy']['accuracy']:.2f}%" in text
    # A promise no cascade can keep (a drop of at most -100 pp): --strict says so with exit code 1.
    copy = tmp_path / "m"
    shutil.copytree(tiny_repo / "tiny", copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["policy"]["max_drop"] = -1.0
    (copy / "manifest.json").write_text(json.dumps(m))
    assert export_main(["evaluate", str(copy), "--data", str(root), "--strict"]) == 1
    assert "NOT kept" in capsys.readouterr().out
    assert export_main(["evaluate", str(copy), "--data", str(root)]) == 0  # reported, not enforced


def test_a_class_folder_the_model_does_not_know_is_refused_by_name(tiny_repo, folder, tmp_path, capsys):
    root, _, _ = folder
    shutil.copytree(root, tmp_path / "data")
    (tmp_path / "data" / "zebra").mkdir()
    (tmp_path / "data" / "zebra" / "0.png").write_bytes(png(images(1)[0]))
    assert export_main(["evaluate", str(tiny_repo / "tiny"), "--data", str(tmp_path / "data")]) == 2
    assert "class folders ['zebra'] are not classes of the model" in capsys.readouterr().err


def test_an_image_the_server_would_refuse_is_named(tiny_repo, folder, tmp_path, capsys):
    root, _, _ = folder
    shutil.copytree(root, tmp_path / "data")
    name = load_manifest(tiny_repo / "tiny").classes[0]
    (tmp_path / "data" / name / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    assert export_main(["evaluate", str(tiny_repo / "tiny"), "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'data' / name / 'broken.png'}: " in err and "PNG" in err


def test_a_data_path_that_is_no_labelled_folder_is_refused_by_name(tiny_repo, tmp_path, capsys):
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    for path, says in ((tmp_path / "missing", "is not a folder of images by class"),
                       (tmp_path / "file", "is not a folder of images by class"),
                       (tmp_path / "empty", "no images under")):
        assert export_main(["evaluate", str(tiny_repo / "tiny"), "--data", str(path)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and says in err, err


def test_per_class_below_one_is_refused(tiny_repo, folder, capsys):
    root, _, _ = folder
    with pytest.raises(SystemExit) as e:
        export_main(["evaluate", str(tiny_repo / "tiny"), "--data", str(root), "--per-class", "0"])
    assert e.value.code == 2 and "argument --per-class: 0 must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("drop, se, confidence, expected", [
    (0.004, 0.0015, None, "; promised <= 0.5 pp: kept"),
    (0.0063, 0.0016, None, "; promised <= 0.5 pp: NOT kept, by 0.13 pp = 0.8 standard errors, within this sample's noise"),
    (0.0090, 0.0015, 0.9, "; promised <= 0.5 pp with 0.9 confidence: NOT kept, by 0.40 pp = 2.7 standard errors, "
                          "beyond this sample's noise"),
    (0.0060, 0.0, None, "; promised <= 0.5 pp: NOT kept, by 0.10 pp = inf standard errors, beyond this sample's noise"),
])
def test_a_miss_says_whether_it_is_beyond_the_samples_noise(drop, se, confidence, expected):
    r = {"promised_max_drop": 0.005, "promise_confidence": confidence, "policy": {"drop": drop, "drop_se": se}}
    assert verdict(r) == expected
    assert verdict({**r, "promised_max_drop": None}) == ""  # a manifest without a promise: nothing to judge


@pytest.mark.parametrize("threads, says", [("0", "0 must be >= 1"), ("999999999999999999999", "999999999999999999999 must be <= 1024")])
def test_threads_out_of_range_are_refused(tiny_repo, folder, threads, says, capsys):
    """10**21 threads was a pybind11 TypeError traceback from ONNX Runtime's SessionOptions."""
    root, _, _ = folder
    with pytest.raises(SystemExit) as e:
        export_main(["evaluate", str(tiny_repo / "tiny"), "--data", str(root), "--threads", threads])
    assert e.value.code == 2 and f"argument --threads: {says}" in capsys.readouterr().err
