"""Encode resized uint8 HWC RGB images to bytes: jpg, png, webp, or raw npy (lossless hand-off)."""

from __future__ import annotations

import io

import numpy as np

ENCODINGS = ("jpg", "png", "webp", "npy")


class Encoder:
    """`encode(image) -> bytes`; `ext` is the tar member / file extension."""

    def __init__(self, fmt: str = "jpg", quality: int = 95) -> None:
        if fmt not in ENCODINGS:
            raise ValueError(f"unknown encoding {fmt!r}; expected one of {', '.join(ENCODINGS)}")
        self.fmt = fmt
        self.ext = fmt
        self.quality = int(quality)

    def encode(self, image: np.ndarray) -> bytes:
        buf = io.BytesIO()
        if self.fmt == "npy":
            np.save(buf, np.ascontiguousarray(image, dtype=np.uint8), allow_pickle=False)
            return buf.getvalue()
        from PIL import Image

        pil = Image.fromarray(image)
        if self.fmt == "jpg":
            pil.save(buf, format="JPEG", quality=self.quality)
        elif self.fmt == "png":
            pil.save(buf, format="PNG", compress_level=6)
        else:
            pil.save(buf, format="WEBP", quality=self.quality, method=4)
        return buf.getvalue()


def decode_payload(data: bytes, fmt: str) -> np.ndarray:
    """Inverse of `Encoder.encode` (used by readers and tests)."""
    if fmt == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
