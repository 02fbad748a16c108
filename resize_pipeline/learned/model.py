"""The learned resizer CNN (Talebi & Milanfar, ICCV 2021) and a timm-style registry of variants.

Contract of every resizer module (ours, or a user's TorchScript / torch.export file):
``forward(x, size)`` with ``x`` a float32 (B, 3, H, W) RGB tensor **in [0, 1]** (not normalised) and
``size = (h, w)`` (torch order) returns a float (B, 3, h, w) tensor in ~[0, 1] (not clamped; the caller
clamps and converts to uint8 once). Normalisation by the config's mean/std happens inside the module,
so exported artifacts carry it with them.

Architecture (defaults n=16, r=1)::

    skip   = interp(x, size)
    f      = BN(lrelu(conv1x1(lrelu(conv7x7(x)))))
    b      = interp(f, size)                       # bottleneck: any size / ratio
    h      = b; r times: h = h + BN(conv3x3(lrelu(BN(conv3x3(h)))))
    y      = conv7x7(BN(conv3x3(h)) + b) + skip
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

#: names of the interpolations used for the image skip and the feature bottleneck.
INTERPOLATIONS = ("bilinear", "bicubic", "bilinear-aa", "bicubic-aa")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, slots=True)
class ResizerConfig:
    """Architecture and pre-processing of a learned resizer; stored next to the weights as JSON."""

    channels: int = 16  # n
    blocks: int = 1  # r
    interpolation: str = "bilinear"
    negative_slope: float = 0.2
    #: the decoded image is first resized to input_scale x the target size (e.g. 448 for 224).
    input_scale: float = 2.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: zero the last 7x7 conv so the untrained resizer is exactly the skip interpolation (see docs).
    zero_init_last: bool = True
    input_range: str = field(default="0-1", init=False)  # contract, recorded in the JSON config

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}"
            )
        if self.channels < 1 or self.blocks < 0:
            raise ValueError(f"channels must be >= 1 and blocks >= 0, got {self.channels}, {self.blocks}")
        if self.input_scale <= 0:
            raise ValueError(f"input_scale must be > 0, got {self.input_scale}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must have 3 entries and std > 0, got {self.mean}, {self.std}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ResizerConfig:
        d = dict(d)
        d.pop("input_range", None)
        allowed = {f for f in cls.__dataclass_fields__ if f != "input_range"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"unknown resizer config keys {sorted(unknown)}; expected {sorted(allowed)}")
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        return cls(**d)


def interpolate(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (B, C, H, W) to `size` (h, w) with one of `INTERPOLATIONS` (half-pixel centres)."""
    aa = mode.endswith("-aa")
    base = mode[:-3] if aa else mode
    return F.interpolate(x, size=size, mode=base, align_corners=False, antialias=aa)


class ResBlock(nn.Module):
    def __init__(self, n: int, slope: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n, n, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(n)
        self.act = nn.LeakyReLU(slope)
        self.conv2 = nn.Conv2d(n, n, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class LearnedResizerNet(nn.Module):
    """The resizer network; see the module docstring for the (B,3,H,W) [0,1] -> (B,3,h,w) contract."""

    def __init__(self, config: ResizerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ResizerConfig()
        n, s = cfg.channels, cfg.negative_slope
        self.interpolation = cfg.interpolation
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.head = nn.Sequential(
            nn.Conv2d(3, n, 7, padding=3),
            nn.LeakyReLU(s),
            nn.Conv2d(n, n, 1),
            nn.LeakyReLU(s),
            nn.BatchNorm2d(n),
        )
        self.blocks = nn.Sequential(*[ResBlock(n, s) for _ in range(cfg.blocks)])
        self.tail_conv = nn.Conv2d(n, n, 3, padding=1, bias=False)
        self.tail_bn = nn.BatchNorm2d(n)
        self.out_conv = nn.Conv2d(n, 3, 7, padding=3)
        if cfg.zero_init_last:
            nn.init.zeros_(self.out_conv.weight)
            nn.init.zeros_(self.out_conv.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = (x - self.mean) / self.std  # type: ignore[operator]
        skip = interpolate(x, size, self.interpolation)
        b = interpolate(self.head(x), size, self.interpolation)
        h = self.tail_bn(self.tail_conv(self.blocks(b))) + b
        y = self.out_conv(h) + skip
        return y * self.std + self.mean  # type: ignore[operator]


# --- registry (timm-style) ---------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., ResizerConfig]] = {}


def register_variant(name: str, **defaults) -> None:
    """Register `name` -> ResizerConfig(**defaults); overrides may be passed to `create_resizer`."""
    if name in _REGISTRY:
        raise ValueError(f"resizer variant {name!r} is already registered")
    _REGISTRY[name] = lambda **kw: ResizerConfig(**{**defaults, **kw})


def list_variants() -> list[str]:
    return sorted(_REGISTRY)


def variant_config(name: str, **overrides) -> ResizerConfig:
    if name not in _REGISTRY:
        raise ValueError(f"unknown resizer variant {name!r}; expected one of {', '.join(list_variants())}")
    return _REGISTRY[name](**overrides)


def create_resizer(name: str = "resizer_n16_r1", **overrides) -> LearnedResizerNet:
    """Build a registered variant, e.g. ``create_resizer("resizer_n32_r2", interpolation="bicubic")``."""
    return LearnedResizerNet(variant_config(name, **overrides))


def variant_name(config: ResizerConfig) -> str:
    return f"resizer_n{config.channels}_r{config.blocks}"


for _n in (16, 32):
    for _r in (1, 2, 3, 4):
        register_variant(f"resizer_n{_n}_r{_r}", channels=_n, blocks=_r)

DEFAULT_VARIANT = "resizer_n16_r1"


def config_with(config: ResizerConfig, **changes) -> ResizerConfig:
    return replace(config, **changes)
