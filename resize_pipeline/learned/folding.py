"""BatchNorm folding: the inference form of the resizer, with the same forward contract.

Every conv -> BN pair becomes one conv with bias. The head's BN follows a LeakyReLU, so it cannot go
into a conv (the nonlinearity is in between, and pushing it forward would change the zero padding at
the borders); it becomes a per-channel affine that is applied *after* the bottleneck interpolation,
which is exact because interpolation weights sum to one and is 4x cheaper when downscaling 2x.
For the paper's RGB residual the per-channel ``std`` (normalised -> pixel units) goes into the last
conv; the one-channel (``luma``, ``luma-hp``) residuals are already in pixel units.
"""

from __future__ import annotations

import torch
from torch import nn

from resize_pipeline.learned.model import LearnedResizerNet, ResBlock, ResizerConfig, highpass, interpolate


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    return scale, shift


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale, shift = _bn_scale_shift(bn)
    k = conv.kernel_size[0]
    out = nn.Conv2d(conv.in_channels, conv.out_channels, k, padding=k // 2, bias=True)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        out.weight.copy_(conv.weight.detach() * scale.view(-1, 1, 1, 1))
        out.bias.copy_(bias * scale + shift)  # type: ignore[union-attr]
    return out


class FoldedBlock(nn.Module):
    def __init__(self, n: int, slope: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n, n, 3, padding=1)
        self.act = nn.LeakyReLU(slope)
        self.conv2 = nn.Conv2d(n, n, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class FoldedResizerNet(nn.Module):
    """BN-free resizer (inference only); the state dict is what the exported safetensors file holds."""

    def __init__(self, config: ResizerConfig) -> None:
        super().__init__()
        self.config = config
        n, s = config.channels, config.negative_slope
        self.interpolation = config.interpolation
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv_in = nn.Conv2d(3, n, 7, padding=3)
        self.conv_mix = nn.Conv2d(n, n, 1)
        self.act = nn.LeakyReLU(s)
        self.head_scale = nn.Parameter(torch.ones(1, n, 1, 1))
        self.head_shift = nn.Parameter(torch.zeros(1, n, 1, 1))
        self.blocks = nn.Sequential(*[FoldedBlock(n, s) for _ in range(config.blocks)])
        self.tail_conv = nn.Conv2d(n, n, 3, padding=1)
        self.out_conv = nn.Conv2d(n, config.residual_channels, 7, padding=3)
        self.highpass_kernel = config.highpass_kernel if config.residual == "luma-hp" else 0

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        skip = interpolate(x, size, self.interpolation)
        f = self.act(self.conv_mix(self.act(self.conv_in((x - self.mean) * self.inv_std))))  # type: ignore[operator]
        b = interpolate(f, size, self.interpolation) * self.head_scale + self.head_shift
        h = self.tail_conv(self.blocks(b)) + b
        d = self.out_conv(h)
        if self.highpass_kernel > 0:
            d = highpass(d, self.highpass_kernel)
        return skip + d


@torch.no_grad()
def fold_batchnorm(net: LearnedResizerNet) -> FoldedResizerNet:
    """Fold the (running-stat) BatchNorms of `net` into a new `FoldedResizerNet` in eval mode."""
    cfg = net.config
    folded = FoldedResizerNet(cfg)
    conv7, _, conv1, _, bn = net.head
    assert isinstance(bn, nn.BatchNorm2d)
    folded.conv_in.load_state_dict(conv7.state_dict())
    folded.conv_mix.load_state_dict(conv1.state_dict())
    scale, shift = _bn_scale_shift(bn)
    folded.head_scale.copy_(scale.view(1, -1, 1, 1))
    folded.head_shift.copy_(shift.view(1, -1, 1, 1))
    for src, dst in zip(net.blocks, folded.blocks, strict=True):
        assert isinstance(src, ResBlock) and isinstance(dst, FoldedBlock)
        dst.conv1 = _fold(src.conv1, src.bn1)
        dst.conv2 = _fold(src.conv2, src.bn2)
    folded.tail_conv = _fold(net.tail_conv, net.tail_bn)
    scale = torch.tensor(cfg.std if cfg.residual == "rgb" else (1.0,), dtype=torch.float32)
    folded.out_conv.weight.copy_(net.out_conv.weight * scale.view(-1, 1, 1, 1))
    folded.out_conv.bias.copy_(net.out_conv.bias * scale)  # type: ignore[union-attr, operator]
    return folded.eval()
