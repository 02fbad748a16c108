"""The classifier the resizer is trained with: the user's own backbone, by name.

``--backbone`` values (`build_backbone`):

- ``small``: the built-in `SmallResNet` (fast on a CPU; the bundled checkpoint's recipe);
- ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None, num_classes=K)``;
- ``timm:NAME``: ``timm.create_model(NAME, pretrained=False, num_classes=K)``;
- ``MODULE:CALLABLE``: any importable factory ``f(num_classes) -> nn.Module`` (``pkg.mod:make``).

Third-party backbones take ImageNet-normalised float RGB, so they are wrapped in `Normalized` (the
resizer hands over [0, 1] RGB). ``--backbone-weights PATH`` loads a local state dict (``torch.save``
or ``.safetensors``) into the backbone before wrapping; tensors whose shape does not fit (a classifier
head trained for another number of classes) are skipped and reported. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from resize_pipeline.errors import ConfigError
from resize_pipeline.learned.model import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

BACKBONE_FORMS = ("small", "torchvision:NAME", "timm:NAME", "MODULE:CALLABLE")


@dataclass(frozen=True, slots=True)
class BackboneSpec:
    """A parsed ``--backbone`` value: kind in (small, torchvision, timm, callable) and its name."""

    kind: str
    name: str = ""

    @classmethod
    def parse(cls, spec: str) -> BackboneSpec:
        spec = spec.strip()
        if spec == "small":
            return cls("small")
        prefix, sep, name = spec.partition(":")
        if not sep or not prefix or not name:
            raise ConfigError(
                f"--backbone {spec!r}: expected one of {', '.join(BACKBONE_FORMS)} (e.g. torchvision:resnet50)"
            )
        if prefix in ("torchvision", "timm"):
            return cls(prefix, name)
        if not all(part.isidentifier() for part in prefix.split(".")) or not name.isidentifier():
            raise ConfigError(
                f"--backbone {spec!r}: MODULE:CALLABLE needs a dotted module path and a function name"
            )
        return cls("callable", spec)

    @property
    def normalizes_itself(self) -> bool:
        """`small` takes [0, 1] RGB and normalises inside; every other backbone wants normalised input."""
        return self.kind == "small"


class Normalized(nn.Module):
    """[0, 1] RGB -> ImageNet-normalised -> `backbone`. The state dict keeps the backbone's own keys
    under ``backbone.``, so `backbone_state_dict` gives back a plain state dict."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, backbone: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)


def _import(package: str, spec: str):
    try:
        return importlib.import_module(package)
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch raises RuntimeError etc.
        raise ConfigError(
            f"--backbone {spec}: cannot import {package} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"install the {package.split('.')[0]} build that matches torch {torch.__version__}"
        ) from None


def _factory(spec: BackboneSpec):
    """The callable behind a ``MODULE:CALLABLE`` spec (imported, not called)."""
    module_name, _, attr = spec.name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--backbone {spec.name}: cannot import module {module_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--backbone {spec.name}: module {module_name!r} has no callable {attr!r}")
    return factory


def check_backbone(spec: str) -> BackboneSpec:
    """Parse `spec` and import what it needs (torchvision / timm / the factory's module), building
    nothing: a run fails on a missing package before it spends time on data."""
    parsed = BackboneSpec.parse(spec)
    if parsed.kind == "torchvision":
        _import("torchvision.models", spec)
    elif parsed.kind == "timm":
        _import("timm", spec)
    elif parsed.kind == "callable":
        _factory(parsed)
    return parsed


def _raw_backbone(spec: BackboneSpec, num_classes: int, width: int) -> nn.Module:
    if spec.kind == "small":
        from resize_pipeline.learned.classifier import SmallResNet

        return SmallResNet(num_classes, width)
    label = f"{spec.kind}:{spec.name}" if spec.kind != "callable" else spec.name
    if spec.kind == "torchvision":
        models = _import("torchvision.models", label)
        try:
            return models.get_model(spec.name, weights=None, num_classes=num_classes)
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"--backbone {label}: unknown torchvision model ({exc})") from None
    if spec.kind == "timm":
        timm = _import("timm", label)
        try:
            return timm.create_model(spec.name, pretrained=False, num_classes=num_classes)
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise ConfigError(f"--backbone {label}: {str(exc).splitlines()[0]}") from None
    factory = _factory(spec)
    attr = spec.name.partition(":")[2]
    try:
        model = factory(num_classes)
    except Exception as exc:  # noqa: BLE001 - user code: report it in one line
        raise ConfigError(f"--backbone {label}: {attr}({num_classes}) raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--backbone {label}: {attr}({num_classes}) returned {type(model).__name__}, not an nn.Module")
    return model


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A local state dict (``torch.save`` of a state dict or of ``{"state_dict"|"model": ...}``, or
    ``.safetensors``); ``module.`` prefixes (DDP) are stripped. Never unpickles arbitrary objects."""
    if not os.path.isfile(path):
        raise ConfigError(f"--backbone-weights {path}: no such file")
    state: Any
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle / zip / safetensors errors differ by version
        raise ConfigError(f"--backbone-weights {path}: cannot read a state dict ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model", "backbone"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--backbone-weights {path}: not a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(model: nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Load what fits; returns (loaded keys, skipped keys). Refuses a file that matches nothing."""
    state = read_state_dict(path)
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    skipped = sorted(set(state) - set(fits))
    if not fits:
        raise ConfigError(
            f"--backbone-weights {path}: none of its {len(state)} tensors fits the backbone "
            f"(first keys: {', '.join(list(state)[:3])}; backbone: {', '.join(list(own)[:3])})"
        )
    model.load_state_dict(fits, strict=False)
    missing = sorted(set(own) - set(fits))
    log.info(
        "backbone weights %s: loaded %d tensors; skipped %d (shape/name mismatch: %s); left at init %d (%s)",
        path, len(fits), len(skipped), ", ".join(skipped[:6]), len(missing), ", ".join(missing[:6]),
    )
    return sorted(fits), skipped


def build_backbone(spec: str, num_classes: int, *, width: int = 32, weights: str | None = None) -> nn.Module:
    """The classifier for `spec`, taking [0, 1] float RGB (B, 3, h, w) and returning logits."""
    if num_classes < 2:
        raise ConfigError(f"the data has {num_classes} class(es); a classifier needs at least 2")
    parsed = BackboneSpec.parse(spec)
    model = _raw_backbone(parsed, num_classes, width)
    if weights:
        load_backbone_weights(model, weights)
    return model if parsed.normalizes_itself else Normalized(model)


def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain backbone's state dict (what ``--backbone-weights`` reads back)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    inner = model.backbone if isinstance(model, Normalized) else model
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}
