"""CifarNet flags: exact parameter counts, the seed's layer order, outputs for every flag mix."""

import itertools

import pytest
import torch
from torch import nn

from cifarnet.config.presets import PRESETS, list_presets, preset_model
from cifarnet.config.schema import ModelConfig, build_config
from cifarnet.model.cifarnet import CifarNet, count_params, paired_init

EXPECTED_PARAMS = {
    "seed": 153_104,
    "no_residual_add": 153_104,
    "no_dilation": 153_104,
    "no_pointwise_after_stride": 147_616,
    "no_depthwise": 498_864,
    "separable_everywhere": 113_104,
    "extra_adds": 153_104,
}


@pytest.mark.parametrize("name", list_presets())
def test_preset_parameter_counts(name: str) -> None:
    assert name in EXPECTED_PARAMS, f"add the expected parameter count of preset {name!r}"
    assert count_params(CifarNet(preset_model(name))) == EXPECTED_PARAMS[name]


def test_every_preset_is_covered() -> None:
    assert set(PRESETS) == set(EXPECTED_PARAMS)


FLAGS = ["residual_add", "pointwise_after_stride", "depthwise", "regular_after_depthwise",
         "extra_adds"]


@pytest.mark.parametrize("values", list(itertools.product([True, False], repeat=len(FLAGS))))
def test_every_flag_combination_gives_log_probs(values: tuple[bool, ...]) -> None:
    torch.manual_seed(0)
    for dilation in (1, 2):
        cfg = ModelConfig(**dict(zip(FLAGS, values)), dilation=dilation)
        out = CifarNet(cfg).eval()(torch.randn(3, 3, 32, 32))
        assert out.shape == (3, 10)
        assert torch.isfinite(out).all()
        assert torch.allclose(out.exp().sum(dim=1), torch.ones(3), atol=1e-5)


def _seed_reference() -> nn.Module:
    """The seed write-up's layers, written out as there (Conv -> ReLU -> BN), for comparison."""
    def c(i, o, k=3, s=1, d=1, g=1, p=None, bias=True):
        return nn.Conv2d(i, o, k, stride=s, dilation=d, groups=g,
                         padding=(d * (k - 1) // 2) if p is None else p, bias=bias)
    return nn.ModuleDict({
        "convblock1a": nn.Sequential(c(3, 16), nn.ReLU(), nn.BatchNorm2d(16)),
        "convblock1b": nn.Sequential(c(16, 16), nn.ReLU(), nn.BatchNorm2d(16)),
        "convpool1": nn.Sequential(c(16, 16, s=2), c(16, 16, 1)),
        "convblock2a": nn.Sequential(c(16, 16, g=16), c(16, 32, 1), nn.ReLU(), nn.BatchNorm2d(32)),
        "convblock2b": nn.Sequential(c(32, 32), nn.ReLU(), nn.BatchNorm2d(32)),
        "convpool2": nn.Sequential(c(32, 32, s=2), c(32, 32, 1)),
        "convblock3a": nn.Sequential(c(32, 32, g=32), c(32, 64, 1), nn.ReLU(), nn.BatchNorm2d(64)),
        "convblock3b": nn.Sequential(c(64, 64, d=2), nn.ReLU(), nn.BatchNorm2d(64)),
        "convpool3": nn.Sequential(c(64, 64, s=2), c(64, 64, 1)),
        "convblock4a": nn.Sequential(c(64, 64, g=64), c(64, 128, 1), nn.ReLU(),
                                     nn.BatchNorm2d(128)),
        "convblock4b": nn.Sequential(c(128, 128, g=128), c(128, 256, 1), nn.ReLU(),
                                     nn.BatchNorm2d(256)),
        "convblockf": nn.Sequential(c(256, 10, 1, bias=False)),
    })


def _seed_forward(ref: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    x = ref["convblock1b"](ref["convblock1a"](x))
    x = ref["convpool1"](x)
    x = ref["convblock2b"](ref["convblock2a"](x))
    x = ref["convpool2"](x)
    x = ref["convblock3a"](x)
    x = torch.add(x, ref["convblock3b"](x))
    x = ref["convpool3"](x)
    x = ref["convblock4b"](ref["convblock4a"](x))
    x = nn.functional.avg_pool2d(x, 4)
    return torch.log_softmax(ref["convblockf"](x).view(-1, 10), dim=-1)


def test_defaults_are_the_seed_network_exactly() -> None:
    ours, ref = CifarNet(), _seed_reference()
    ours_state = {k: v for k, v in ours.state_dict().items()}
    ref_state = ref.state_dict()
    assert list(ours_state) == list(ref_state)
    assert all(ours_state[k].shape == ref_state[k].shape for k in ref_state)
    ours.load_state_dict(ref_state)
    ours.eval(), ref.eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(ours(x), _seed_forward(ref, x), atol=1e-6)
    kinds = [type(m).__name__ for m in ours.convblock1a]
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d"]


def test_width_multiplier_and_dropout_are_extra_knobs() -> None:
    wide = build_config({"model.width": 2.0}).model
    assert count_params(CifarNet(wide)) > 153_104 * 3
    assert count_params(CifarNet(ModelConfig(dropout=0.2))) == 153_104


def test_paired_init_shares_weights_of_common_layers() -> None:
    a, b = CifarNet(ModelConfig()), CifarNet(ModelConfig(residual_add=False, dilation=1))
    paired_init(a, 7)
    paired_init(b, 7)
    assert torch.equal(a.convblock1a[0].weight, b.convblock1a[0].weight)
    assert torch.equal(a.convblock4b[1].weight, b.convblock4b[1].weight)
    c = CifarNet(ModelConfig())
    paired_init(c, 8)
    assert not torch.equal(a.convblock1a[0].weight, c.convblock1a[0].weight)
