"""Encode resized uint8 HWC RGB images to bytes: jpg, png, webp, or raw npy (lossless hand-off).

JPEG has two interchangeable codecs that write **the same bytes** (both drive libjpeg-turbo with its
defaults: accurate integer DCT, 4:2:0, standard Huffman tables, the same JFIF header; checked on 600
random sizes and qualities in ``tests/test_encode.py``):

- ``opencv`` (``cv2.imencode``): releases the GIL while it encodes, so encoding in threads scales with
  the cores. Used when OpenCV is installed (``pip install 'resize-pipeline[fast]'``), for uint8 RGB
  images (anything else goes to Pillow).
- ``pillow``: holds the GIL while it encodes into memory (``ImageFile._save`` to a `BytesIO`), so
  threads do not add throughput. The fallback without OpenCV.

simplejpeg was measured too and is *not* used: its ``tjCompress2`` call always gets TurboJPEG's fast
DCT (``fastdct=False`` does not ask for the accurate one), which changes the bytes (and the quality)
of every image. PNG and WebP always use Pillow.
"""

from __future__ import annotations

import io

import numpy as np

ENCODINGS = ("jpg", "png", "webp", "npy")
JPEG_BACKENDS = ("auto", "opencv", "pillow")


def opencv_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("cv2") is not None
    except (ImportError, ValueError):
        return False


class Encoder:
    """`encode(image) -> bytes`; `ext` is the tar member / file extension.

    Args:
        fmt: one of `ENCODINGS`.
        quality: jpg/webp quality.
        jpeg_backend: ``auto`` (OpenCV when installed, else Pillow), ``opencv`` or ``pillow``; the
            bytes are the same, only the speed in threads differs.
    """

    def __init__(self, fmt: str = "jpg", quality: int = 95, jpeg_backend: str = "auto") -> None:
        if fmt not in ENCODINGS:
            raise ValueError(f"unknown encoding {fmt!r}; expected one of {', '.join(ENCODINGS)}")
        if jpeg_backend not in JPEG_BACKENDS:
            raise ValueError(f"unknown JPEG backend {jpeg_backend!r}; expected one of {', '.join(JPEG_BACKENDS)}")
        self.fmt = fmt
        self.ext = fmt
        self.quality = int(quality)
        if jpeg_backend == "auto":
            jpeg_backend = "opencv" if opencv_available() else "pillow"
        self.backend = jpeg_backend if fmt == "jpg" else ("numpy" if fmt == "npy" else "pillow")
        self._cv2 = None
        if self.backend == "opencv":
            try:
                import cv2
            except ImportError as exc:
                raise ImportError("the opencv JPEG backend needs OpenCV: pip install opencv-python-headless "
                                  "(or 'resize-pipeline[fast]')") from exc
            # our stages spread images over threads and processes: OpenCV's own thread pool (one
            # thread per core in every process, for cvtColor) only adds contention on top of that
            cv2.setNumThreads(1)
            self._cv2 = cv2
            self._cv2_params = [cv2.IMWRITE_JPEG_QUALITY, self.quality]

    def describe(self) -> dict:
        return {"format": self.fmt, "quality": self.quality, "backend": self.backend}

    def encode(self, image: np.ndarray) -> bytes:
        if self._cv2 is not None and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            return self._encode_opencv(image)
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

    def _encode_opencv(self, image: np.ndarray) -> bytes:
        cv2 = self._cv2
        # cvtColor and imencode run without the GIL; the RGB->BGR swap is what imencode expects
        bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
        ok, out = cv2.imencode(".jpg", bgr, self._cv2_params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {image.shape[1]}x{image.shape[0]} JPEG")
        return out.tobytes()

    def __getstate__(self) -> dict:  # modules don't pickle (Ray ships stages to actors)
        state = self.__dict__.copy()
        state["_cv2"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.backend == "opencv":
            import cv2

            self._cv2 = cv2


def decode_payload(data: bytes, fmt: str) -> np.ndarray:
    """Inverse of `Encoder.encode` (used by readers and tests)."""
    if fmt == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
