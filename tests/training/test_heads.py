"""Auxiliary heads pooling to a grid (ModelConfig.aux_head_pool) and python -m training.heads."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from training.checkpoint import load_checkpoint, model_from_checkpoint, write_serving_copy
from training.config import ModelConfig
from training.heads import get_args_parser, main, pooled_model, train_classifiers
from training.layers import ExitHead
from training.methods import OptimConfig
from training.model import AuxNet, segment_costs
from training.run import get_args_parser as run_parser
from training.run import main as run_main

AUX56 = (15, 25, 35, 45, 56)


def test_grid_head_by_hand():
    torch.manual_seed(0)
    head = ExitHead(2, 3, pool=2, side=4).eval()
    x = torch.randn(1, 2, 4, 4)
    a = torch.relu(x / (1 + 1e-5) ** 0.5)  # a fresh BN in eval: mean 0, variance 1, weight 1, bias 0
    cells = [a[0, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean() for c in range(2) for i in range(2) for j in range(2)]
    expected = head.fc.weight @ torch.stack(cells) + head.fc.bias
    with torch.no_grad():
        assert torch.allclose(head(x)[0], expected, atol=1e-6)
    assert head.fc.in_features == 8
    with pytest.raises(ValueError, match="side divisible by it, got 5"):
        ExitHead(2, 3, pool=2, side=5)


def test_grid_heads_add_their_fc_inputs_to_table6_counts():
    # Global pooling gives the paper's Table 6 counts (test_model.py); a 4 x 4 grid multiplies each auxiliary fc's
    # inputs by 16: (16 - 1) * C * 10 more weights at an exit of C channels; the final output keeps its head.
    plain = AuxNet(ModelConfig(depth=56, exits=AUX56))
    grid = AuxNet(ModelConfig(depth=56, exits=AUX56, aux_head_pool=4))
    extra = [15 * c * 10 for c in (16, 32, 32, 64)] + [0]
    assert [grid.prefix_params(k) - plain.prefix_params(k) for k in range(5)] == extra
    assert [grid.prefix_params(k) for k in range(5)] == [35738, 98714, 191514, 492698, 853018]
    assert grid.cfg.name() == "AuxNet-56-5-pool4" and plain.cfg.name() == "AuxNet-56-5"


def test_a_grid_that_divides_no_feature_map_is_refused():
    with pytest.raises(ValueError, match=r"pool grid 3 does not divide the 32x32 feature map at exit layer 15; "
                                         r"valid grids: \[1, 2, 4, 8\]"):
        AuxNet(ModelConfig(depth=56, exits=AUX56, aux_head_pool=3))
    with pytest.raises(ValueError, match="pool grid 0 must be at least 1"):
        ModelConfig(depth=56, exits=AUX56, aux_head_pool=0)
    # ImageNet family: stride-2 stem and max-pool first, so ResNet-50 at 224 px has 56/28/14/7 maps
    assert AuxNet(ModelConfig("imagenet", 50, (10, 22, 50), image_size=224, num_classes=10)).spatial[:4] == [56, 56, 56, 56]
    with pytest.raises(ValueError, match="14x14 feature map at exit layer 40"):
        AuxNet(ModelConfig("imagenet", 50, (10, 40, 50), image_size=224, num_classes=10, aux_head_pool=4))


def test_checkpoints_written_before_the_grid_load_with_global_pooling():
    d = ModelConfig(depth=56, exits=AUX56).to_dict()
    del d["aux_head_pool"]
    assert ModelConfig.from_dict(d).aux_head_pool == 1


def test_pooled_model_starts_as_the_old_function():
    torch.manual_seed(0)
    source = AuxNet(ModelConfig(depth=14, exits=(9, 14))).eval()
    for m in source.modules():  # non-trivial statistics, so the copied batch norms matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    grid = pooled_model(source, 4)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(source(x), grid(x)):
            assert torch.allclose(a, b, atol=1e-5)
    assert grid.heads[0].fc.in_features == 32 * 16 and grid.heads[-1].fc.in_features == 64


def test_hidden_layer_head_by_hand():
    torch.manual_seed(0)
    head = ExitHead(2, 3, pool=1, side=4, hidden=5).eval()
    x = torch.randn(2, 2, 4, 4)
    p = torch.relu(x / (1 + 1e-5) ** 0.5).mean(dim=(2, 3))  # a fresh BN in eval, global pooling
    expected = p @ head.fc.weight.T + head.fc.bias + torch.relu(p @ head.up.weight.T + head.up.bias) @ head.down.weight.T \
        + head.down.bias
    with torch.no_grad():
        assert torch.allclose(head(x), expected, atol=1e-6)
    assert [m.out_features for m in head.classifier()] == [3, 5, 3]
    plain = ExitHead(2, 3)
    assert plain.classifier() == [plain.fc] and not hasattr(plain, "up")


def test_hidden_layer_heads_count_their_parameters_and_multiply_adds():
    grid = AuxNet(ModelConfig(depth=56, exits=AUX56, aux_head_pool=4))
    mlp = AuxNet(ModelConfig(depth=56, exits=AUX56, aux_head_pool=4, aux_head_hidden=512))
    inputs = [16 * 16, 32 * 16, 32 * 16, 64 * 16]  # C * P * P at the four auxiliary exits; the final head has none
    extra = [n * 512 + 512 + 512 * 10 + 10 for n in inputs] + [0]
    assert [mlp.prefix_params(k) - grid.prefix_params(k) for k in range(5)] == extra  # an output counts its own head
    mflops = [c["segment_mflops"] for c in segment_costs(mlp)]
    base = [c["segment_mflops"] for c in segment_costs(grid)]
    assert [round(1e6 * (a - b)) for a, b in zip(mflops, base)] == [n * 512 + 512 * 10 for n in inputs] + [0]
    assert mlp.cfg.name() == "AuxNet-56-5-pool4-mlp512"
    with pytest.raises(ValueError, match="hidden width -1 must be at least 0"):
        ModelConfig(depth=56, exits=AUX56, aux_head_hidden=-1)


def test_pooled_model_with_a_hidden_layer_starts_as_the_old_function():
    torch.manual_seed(0)
    source = AuxNet(ModelConfig(depth=14, exits=(9, 14))).eval()
    for m in source.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, 32, 32)
    mlp = pooled_model(source, 4, hidden=16)
    assert mlp.heads[0].hidden == 16 and mlp.heads[-1].hidden == 0 and torch.count_nonzero(mlp.heads[0].up.weight) > 0
    with torch.no_grad():
        for a, b in zip(source(x), mlp(x)):
            assert torch.allclose(a, b, atol=1e-5)
        mlp.heads[0].down.weight.fill_(0.1)  # a trained one: kept when the grid and width stay
        again = pooled_model(mlp, 4, hidden=16)
        assert torch.equal(again.heads[0].down.weight, mlp.heads[0].down.weight)
        assert torch.allclose(again(x)[0], mlp(x)[0])
        narrower = pooled_model(mlp, 4, hidden=8)  # another width: a new hidden layer, starting at zero output
        assert torch.count_nonzero(narrower.heads[0].down.weight) == 0
        assert torch.equal(narrower.heads[0].fc.weight, mlp.heads[0].fc.weight)


def test_a_network_without_auxiliary_outputs_is_refused():
    with pytest.raises(ValueError, match="no auxiliary outputs"):
        pooled_model(AuxNet(ModelConfig(depth=8, exits=(8,))), 2)


def test_train_classifiers_learns_a_separable_cache():
    # 2 heads over 600 cached 12-d inputs labelled by a fixed linear map: SGD must fit them (chance is 1/3).
    gen = torch.Generator().manual_seed(0)
    model = pooled_model(AuxNet(ModelConfig(depth=14, exits=(9, 14), num_classes=3)), 1)
    model.heads[0].fc = torch.nn.Linear(12, 3)
    feats = [torch.randn(600, 12, generator=gen).half()]
    labels = (feats[0].float() @ torch.randn(12, 3, generator=gen)).argmax(1)
    finals = F.one_hot(labels, 3).float() * 5  # a confident teacher that agrees with the labels
    args = argparse.Namespace(lr=0.5, weight_decay=0.0, batch_size=50, epochs=20, seed=0)
    train_classifiers(model, feats, finals, labels, args, OptimConfig(distill_weight=0.5), log=lambda *a: None)
    with torch.no_grad():
        accuracy = (model.heads[0].fc(feats[0].float()).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.95


def _heads_args(tiny_run, out, *extra):
    return get_args_parser().parse_args(["--checkpoint", str(tiny_run), "--out", str(out), "--views", "2", "--epochs", "2",
                                         "--batch-size", "128", "--precision", "fp32", "--device", "cpu", *extra])


def test_heads_end_to_end_keeps_the_trunk_and_exports(tiny_run, tmp_path):
    from export.build import export_model

    record = main(_heads_args(tiny_run, tmp_path / "h"), log=lambda *a: None)
    src, new = load_checkpoint(tiny_run), load_checkpoint(tmp_path / "h")
    assert new["config"]["aux_head_pool"] == 4 and record["pool"] == 4 and record["views"] == 2
    assert json.loads((tmp_path / "h" / "heads.json").read_text()) == record
    for key, value in src["model"].items():
        if key == "heads.0.fc.weight":
            assert new["model"][key].shape == (10, 32 * 16) != value.shape  # the grid fc
        elif key == "heads.0.fc.bias":
            assert not torch.equal(new["model"][key], value)  # trained
        else:  # trunk, final head, every head's batch norm: exactly as trained
            assert torch.equal(new["model"][key], value), key
    spread = pooled_model(model_from_checkpoint(src, "src"), 4).heads[0].fc.weight
    assert not torch.allclose(new["model"]["heads.0.fc.weight"], spread)  # it trained
    assert record["val_top1_err_before"][-1] == record["val_top1_err"][-1]  # the final output did not move
    assert new["metrics"]["val_top1_err"] == record["val_top1_err"] and len(new["metrics"]["test_top1_err"]) == 2
    assert record["test_top1_err"] == new["metrics"]["test_top1_err"]  # bench.paper_tables' grid-head rows read it
    # the same seed gives the same heads
    main(_heads_args(tiny_run, tmp_path / "again"), log=lambda *a: None)
    assert torch.equal(load_checkpoint(tmp_path / "again")["model"]["heads.0.fc.weight"], new["model"]["heads.0.fc.weight"])

    model_dir = export_model(str(tmp_path / "h"), str(tmp_path / "repo"), "grid", measure=False, log=lambda *a: None)
    m = json.loads((model_dir / "manifest.json").read_text())
    assert m["architecture"].endswith("-pool4") and m["model_config"]["aux_head_pool"] == 4
    assert m["training"]["auxiliary_heads_retrained"]["source_sha256"] == record["source_sha256"]
    assert all(e["parity_max_abs_diff"] < 1e-3 for e in m["exits"])  # the grid head's ONNX pooling equals torch's


def test_heads_with_a_hidden_layer_train_it_and_export_it(tiny_run, tmp_path):
    from export.build import export_model

    record = main(_heads_args(tiny_run, tmp_path / "h", "--hidden", "8"), log=lambda *a: None)
    new = load_checkpoint(tmp_path / "h")
    assert new["config"]["aux_head_hidden"] == 8 and record["hidden"] == 8
    assert torch.count_nonzero(new["model"]["heads.0.down.weight"]) > 0  # it trained from zero
    assert "heads.1.up.weight" not in new["model"]  # the final output has no hidden layer
    assert record["val_top1_err_before"][-1] == record["val_top1_err"][-1]
    model_dir = export_model(str(tmp_path / "h"), str(tmp_path / "repo"), "mlp", measure=False, log=lambda *a: None)
    m = json.loads((model_dir / "manifest.json").read_text())
    assert m["architecture"].endswith("-pool4-mlp8") and m["model_config"]["aux_head_hidden"] == 8
    assert all(e["parity_max_abs_diff"] < 1e-3 for e in m["exits"])  # ONNX's head equals torch's


def test_heads_refuses_to_replace_a_checkpoint(tiny_run, tmp_path):
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        main(_heads_args(tiny_run, tmp_path), log=lambda *a: None)
    with pytest.raises(ValueError, match="pool grid 3 does not divide the 16x16 feature map at exit layer 5"):
        main(_heads_args(tiny_run, tmp_path / "x", "--pool", "3"), log=lambda *a: None)


@pytest.mark.parametrize("argv, message", [(["--views", "0"], "--views: 0 must be >= 1"),
                                           (["--lr", "0"], "--lr: 0 must be a number in (0, 10]"),
                                           (["--lr", "inf"], "--lr: inf must be a number in (0, 10]"),  # accepted before
                                           (["--weight-decay", "-1"], "--weight-decay: -1 must be a number in [0, 1)"),
                                           (["--distill-weight", "nan"], "--distill-weight: nan must be a number in [0, 1]"),
                                           (["--out", ""], "--out: '' names no file or folder")])  # wrote into the cwd
def test_heads_options_are_range_checked(argv, message, capsys):
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--checkpoint", "c", "--out", "o", *argv])
    assert message in capsys.readouterr().err


def test_resume_with_another_head_grid_is_refused(tiny_run):
    args = run_parser().parse_args(["--depth", "8", "--exits", "5,8", "--dataset", "synthetic", "--precision", "fp32",
                                    "--device", "cpu", "--epochs", "1", "--batch-size", "64", "--max-batches", "6",
                                    "--val-size", "200", "--seed", "0", "--out", str(tiny_run), "--resume",
                                    "--aux-head-pool", "2"])
    with pytest.raises(ValueError, match="aux_head_pool was 1, now 2"):
        run_main(args)


def test_heads_output_holds_no_optimizer_state_and_cannot_be_resumed(tiny_run, tmp_path):
    # The source's momentum belongs to the heads that were replaced; it made the 160-epoch default 3.5 MB larger.
    main(_heads_args(tiny_run, tmp_path / "h"), log=lambda *a: None)
    assert "method" in load_checkpoint(tiny_run) and "method" not in load_checkpoint(tmp_path / "h")
    args = run_parser().parse_args(["--depth", "8", "--exits", "5,8", "--dataset", "synthetic", "--precision", "fp32",
                                    "--device", "cpu", "--epochs", "2", "--batch-size", "64", "--max-batches", "6",
                                    "--val-size", "200", "--seed", "0", "--out", str(tmp_path / "h"), "--resume",
                                    "--aux-head-pool", "4"])
    with pytest.raises(ValueError, match=r"--resume: .*h/last\.pt holds no training state \(method\): a copy for serving "
                                         r"or training\.heads' output"):
        run_main(args)


def test_serving_copy_keeps_all_but_the_training_state(tiny_run, tmp_path):
    write_serving_copy(tiny_run, tmp_path / "served.pt")
    src, copy = load_checkpoint(tiny_run), load_checkpoint(tmp_path / "served.pt")
    assert set(src) - set(copy) == {"method"}
    assert all(torch.equal(copy["model"][k], v) for k, v in src["model"].items()) and copy["model"].keys() == src["model"].keys()
    assert {k: copy[k] for k in ("config", "epoch", "data", "args")} == {k: src[k] for k in ("config", "epoch", "data", "args")}


def test_a_cache_larger_than_memory_is_refused_before_any_pass(tiny_run, tmp_path, monkeypatch):
    import training.heads as heads

    with pytest.raises(ValueError, match=r"caching 8 views takes 0\.80 GiB on cpu, more than 80% of the 0\.50 GiB "
                                         r"available there: pass --views 4 or fewer"):
        heads.check_cache_fits(8, 2**30 // 10, torch.device("cpu"), 2**29)
    with pytest.raises(ValueError, match="even one view does not fit: use a smaller --pool"):
        heads.check_cache_fits(1, 2**30, torch.device("cpu"), 2**30)
    heads.check_cache_fits(8, 2**30 // 10, torch.device("cpu"), None)  # unknown: no refusal
    passes = []
    monkeypatch.setattr(heads, "cache_views", lambda *a, **k: passes.append(1))
    monkeypatch.setattr(heads, "available_memory", lambda device: 1000)
    with pytest.raises(ValueError, match="GiB available there"):
        main(_heads_args(tiny_run, tmp_path / "h"), log=lambda *a: None)
    assert passes == [] and not (tmp_path / "h" / "last.pt").exists()


def test_available_memory_on_the_cpu_is_what_the_servers_load_check_reads(monkeypatch):
    """The CPU figure is server/load_memory.py's (host and cgroup v1/v2 trees: tests/server/test_load_memory.py)."""
    from server import load_memory
    from training.heads import available_memory

    cpu = torch.device("cpu")
    monkeypatch.setattr(load_memory, "available", lambda: load_memory.Available(3000000000, "a test's figure"))
    assert available_memory(cpu) == 3000000000
    monkeypatch.setattr(load_memory, "available", lambda: None)
    assert available_memory(cpu) is None
