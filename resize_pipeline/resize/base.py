"""The resizer interface: a batch of decoded images in, a batch of resized images out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from resize_pipeline.geometry import ResizeOp


class Resizer(ABC):
    """Resizes uint8 HWC RGB images.

    `resize` receives the decoded images (any sizes, mixed in one batch) and one `ResizeOp` each, and
    returns uint8 HWC RGB arrays of exactly ``op.size`` (crop `box` applied, no padding: the resize
    stage pads). Implementations may batch internally (the learned resizer groups equal shapes).
    """

    name: str = "resizer"
    #: how much larger than the output the decoder should keep the image (JPEG draft decoding).
    #: The learned resizer wants its input at `input_scale` x the target size.
    input_scale: float = 2.0

    @abstractmethod
    def resize(self, images: Sequence[np.ndarray], ops: Sequence[ResizeOp]) -> list[np.ndarray]:
        """Resize each image by its op."""

    def describe(self) -> dict:
        """What goes into the manifest about this resizer."""
        return {"name": self.name}
