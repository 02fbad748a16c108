"""Resizers: the `Resizer` interface and the classical Pillow filters.

A ``--resizer`` value is ``nearest|bilinear|bicubic|lanczos|area`` (Pillow, built here by
`get_resizer`), ``learned`` (the bundled checkpoint) or ``learned:PATH`` (an exported checkpoint,
TorchScript or torch.export file), which `resize_pipeline.learned` implements on this interface;
`pipeline.build_resizer` builds either for a job.
"""

from __future__ import annotations

from resize_pipeline.resize.base import Resizer
from resize_pipeline.resize.classical import FILTERS, ClassicalResizer

RESIZERS = (*FILTERS, "learned", "learned:PATH")


def validate_resizer_spec(spec: str) -> None:
    """Raise ValueError for a spec no resizer answers to (cheap: loads nothing)."""
    if spec in FILTERS or spec == "learned" or (spec.startswith("learned:") and len(spec) > 8):
        return
    raise ValueError(f"unknown resizer {spec!r}; expected one of {', '.join(RESIZERS)}")


def get_resizer(spec: str) -> ClassicalResizer:
    """Build the classical filter named by `spec`."""
    validate_resizer_spec(spec)
    if spec not in FILTERS:
        raise ValueError(f"{spec!r} is not a classical filter; build learned resizers with "
                         "resize_pipeline.pipeline.build_resizer or resize_pipeline.learned.inference.LearnedResizer")
    return ClassicalResizer(spec)


__all__ = ["Resizer", "ClassicalResizer", "FILTERS", "RESIZERS", "get_resizer", "validate_resizer_spec"]
