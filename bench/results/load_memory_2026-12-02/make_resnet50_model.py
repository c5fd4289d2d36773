"""The ResNet-50 model of RESULTS §61: AuxNet-50-4 (exits 22/31/40/50) at 224 px, one epoch on 24 random images
(its weights do not matter to memory: its shapes do), exported as any model is.

    PYTHONPATH=. python bench/results/load_memory_2026-12-02/make_resnet50_model.py /tmp/inet
"""

import sys
from pathlib import Path

from export.build import export_model
from tests.training.test_data import write_image_folder
from training.run import get_args_parser, main

root = Path(sys.argv[1])
write_image_folder(root / "data", 96, n_per_class=6, suffix=".jpg")
main(get_args_parser().parse_args(["--preset", "auxnet50_4", "--dataset", "folder", "--data-dir", str(root / "data"),
     "--image-size", "224", "--val-size", "4", "--batch-size", "8", "--epochs", "1", "--precision", "fp32",
     "--device", "cpu", "--workers", "0", "--out", str(root / "run")]))
export_model(str(root / "run"), str(root / "repo"), "auxnet50_4-224", measure=False)
