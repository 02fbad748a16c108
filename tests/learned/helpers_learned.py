"""Shared helpers for the learned-resizer tests (a plain module: the tests dir has no __init__.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from resize_pipeline.learned.model import LearnedResizerNet, create_resizer

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def trained_net(variant: str = "resizer_n16_r1", steps: int = 4, seed: int = 0, **kw) -> LearnedResizerNet:
    """A resizer after a few SGD steps, so BN running stats and the last conv are non-trivial."""
    key = (variant, steps, seed, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = _train(variant, steps, seed, **kw)
    return copy.deepcopy(_CACHE[key])


_CACHE: dict = {}


def tiny_train_config(**overrides):
    """A `TrainConfig` that trains a 4-wide classifier on 8 px outputs in a second or two."""
    from resize_pipeline.learned.train import TrainConfig

    values = dict(target_size=8, num_train=16, num_val=8, batch_size=8, max_steps=1, classifier_width=4,
                  device="cpu", progress=False)
    values.update(overrides)
    return TrainConfig(**values)


def _train(variant: str, steps: int, seed: int, **kw) -> LearnedResizerNet:
    torch.manual_seed(seed)
    net = create_resizer(variant, zero_init_last=False, **kw)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    net.train()
    for _ in range(steps):
        x = torch.rand(4, 3, 32, 24)
        y = net(x, (16, 12))
        loss = (y - torch.rand_like(y)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()
