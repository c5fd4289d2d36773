"""bench/int8_cpu.py on the tiny model: its accuracy table is what the two chains answer on the folder."""

import re

import numpy as np
import torch

from bench.int8_cpu import main
from export import quantize
from export.build import export_model
from server.decode import ImageLimits, decode_encoded, to_model_input
from server.repository import load_manifest
from tests.server.helpers import images, png


def test_accuracy_table_matches_both_chains(tiny_run, tiny_repo, tmp_path, capsys):
    export_model(str(tiny_run), str(tmp_path / "q"), "tiny-int8", int8=True, measure=False, log=lambda *a: None)
    float_info, int8_info = load_manifest(tiny_repo / "tiny"), load_manifest(tmp_path / "q" / "tiny-int8")
    folder, data, labels = tmp_path / "test", [], []
    for c, name in enumerate(float_info.classes):
        (folder / name).mkdir(parents=True)
        for i, im in enumerate(images(3, seed=10 * c)):
            (folder / name / f"{i}.png").write_bytes(png(im))
            data.append(png(im))
            labels.append(c)
    assert main(["--float-model", str(tiny_repo / "tiny"), "--int8-model", str(tmp_path / "q" / "tiny-int8"),
                 "--data", str(folder), "--rounds", "1", "--seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\d)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+[+-][\d.]+ pp$", out, re.M)
    assert [int(r[1]) for r in rows] == [5, 8]
    for prec, info, col in (("float", float_info, 2), ("int8", int8_info, 3)):
        x = np.stack([to_model_input(decode_encoded(b, ImageLimits(), (32, 32)), info.input_shape, info.mean, info.std)
                      for b in data])
        logits, _ = quantize.chain_logits([e.onnx for e in info.exits], [(torch.from_numpy(x), torch.zeros(len(x)))])
        for k, row in enumerate(rows):
            assert float(row[col]) == round(100 * float((logits[k].argmax(1) == np.array(labels)).mean()), 2), (prec, k)
