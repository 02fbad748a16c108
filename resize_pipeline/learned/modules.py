"""The modules a training run puts in front of and around the classifier.

- `FixedResizer`: a classical resize (torch ops) with the learned resizer's call signature;
- `FrozenResizer`: an exported resizer (``learned:PATH``), loaded and verified, never trained;
- `ResizeThenClassify`: resizer -> classifier as one module (what DistributedDataParallel wraps);
- `GaussianLowpass`: the blur of the fidelity term.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resize_pipeline.learned.model import interpolate


class FixedResizer(nn.Module):
    """A classical resize as a module (no parameters), same call signature as the learned one."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.mode == "area":
            return F.interpolate(x, size=size, mode="area")
        return interpolate(x, size, self.mode)


class FrozenResizer(nn.Module):
    """An exported resizer (`export.load_resizer_module`: our artifact, TorchScript or ``.pt2``) that
    a backbone is trained behind: its weights never change (no gradients, eval mode always)."""

    def __init__(self, path: str) -> None:
        from resize_pipeline.learned.export import load_resizer_module

        super().__init__()
        module, meta = load_resizer_module(path)
        for p in module.parameters():
            p.requires_grad_(False)
        if meta.get("format") != "torch.export":  # exported programs refuse eval(); they are frozen anyway
            module.eval()
        self.net = module
        self.meta: dict[str, Any] = meta
        self.input_scale = float(meta["input_scale"])
        self.training = False

    def train(self, mode: bool = True) -> FrozenResizer:
        return self  # frozen: stays in eval mode (its BN, if any, never updates), whatever the caller asks

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.net(x, size)


class ResizeThenClassify(nn.Module):
    """resizer -> classifier as one module (what DistributedDataParallel wraps); returns both outputs."""

    def __init__(self, resizer: nn.Module, classifier: nn.Module, size: tuple[int, int], channels_last: bool):
        super().__init__()
        self.resizer, self.classifier, self.size, self.channels_last = resizer, classifier, size, channels_last

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.resizer(x, self.size)
        if self.channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        return self.classifier(y), y


class GaussianLowpass(nn.Module):
    """Depthwise Gaussian blur (reflect padding) for the fidelity term."""

    kernel: torch.Tensor

    def __init__(self, sigma: float = 2.0) -> None:
        super().__init__()
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        self.radius = radius
        self.register_buffer("kernel", k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, r = x.shape[1], self.radius
        h, w = x.shape[-2:]
        mode = "reflect" if r < min(h, w) else "replicate"
        x = F.pad(x, (r, r, r, r), mode=mode)
        kx = self.kernel.to(x.dtype).view(1, 1, 1, -1).expand(c, 1, 1, -1)
        ky = self.kernel.to(x.dtype).view(1, 1, -1, 1).expand(c, 1, -1, 1)
        return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)
