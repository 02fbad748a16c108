"""Pillow decoder: EXIF orientation, colour rule, bomb guard, JPEG draft (DCT-domain) downscaling."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resize_pipeline.decode.base import Decoder, SizeRequest, to_rgb_array, to_rgb_image
from resize_pipeline.errors import ImageTooLarge, SampleError

#: EXIF orientations that swap width and height
TRANSPOSING = {5, 6, 7, 8}
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own hard limit (2 x MAX_IMAGE_PIXELS)
#: memory blocks Pillow keeps for reuse instead of returning them to the OS after each image (its
#: default is 0). Decoding a stream of photos otherwise maps and faults fresh pages for every image:
#: measured on 1500 ImageNet-sized JPEGs with 2 worker processes, 0 -> 16 cut page faults 4x and
#: system CPU time from 1.6 s to 0.5 s (docs/benchmarks.md), for a few MB of cached blocks.
BLOCKS_MAX = 16


def unidentified(blob: bytes) -> UnidentifiedImageError:
    """The error for bytes no decoder recognises. It says how many bytes, never which: an error list
    must not echo a file's contents (a manifest row can point at any file). Pillow's own message
    embeds the BytesIO's address, which would make ``_errors.jsonl`` differ between runs."""
    return UnidentifiedImageError(f"cannot identify image file ({len(blob)} bytes; not an image format "
                                  "Pillow reads)")


class PillowDecoder(Decoder):
    """Decode with Pillow. Safe for any format Pillow reads.

    Args:
        background: colour that alpha is composited over.
        max_pixels: refuse images whose *declared* size exceeds this (checked before decoding).
        draft: use JPEG draft mode (decode at 1/2, 1/4, 1/8 scale in the DCT domain) when the
            resize needs far fewer pixels than the file has. Much faster; the final resize still
            antialiases from at least ``input_scale`` x the output size.
    """

    name = "pillow"

    def __init__(
        self,
        background: tuple[int, int, int] = (255, 255, 255),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft: bool = True,
    ) -> None:
        self.background: tuple[int, int, int] = (int(background[0]), int(background[1]), int(background[2]))
        if Image.core.get_blocks_max() == 0:  # unless set (PILLOW_BLOCKS_MAX): see BLOCKS_MAX
            Image.core.set_blocks_max(BLOCKS_MAX)
        self.max_pixels = int(max_pixels)
        self.draft = draft

    def decode_one(self, blob: bytes, size_request: SizeRequest | None = None) -> np.ndarray:
        return self._decode(blob, size_request)[0]

    def _decode(self, blob: bytes, size_request: SizeRequest | None, as_image: bool = False):
        """The image (uint8 HWC, or an RGB PIL image with `as_image`), and its full oriented size
        (before any draft downscale)."""
        if not blob:
            raise SampleError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(blob))
            except Image.DecompressionBombError as exc:
                raise ImageTooLarge(str(exc)) from None
            except UnidentifiedImageError:
                raise unidentified(blob) from None
            w, h = img.size
            if w * h > self.max_pixels:
                raise ImageTooLarge(f"declared size {w}x{h} = {w * h} px exceeds max_pixels={self.max_pixels}")
            orientation = img.getexif().get(0x0112, 1)
            ow, oh = (h, w) if orientation in TRANSPOSING else (w, h)
            if self.draft and size_request is not None and img.format == "JPEG":
                rw, rh = size_request(ow, oh)
                if orientation in TRANSPOSING:
                    rw, rh = rh, rw
                if rw < w // 2 and rh < h // 2:
                    img.draft("RGB" if img.mode == "RGB" else img.mode, (rw, rh))
            img.load()
            out: Image.Image = ImageOps.exif_transpose(img) if orientation != 1 else img
            if as_image:
                return to_rgb_image(out, self.background), (ow, oh)
            return to_rgb_array(out, self.background), (ow, oh)

    def decode(
        self, blobs: Sequence[bytes], size_request: SizeRequest | None = None
    ) -> list[np.ndarray | Exception]:
        return [r if isinstance(r, Exception) else r[0] for r in self.decode_sized(blobs, size_request)]

    def decode_sized(
        self, blobs: Sequence[bytes], size_request: SizeRequest | None = None, *, as_image: bool = False
    ) -> list[tuple[np.ndarray, tuple[int, int]] | Exception]:
        """Like `Decoder.decode_sized`; with `as_image`, RGB PIL images instead of arrays (a Pillow
        resizer takes them as they are: no copy into numpy and back)."""
        out: list = []
        for blob in blobs:
            try:
                out.append(self._decode(blob, size_request, as_image))
            except Exception as exc:  # noqa: BLE001 - per-sample policy: record, never raise
                out.append(exc)
        return out
