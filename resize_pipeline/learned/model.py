"""The learned resizer CNN (Talebi & Milanfar, ICCV 2021) and a timm-style registry of variants.

Contract of every resizer module (ours, or a user's TorchScript / torch.export file):
``forward(x, size)`` with ``x`` a float32 (B, 3, H, W) RGB tensor **in [0, 1]** (not normalised) and
``size = (h, w)`` (torch order) returns a float (B, 3, h, w) tensor in ~[0, 1] (not clamped; the caller
clamps and converts to uint8 once). Normalisation by the config's mean/std happens inside the module,
so exported artifacts carry it with them.

Architecture (defaults n=16, r=1; ``xn`` = x normalised by mean/std)::

    skip   = interp(x, size)                       # on the raw [0, 1] image
    f      = BN(lrelu(conv1x1(lrelu(conv7x7(xn)))))
    b      = interp(f, size)                       # bottleneck: any size / ratio
    h      = b; r times: h = h + BN(conv3x3(lrelu(BN(conv3x3(h)))))
    d      = conv7x7(BN(conv3x3(h)) + b)           # the residual
    y      = skip + residual(d)

``residual`` (`ResizerConfig.residual`):

- ``rgb`` (the paper): ``d`` has 3 channels in normalised units, ``y = skip + d * std``. It can shift
  colours: nothing ties the three channels together.
- ``luma``: ``d`` has 1 channel (pixel units) added equally to R, G and B. Grey stays grey by
  construction, but the residual may still move the local brightness.
- ``luma-hp`` (the bundled variant): like ``luma``, high-passed by subtracting its own
  ``highpass_kernel`` x ``highpass_kernel`` box mean, so it adds detail without moving the local mean:
  grey stays grey and the low frequencies stay those of the skip interpolation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

#: names of the interpolations used for the image skip and the feature bottleneck.
INTERPOLATIONS = ("bilinear", "bicubic", "bilinear-aa", "bicubic-aa")
#: how the last conv's output is added to the image skip (see the module docstring).
RESIDUALS = ("rgb", "luma", "luma-hp")
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
    #: "rgb" = the paper's 3-channel residual; "luma" / "luma-hp" = colour-safe (see module docstring).
    residual: str = "rgb"
    highpass_kernel: int = 5  # box side for "luma-hp" (odd)
    input_range: str = field(default="0-1", init=False)  # contract, recorded in the JSON config

    def __post_init__(self) -> None:
        if self.residual not in RESIDUALS:
            raise ValueError(f"unknown residual {self.residual!r}; expected one of {', '.join(RESIDUALS)}")
        if self.highpass_kernel < 1 or self.highpass_kernel % 2 == 0:
            raise ValueError(f"highpass_kernel must be a positive odd number, got {self.highpass_kernel}")
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

    @property
    def residual_channels(self) -> int:
        return 3 if self.residual == "rgb" else 1

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


def highpass(d: torch.Tensor, kernel: int) -> torch.Tensor:
    """``d`` minus its own ``kernel`` x ``kernel`` box mean (borders: mean over the pixels inside)."""
    return d - F.avg_pool2d(d, kernel, 1, kernel // 2, count_include_pad=False)


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
        self.out_conv = nn.Conv2d(n, cfg.residual_channels, 7, padding=3)
        self.rgb_residual = cfg.residual == "rgb"
        self.highpass_kernel = cfg.highpass_kernel if cfg.residual == "luma-hp" else 0
        if cfg.zero_init_last:
            nn.init.zeros_(self.out_conv.weight)
            nn.init.zeros_(self.out_conv.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        skip = interpolate(x, size, self.interpolation)
        xn = (x - self.mean) / self.std  # type: ignore[operator]
        b = interpolate(self.head(xn), size, self.interpolation)
        h = self.tail_bn(self.tail_conv(self.blocks(b))) + b
        d = self.out_conv(h)
        if self.rgb_residual:
            # normalised units -> pixel units, per channel
            d = d * self.std  # type: ignore[operator]
        elif self.highpass_kernel > 0:
            d = highpass(d, self.highpass_kernel)
        return skip + d  # a one-channel residual broadcasts: the same value on R, G and B


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


_RESIDUAL_SUFFIX = {"rgb": "", "luma": "_luma", "luma-hp": "_lumahp"}


def variant_name(config: ResizerConfig) -> str:
    """``resizer_n{n}_r{r}`` (the paper's RGB residual) plus ``_luma`` / ``_lumahp``."""
    return f"resizer_n{config.channels}_r{config.blocks}{_RESIDUAL_SUFFIX[config.residual]}"


for _n in (16, 32):
    for _r in (1, 2, 3, 4):
        for _res, _suffix in _RESIDUAL_SUFFIX.items():
            register_variant(f"resizer_n{_n}_r{_r}{_suffix}", channels=_n, blocks=_r, residual=_res)

#: the paper's architecture (3-channel residual): kept for comparison and for users who want it.
PAPER_VARIANT = "resizer_n16_r1"
#: the bundled checkpoint's variant: colour-safe (one-channel high-passed residual).
DEFAULT_VARIANT = "resizer_n16_r1_lumahp"


def config_with(config: ResizerConfig, **changes) -> ResizerConfig:
    return replace(config, **changes)
