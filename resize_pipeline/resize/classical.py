"""Classical filters with Pillow's semantics (antialiased where Pillow is)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from resize_pipeline.geometry import ResizeOp
from resize_pipeline.resize.base import Resizer

FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,  # area averaging, like OpenCV INTER_AREA when downscaling
}


class ClassicalResizer(Resizer):
    """Pillow ``Image.resize`` with the crop box, per image (Pillow releases the GIL while resizing)."""

    def __init__(self, filter_name: str = "bilinear") -> None:
        if filter_name not in FILTERS:
            raise ValueError(f"unknown filter {filter_name!r}; expected one of {', '.join(FILTERS)}")
        self.name = filter_name
        self.filter = FILTERS[filter_name]

    def resize_one(self, image: np.ndarray | Image.Image, op: ResizeOp) -> np.ndarray:
        pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
        out = pil.resize(op.size, self.filter, box=op.box)
        return np.asarray(out)

    def resize(self, images: Sequence[np.ndarray], ops: Sequence[ResizeOp]) -> list[np.ndarray]:
        return [self.resize_one(img, op) for img, op in zip(images, ops, strict=True)]
