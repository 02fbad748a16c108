import pytest
import torch
from helpers_learned import trained_net

from resize_pipeline.learned.folding import fold_batchnorm
from resize_pipeline.learned.model import (
    INTERPOLATIONS,
    ResizerConfig,
    create_resizer,
    list_variants,
    variant_config,
)


@pytest.mark.parametrize("name", list_variants())
def test_every_variant_shape_no_nan(name):
    torch.manual_seed(0)
    net = create_resizer(name, zero_init_last=False).eval()
    x = torch.rand(2, 3, 37, 53)
    for size in [(18, 26), (64, 80), (37, 53)]:  # down, up, same
        y = net(x, size)
        assert y.shape == (2, 3, *size)
        assert torch.isfinite(y).all()


def test_default_param_count():
    net = create_resizer()
    conv_weights = sum(p.numel() for p in net.parameters() if p.dim() == 4)
    assert conv_weights == 11872  # 7x7 3->16, 1x1, 2x 3x3 (block), 3x3 (tail), 7x7 16->3
    assert sum(p.numel() for p in net.parameters()) == 12035


@pytest.mark.parametrize("interp", INTERPOLATIONS)
def test_zero_init_is_exact_skip_interpolation(interp):
    from resize_pipeline.learned.model import interpolate

    net = create_resizer(interpolation=interp).eval()
    x = torch.rand(1, 3, 40, 40)
    torch.testing.assert_close(net(x, (20, 20)), interpolate(x, (20, 20), interp), atol=1e-6, rtol=0)


def test_config_validation_and_roundtrip():
    with pytest.raises(ValueError, match="bilinear"):
        ResizerConfig(interpolation="nearest")
    with pytest.raises(ValueError, match="unknown resizer variant"):
        variant_config("resizer_n7_r9")
    cfg = variant_config("resizer_n32_r2", input_scale=3.0)
    assert ResizerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown resizer config keys"):
        ResizerConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("name", ["resizer_n16_r1", "resizer_n32_r3"])
@pytest.mark.parametrize("interp", ["bilinear", "bicubic-aa"])
def test_folded_matches_unfolded(name, interp):
    net = trained_net(name, interpolation=interp)
    bn = net.head[4]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # stats are non-trivial
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(3, 3, 64, 48)
    with torch.no_grad():
        for size in [(32, 24), (90, 70)]:
            diff = (net(x, size) - folded(x, size)).abs().max().item()
            assert diff < 1e-4, diff


def test_training_form_is_scriptable():
    net = trained_net()
    scripted = torch.jit.script(net)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, (16, 16)), net(x, (16, 16)))
