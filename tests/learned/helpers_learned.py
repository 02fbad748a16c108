"""Shared helpers for the learned-resizer tests (a plain module: the tests dir has no __init__.py)."""

from __future__ import annotations

import pytest
import torch

from resize_pipeline.learned.model import LearnedResizerNet, create_resizer

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def trained_net(variant: str = "resizer_n16_r1", steps: int = 5, seed: int = 0, **kw) -> LearnedResizerNet:
    """A resizer after a few SGD steps, so BN running stats and the last conv are non-trivial."""
    torch.manual_seed(seed)
    net = create_resizer(variant, zero_init_last=False, **kw)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    net.train()
    for _ in range(steps):
        x = torch.rand(4, 3, 48, 40)
        y = net(x, (24, 20))
        loss = (y - torch.rand_like(y)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()
