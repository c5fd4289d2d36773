import math
import warnings

import pytest
import torch
from torch import nn

from training.config import ModelConfig
from training.model import AuxNet, count_macs, segment_costs
from training.presets import PRESETS, build_model, preset_config


def truncate2(x: float) -> float:
    """The paper's Table 6 truncates to two decimals (0.1867M is printed 0.18M)."""
    return math.floor(x * 100) / 100


def test_auxnet56_5_prefix_params_match_table6():
    model = build_model(preset_config("auxnet56_5"))
    params_m = [truncate2(model.prefix_params(k) / 1e6) for k in range(5)]
    assert params_m == [0.03, 0.09, 0.18, 0.48, 0.85]


def test_resnet56_macs_match_known_125m():
    costs = segment_costs(build_model(preset_config("resnet56")))
    assert costs[-1]["mflops"] == pytest.approx(125.49, abs=0.05)  # ResNet-56: 125M multiply-adds


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_runs_forward(name):
    cfg = preset_config(name)
    if cfg.family == "imagenet" and cfg.depth >= 50:
        pytest.importorskip("torch")  # still run: one 224x224 image
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, cfg.image_size, cfg.image_size))
    assert len(out) == len(cfg.exits) == len(PRESETS[name][2])
    assert all(z.shape == (1, cfg.num_classes) for z in out)


def test_segments_chain_reproduces_forward():
    model = build_model(preset_config("auxnet20_2")).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        feats, chained = x, []
        for k in range(model.num_outputs):
            out = model.segment(k)(feats)
            if isinstance(out, tuple):
                feats, logits = out
            else:
                logits = out
            chained.append(logits)
    for a, b in zip(full, chained):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "exits, match",
    [((14, 20), "not on a block boundary"), ((17, 17, 20), "duplicates"), ((17, 23), "beyond depth"),
     ((17,), "last output must be the final layer")],
)
def test_bad_exits_raise_with_valid_layers(exits, match):
    with pytest.raises(ValueError, match=match) as e:
        ModelConfig("cifar", 20, exits)
    if "last output" not in match:
        assert "valid: [3, 5, 7, 9, 11, 13, 15, 17, 20]" in str(e.value)


def test_bad_depth_and_family():
    with pytest.raises(ValueError, match="not 6n\\+2"):
        ModelConfig("cifar", 21, (21,))
    with pytest.raises(ValueError, match="valid: \\[18, 34, 50, 101\\]"):
        ModelConfig("imagenet", 152, (152,))


def test_very_shallow_exit_warns():
    with pytest.warns(UserWarning, match="Sec. 5.2"):
        ModelConfig("cifar", 56, (5, 56))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ModelConfig("cifar", 56, (15, 56))


def test_exit_blocks_follow_design_rule():
    assert preset_config("auxnet56_5").exit_blocks == (7, 12, 17, 22, 27)
    assert preset_config("auxnet50_4").exit_blocks == (7, 10, 13, 16)
    assert preset_config("auxnet34_2").exit_blocks == (14, 16)


def test_count_macs_hand_computed():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    # conv: 8*8 outputs * 4 channels * (3*3*3) taps = 6912; fc: 256 * 2 = 512
    assert count_macs(net, torch.zeros(1, 3, 8, 8)) == 6912 + 512


def test_width_and_shortcut_scale():
    cfg = ModelConfig("cifar", 8, (5, 8), width=2, shortcut_scale=0.5)
    model = AuxNet(cfg)
    assert model.channels == [32, 32, 64, 128]
    assert model.blocks[0].scale == 0.5


def test_config_roundtrip_and_unknown_keys():
    cfg = preset_config("auxnet56_5")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys \\['colour'\\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": 1})


def test_preact_shortcut_changes_only_stage_transitions_and_no_parameter_count():
    import torch

    from training.config import ModelConfig
    from training.model import AuxNet

    raw, pre = AuxNet(ModelConfig(depth=14, exits=(9, 14))), AuxNet(ModelConfig(depth=14, exits=(9, 14), preact_shortcut=True))
    assert (raw.cfg.name(), pre.cfg.name()) == ("AuxNet-14-2", "AuxNet-14-2-preact")
    pre.load_state_dict(raw.state_dict())  # same parameters: option A shortcuts have none either way
    assert sum(p.numel() for p in raw.parameters()) == sum(p.numel() for p in pre.parameters())
    flags = [b.preact_shortcut for b in pre.modules() if hasattr(b, "preact_shortcut")]
    assert flags == [False, False, True, False, True, False]  # 2 blocks per stage: the first of stages 2, 3
    for m in (raw, pre):
        for mod in m.modules():  # running statistics that are not 0/1, so BN-ReLU(x) differs from x
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.fill_(0.3)
        m.eval()
    x = torch.randn(2, 3, 32, 32)
    a, b = raw(x), pre(x)
    assert not torch.allclose(a[-1], b[-1])
