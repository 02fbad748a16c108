"""Header pre-screen: what a file declares (size, EXIF orientation) and whether DALI can take it.

Every blob is opened lazily with Pillow (header only, no pixel decoding):

- empty, unidentifiable: the error is returned (nothing decodes it);
- declared size above ``max_pixels``: `ImageTooLarge`, before any decoding (bomb guard);
- to DALI: JPEG/MPO in RGB (YCbCr) or greyscale that ends with an EOI marker and whose scan data
  holds no invalid marker (DALI decodes those to garbage where Pillow raises), and 8-bit opaque
  RGB/grey PNG that ends with IEND and has no eXIf chunk;
- to Pillow: CMYK/YCCK JPEG, 16-bit PNG, palette/alpha/tRNS PNG, GIF, TIFF, WebP, BMP and anything
  else, and truncated or corrupt-looking files (so they end as they would with Pillow alone).

The read stage runs it next to the reads (in parallel), so the decoder only routes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

from resize_pipeline.decode.pillow import DEFAULT_MAX_PIXELS, TRANSPOSING, unidentified
from resize_pipeline.errors import ImageTooLarge, SampleError


@dataclass(frozen=True, slots=True)
class Probe:
    """Result of the cheap pre-screen of one blob."""

    route: str  # "dali" | "pillow" | "error"
    size: tuple[int, int] | None = None  # oriented (w, h) as declared by the header
    reason: str = ""
    error: Exception | None = None


def probe(blob: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Probe:
    """Read the header only: declared size, EXIF orientation, and whether DALI can take the file."""
    from PIL import Image, UnidentifiedImageError

    if not blob:
        return Probe("error", error=SampleError("empty file (0 bytes)"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(blob))
        except Image.DecompressionBombError as exc:
            return Probe("error", error=ImageTooLarge(str(exc)))
        except UnidentifiedImageError:  # nothing will decode it; said as the Pillow decoder says it
            return Probe("error", error=unidentified(blob))
        except Exception as exc:  # noqa: BLE001 - unidentifiable: nothing will decode it
            return Probe("error", error=exc)
        w, h = img.size
        if w * h > max_pixels:
            msg = f"declared size {w}x{h} = {w * h} px exceeds max_pixels={max_pixels}"
            return Probe("error", error=ImageTooLarge(msg))
        fmt, mode = img.format, img.mode
        if fmt in ("JPEG", "MPO"):
            try:
                orientation = img.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001 - broken EXIF: let Pillow decide
                return Probe("pillow", (w, h), "unreadable EXIF")
            size = (h, w) if orientation in TRANSPOSING else (w, h)
            if mode not in ("RGB", "L"):
                return Probe("pillow", size, f"JPEG mode {mode}")
            if blob.rstrip(b"\x00\r\n\t ")[-2:] != b"\xff\xd9":
                return Probe("pillow", size, "JPEG without EOI marker (truncated?)")
            if _jpeg_scan_corrupt(blob):
                return Probe("pillow", size, "invalid marker in the JPEG scan data")
            return Probe("dali", size)
        if fmt == "PNG":
            # IHDR bit depth is byte 24; Pillow reports 16-bit RGB PNGs as mode "RGB"
            if mode not in ("RGB", "L") or blob[24:25] != b"\x08" or "transparency" in img.info:
                depth = blob[24] if len(blob) > 24 else "?"
                return Probe("pillow", (w, h), f"PNG mode {mode}, bit depth {depth}")
            if b"IEND" not in blob[-16:]:
                return Probe("pillow", (w, h), "PNG without IEND (truncated?)")
            if b"eXIf" in blob:  # Pillow reads EXIF orientation from eXIf chunks after IDAT
                return Probe("pillow", (w, h), "PNG with eXIf")
            return Probe("dali", (w, h))
        return Probe("pillow", (w, h), f"format {fmt}")


def _jpeg_scan_corrupt(blob: bytes) -> bool:
    """True if the entropy-coded data holds a byte pair no valid JPEG has (0xFF then 0x01..0xBF).

    In scan data 0xFF is followed only by 0x00 (stuffing), 0xFF (fill) or a marker (>= 0xC0, e.g.
    RSTn, DHT/SOS between progressive scans, EOI). libjpeg-turbo inside DALI decodes such files to
    garbage with a warning, where Pillow raises; routing them to Pillow keeps Pillow's outcome.
    Random corruption of a scan trips this with near certainty; a false alarm only costs speed.
    """
    sos = blob.find(b"\xff\xda")
    if sos < 0:
        return True
    data = np.frombuffer(blob, np.uint8, offset=sos + 2)
    ff = np.flatnonzero(data[:-1] == 0xFF)
    follow = data[ff + 1]
    return bool(((follow >= 0x01) & (follow <= 0xBF)).any())
