import pytest

from training.run import get_args_parser, main

TINY = ["--depth", "8", "--exits", "5,8", "--dataset", "synthetic", "--precision", "fp32", "--device", "cpu",
        "--epochs", "1", "--batch-size", "64", "--max-batches", "6", "--val-size", "200", "--seed", "0"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A depth-8 AuxNet with exits at layers 5 and 8, trained briefly on synthetic data."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    main(get_args_parser().parse_args(TINY + ["--out", str(out)]))
    return out


@pytest.fixture(scope="session")
def tiny_repo(tiny_run, tmp_path_factory):
    from export.build import export_model

    repo = tmp_path_factory.mktemp("repo")
    export_model(str(tiny_run), str(repo), "tiny", log=lambda *a: None)
    return repo
