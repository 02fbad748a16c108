"""`--backbone`: small, torchvision:/timm: (clear error when not importable), MODULE:CALLABLE, weights."""

import sys

import pytest
import torch
from helpers_learned import gpu, needs_cuda

from resize_pipeline.cli import main
from resize_pipeline.errors import ConfigError
from resize_pipeline.learned.backbones import (
    BackboneSpec,
    Normalized,
    backbone_state_dict,
    build_backbone,
    load_backbone_weights,
)
from resize_pipeline.learned.classifier import SmallResNet


@pytest.mark.parametrize(
    "spec, kind, name",
    [
        ("small", "small", ""),
        ("torchvision:resnet50", "torchvision", "resnet50"),
        ("timm:convnext_tiny", "timm", "convnext_tiny"),
        ("backbone_factories:tiny_cnn", "callable", "backbone_factories:tiny_cnn"),
        ("pkg.sub.mod:make", "callable", "pkg.sub.mod:make"),
    ],
)
def test_parse(spec, kind, name):
    assert BackboneSpec.parse(spec) == BackboneSpec(kind, name)


@pytest.mark.parametrize("spec", ["", "resnet50", "torchvision:", ":f", "bad-mod:f", "mod:not-a-name", "a..b:f"])
def test_parse_rejects(spec):
    with pytest.raises(ConfigError, match="--backbone"):
        BackboneSpec.parse(spec)


def test_small_and_factory_take_unit_range_rgb():
    small = build_backbone("small", 3, width=4)
    assert isinstance(small, SmallResNet)
    net = build_backbone("backbone_factories:tiny_cnn", 5)
    assert isinstance(net, Normalized)  # third-party backbones get ImageNet normalisation in front
    x = torch.rand(2, 3, 16, 16)
    assert net(x).shape == (2, 5) and small(x).shape == (2, 3)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    net.eval()
    torch.testing.assert_close(net(x), net.backbone((x - mean) / std))


@pytest.mark.parametrize(
    "spec, match",
    [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("backbone_factories:missing", "has no callable 'missing'"),
        ("backbone_factories:not_a_module", "returned str, not an nn.Module"),
        ("backbone_factories:broken", "raised RuntimeError: factory failed on purpose"),
    ],
)
def test_factory_errors_are_one_line(spec, match):
    with pytest.raises(ConfigError, match=match) as e:
        build_backbone(spec, 3)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec, package", [("torchvision:resnet18", "torchvision"), ("timm:resnet18", "timm")])
def test_unimportable_package_is_a_clear_error(spec, package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # what a missing (or CPU-incompatible) install gives
    monkeypatch.setitem(sys.modules, f"{package}.models", None)
    with pytest.raises(ConfigError, match=f"cannot import {package}") as e:
        build_backbone(spec, 3)
    assert "\n" not in str(e.value)


def test_cli_exit_2_for_unimportable_backbone(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    rc = main(["train", "--backbone", "torchvision:resnet50", "--size", "8", "--num-train", "8", "--num-val", "4",
               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot import torchvision" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    rc = main(["train", "--backbone", "nonsense", "--no-progress"])
    assert rc == 2 and "--backbone 'nonsense'" in capsys.readouterr().err


def test_weights_loaded_head_mismatch_skipped(tmp_path):
    src = build_backbone("backbone_factories:tiny_cnn", 10)
    torch.nn.init.normal_(src.backbone[0].weight)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in backbone_state_dict(src).items()}}, path)
    dst = build_backbone("backbone_factories:tiny_cnn", 3, weights=str(path))
    assert torch.equal(dst.backbone[0].weight, src.backbone[0].weight)  # the body came over
    assert dst.backbone[-1].weight.shape == (3, 8)  # the 10-class head did not (wrong shape)
    loaded, skipped = load_backbone_weights(build_backbone("backbone_factories:tiny_cnn", 3).backbone, str(path))
    assert skipped == ["8.bias", "8.weight"] and "0.weight" in loaded


def test_weights_safetensors_and_errors(tmp_path):
    from safetensors.torch import save_file

    src = SmallResNet(4, 4)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "s.safetensors"))
    dst = build_backbone("small", 4, width=4, weights=str(tmp_path / "s.safetensors"))
    assert torch.equal(dst.stem[0].weight, src.stem[0].weight)
    with pytest.raises(ConfigError, match="no such file"):
        build_backbone("small", 4, weights=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read a state dict"):
        build_backbone("small", 4, weights=str(tmp_path / "junk.pt"))
    torch.save({"a": 1}, tmp_path / "notsd.pt")
    with pytest.raises(ConfigError, match="not a state dict"):
        build_backbone("small", 4, weights=str(tmp_path / "notsd.pt"))
    torch.save({"x.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="none of its 1 tensors fits"):
        build_backbone("small", 4, weights=str(tmp_path / "other.pt"))


@gpu
@needs_cuda
def test_torchvision_backbone_trains_on_cuda(tmp_path):
    pytest.importorskip("torchvision")
    from helpers_learned import tiny_train_config

    from resize_pipeline.learned.train import train

    res = train(tiny_train_config(backbone="torchvision:resnet18", device="cuda", target_size=32, num_train=64,
                                  batch_size=16, max_steps=6, pretrain_epochs=1, export_dir=str(tmp_path / "r")))
    assert res.pretrain_steps == 4 and res.steps == 6 and res.export_dir
    assert next(res.classifier.parameters()).is_cuda
