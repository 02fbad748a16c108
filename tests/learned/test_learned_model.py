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
@pytest.mark.parametrize("name", ["resizer_n16_r1", "resizer_n16_r1_luma", "resizer_n16_r1_lumahp"])
def test_zero_init_is_exact_skip_interpolation(interp, name):
    from resize_pipeline.learned.model import interpolate

    net = create_resizer(name, interpolation=interp).eval()
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


@pytest.mark.parametrize("name", [v for v in list_variants() if v.endswith(("_luma", "_lumahp"))])
def test_colour_safe_variants_keep_grey_grey_by_construction(name):
    torch.manual_seed(1)
    net = create_resizer(name, zero_init_last=False).eval()
    for p in net.out_conv.parameters():  # a large residual: the test must not pass by being tiny
        torch.nn.init.normal_(p, std=0.5)
    grey = torch.rand(2, 1, 40, 36).expand(2, 3, 40, 36)
    with torch.no_grad():
        y = net(grey, (20, 18))
    assert (y[:, 0] - y[:, 1]).abs().max() == 0 and (y[:, 1] - y[:, 2]).abs().max() == 0
    with torch.no_grad():
        skip = torch.nn.functional.interpolate(grey, (20, 18), mode="bilinear", align_corners=False)
    assert (y - skip).abs().max() > 0.05  # the residual is really there


def test_paper_variant_is_not_colour_safe():
    """The counterpart: the paper's 3-channel residual tints a grey input once trained (random here)."""
    torch.manual_seed(1)
    net = create_resizer("resizer_n16_r1", zero_init_last=False).eval()
    grey = torch.rand(1, 1, 40, 40).expand(1, 3, 40, 40)
    with torch.no_grad():
        y = net(grey, (20, 20))
    assert (y[:, 0] - y[:, 1]).abs().max() > 1e-3


def test_highpass_residual_has_no_local_mean():
    from resize_pipeline.learned.model import highpass

    const = torch.full((1, 1, 12, 10), 0.3)
    assert highpass(const, 5).abs().max() < 1e-7  # a brightness shift is removed entirely
    x = torch.rand(1, 1, 30, 30)
    hp = highpass(x, 5)
    inner = torch.nn.functional.avg_pool2d(hp, 5, 1)  # box means well inside are small
    assert inner.abs().mean() < 0.5 * hp.abs().mean()


def test_colour_safe_param_count_and_names():
    net = create_resizer("resizer_n16_r1_lumahp")
    assert net.out_conv.out_channels == 1
    assert sum(p.numel() for p in net.parameters()) == 12035 - 2 * (16 * 49 + 1)
    from resize_pipeline.learned.model import DEFAULT_VARIANT, PAPER_VARIANT, variant_name

    assert variant_name(net.config) == "resizer_n16_r1_lumahp" == DEFAULT_VARIANT
    assert PAPER_VARIANT in list_variants()
    with pytest.raises(ValueError, match="residual"):
        ResizerConfig(residual="yuv")
    with pytest.raises(ValueError, match="odd"):
        ResizerConfig(residual="luma-hp", highpass_kernel=4)


@pytest.mark.parametrize("name", ["resizer_n16_r1_luma", "resizer_n16_r2_lumahp"])
def test_folded_matches_unfolded_colour_safe(name):
    net = trained_net(name)
    folded = fold_batchnorm(net)
    x = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        assert (net(x, (24, 20)) - folded(x, (24, 20))).abs().max() < 1e-4
        scripted = torch.jit.script(folded)
        torch.testing.assert_close(scripted(x, (24, 20)), folded(x, (24, 20)))


def test_old_configs_without_residual_load_as_paper():
    cfg = ResizerConfig.from_dict({"channels": 16, "blocks": 1, "interpolation": "bilinear"})
    assert cfg.residual == "rgb" and cfg.residual_channels == 3
