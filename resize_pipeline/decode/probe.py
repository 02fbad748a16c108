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
    """Read the header only: declared size, EXIF orientation, and whether DALI can take the file.

    A clean baseline/progressive JPEG (the common case) is read by `_jpeg_fast` (~10x cheaper than
    opening it with Pillow: this runs for every input of a GPU job, under the GIL); anything it is
    not sure about goes through Pillow, which decides."""
    if blob[:2] == b"\xff\xd8":
        try:
            fast = _jpeg_fast(blob, max_pixels)
        except Exception:  # noqa: BLE001 - a header it misreads is Pillow's to judge
            fast = None
        if fast is not None:
            return fast
    return _probe_pillow(blob, max_pixels)


def _probe_pillow(blob: bytes, max_pixels: int) -> Probe:
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


#: SOFn markers (C4 DHT, C8 JPG and CC DAC are not frames), as Pillow's JpegImagePlugin reads them
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_EOI_STRIP = b"\x00\r\n\t "


#: TIFF field types (BYTE .. DOUBLE) and their sizes
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}


def _exif_orientation(tiff: bytes) -> int | None:
    """Orientation (tag 0x0112) of IFD0 of a TIFF-structured EXIF block; 1 if absent; None when the
    block is anything but clean (Pillow then decides)."""
    import struct

    if tiff[:4] == b"II*\x00":
        e = "<"
    elif tiff[:4] == b"MM\x00*":
        e = ">"
    else:
        return None
    n = len(tiff)
    if n < 8:
        return None
    (ifd,) = struct.unpack_from(e + "I", tiff, 4)
    if ifd < 8 or ifd + 2 > n:
        return None
    (count,) = struct.unpack_from(e + "H", tiff, ifd)
    if ifd + 2 + 12 * count + 4 > n:
        return None
    found = 1
    for k in range(count):
        tag, typ, cnt = struct.unpack_from(e + "HHI", tiff, ifd + 2 + 12 * k)
        if typ not in _TIFF_TYPE_SIZES:
            return None
        nbytes = cnt * _TIFF_TYPE_SIZES[typ]
        if nbytes > 4:  # data elsewhere: Pillow stops reading the IFD at an entry pointing outside
            (offset,) = struct.unpack_from(e + "I", tiff, ifd + 10 + 12 * k)
            if offset + nbytes > n:
                return None
        if tag == 0x0112:
            if typ != 3 or cnt != 1:
                return None
            (found,) = struct.unpack_from(e + "H", tiff, ifd + 10 + 12 * k)
    return found


def _dqt_ok(seg: bytes) -> bool:
    """Pillow's check of a DQT segment: whole tables only."""
    k = 0
    while k < len(seg):
        k += 1 + (64 if seg[k] < 16 else 128)
    return k == len(seg)


def _jpeg_fast(blob: bytes, max_pixels: int) -> Probe | None:
    """The DALI route of a JPEG whose markers read cleanly up to the first scan: size from its one
    8-bit SOF (1 or 3 components), EXIF orientation from its one APP1 (no XMP, which Pillow also reads
    orientation from), an EOI at the end, a clean scan. Only markers whose handling by Pillow's
    JpegImagePlugin cannot fail are accepted (APPn it only stores, JFIF, ICC, Adobe with its fields,
    COM, DQT with whole tables, DHT, DRI); anything else gives None, and Pillow's probe decides."""
    from PIL import Image

    n, i = len(blob), 2
    size = None
    orientation, exif_seen = 1, False
    while True:
        if i + 4 > n or blob[i] != 0xFF:
            return None
        marker = blob[i + 1]
        seg = (blob[i + 2] << 8) | blob[i + 3]
        if seg < 2 or i + 2 + seg > n:
            return None
        body = blob[i + 4 : i + 2 + seg]
        if marker == 0xDA:
            break
        if marker in _SOF:
            if size is not None or seg < 8 or body[0] != 8:
                return None
            h, w, comps = (body[1] << 8) | body[2], (body[3] << 8) | body[4], body[5]
            if comps not in (1, 3) or not w or not h:
                return None
            size = (w, h)
        elif marker == 0xE1:
            if exif_seen or not body.startswith(b"Exif\x00\x00"):
                return None  # XMP, a second EXIF block: Pillow decides
            exif_seen = True
            found = _exif_orientation(body[6:])
            if found is None:
                return None
            orientation = found
        elif marker == 0xE2:
            if body.startswith(b"MPF\x00") or (body.startswith(b"ICC_PROFILE\x00") and len(body) < 14):
                return None
        elif marker == 0xEE:
            if body.startswith(b"Adobe") and len(body) < 12:
                return None
        elif marker == 0xED:
            return None  # Photoshop resources: parsed by Pillow
        elif marker == 0xDB:
            if not _dqt_ok(body):
                return None
        elif not (0xE0 <= marker <= 0xEF or marker in (0xFE, 0xC4, 0xDD)):
            return None
        i += 2 + seg
    if size is None:
        return None
    w, h = size
    bomb = Image.MAX_IMAGE_PIXELS
    if w * h > max_pixels or (bomb is not None and w * h > 2 * bomb):
        return None
    if blob.rstrip(_EOI_STRIP)[-2:] != b"\xff\xd9" or _jpeg_scan_corrupt(blob):
        return None
    return Probe("dali", (h, w) if orientation in TRANSPOSING else (w, h))
