"""Resizers: classical Pillow filters and the learned CNN resizer.

`get_resizer(spec)` turns a ``--resizer`` value into a `Resizer`:
``nearest|bilinear|bicubic|lanczos|area`` (Pillow), ``learned`` (the bundled checkpoint) or
``learned:PATH`` (an exported checkpoint, TorchScript or torch.export file).
"""

from __future__ import annotations

from resize_pipeline.resize.base import Resizer
from resize_pipeline.resize.classical import FILTERS, ClassicalResizer

RESIZERS = (*FILTERS, "learned", "learned:PATH")


def validate_resizer_spec(spec: str) -> None:
    """Raise ValueError for a spec `get_resizer` would not accept (cheap: loads nothing)."""
    if spec in FILTERS or spec == "learned" or (spec.startswith("learned:") and len(spec) > 8):
        return
    raise ValueError(f"unknown resizer {spec!r}; expected one of {', '.join(RESIZERS)}")


def get_resizer(spec: str, *, device: str = "auto", batch_size: int = 64) -> Resizer:
    """Build the resizer named by `spec`."""
    validate_resizer_spec(spec)
    if spec in FILTERS:
        return ClassicalResizer(spec)
    from resize_pipeline.learned.inference import LearnedResizer  # torch: import lazily

    path = spec.split(":", 1)[1] if ":" in spec else None
    return LearnedResizer(path, device=device, batch_size=batch_size)


__all__ = ["Resizer", "ClassicalResizer", "FILTERS", "RESIZERS", "get_resizer", "validate_resizer_spec"]
