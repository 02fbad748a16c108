"""The decoder interface and the colour rule every decoder follows.

Colour rule (documented in the README): the output is always uint8 HWC RGB.
- RGB, YCbCr, LAB, HSV: converted to RGB by Pillow.
- L / 1: grey replicated to three channels.
- Anything with alpha (RGBA, LA, PA, P with a transparency entry, La, RGBa): alpha-composited over the
  configured ``background`` colour (default white), alpha dropped.
- CMYK (including Adobe/YCCK JPEGs, which Pillow inverts on load): Pillow's CMYK -> RGB.
- 16/32-bit integer greys (I;16, I;16B, I): the top 8 of 16 bits (``v >> 8``, clipped to 0..65535 first).
- F (float): clipped to 0..255.
- Animated GIF / WebP / multi-page TIFF: the first frame.
- EXIF orientation is applied before anything else looks at the size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

#: given the decoded (oriented) full size, the smallest (w, h) the resize still needs (JPEG draft).
SizeRequest = Callable[[int, int], tuple[int, int]]


class Decoder(ABC):
    """Decodes a batch of encoded images; per-sample failures come back as exceptions, in place."""

    name: str = "decoder"

    @abstractmethod
    def decode(
        self, blobs: Sequence[bytes], size_request: SizeRequest | None = None
    ) -> list[np.ndarray | Exception]:
        """Decode each blob to uint8 HWC RGB, or return the exception that stopped it."""

    def describe(self) -> dict:
        """What goes into the manifest about this decoder."""
        return {"name": self.name}

    def decode_sized(
        self, blobs: Sequence[bytes], size_request: SizeRequest | None = None
    ) -> list[tuple[np.ndarray, tuple[int, int]] | Exception]:
        """Like `decode`, with each image's original (oriented) ``(w, h)``, which differs from the
        array's when the decoder downscaled while decoding (JPEG draft)."""
        return [r if isinstance(r, Exception) else (r, (r.shape[1], r.shape[0])) for r in self.decode(blobs, size_request)]


def to_rgb_image(img, background: tuple[int, int, int] = (255, 255, 255)):
    """Apply the colour rule to a loaded PIL image; returns a PIL image in mode RGB."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        arr = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float32), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def to_rgb_array(img, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Apply the colour rule to a loaded PIL image; returns uint8 HWC RGB (contiguous)."""
    return np.ascontiguousarray(np.asarray(to_rgb_image(img, background), dtype=np.uint8))
