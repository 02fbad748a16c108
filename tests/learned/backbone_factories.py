"""Backbone factories for ``--backbone backbone_factories:NAME`` in the tests (a plain module on the
test path; subprocess tests put this folder on PYTHONPATH). Like torchvision models, they take
ImageNet-normalised float RGB."""

from __future__ import annotations

from torch import nn


def tiny_cnn(num_classes: int) -> nn.Module:
    """conv-BN-ReLU x2, global pool, linear: a few hundred parameters, any input size."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def not_a_module(num_classes: int) -> str:
    return "oops"


def broken(num_classes: int) -> nn.Module:
    raise RuntimeError("factory failed on purpose")


class _Overflow(nn.Module):
    """tiny_cnn whose logits are scaled past float32's range on the third call: a run that diverges
    at step 3 (inf logits give a NaN loss)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = tiny_cnn(num_classes)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.net(x)
        return out * 1e38 * 1e38 if self.calls >= 3 else out


def overflows_at_step_3(num_classes: int) -> nn.Module:
    return _Overflow(num_classes)
