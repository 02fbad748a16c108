"""Target geometry: how each resize mode maps a (w, h) source onto the output.

Every mode reduces to one `ResizeOp`: resize the crop `box` of the source to `size`, then, for
`pad`, paste it at `offset` on a `canvas` filled with the pad colour. Cropping happens in source
coordinates (Pillow's ``resize(box=...)``), so `center-crop` is exact "resize the shorter side, then
crop" without a second rounding step, and resizers always produce exactly `size`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("stretch", "center-crop", "pad", "shorter-side", "longer-side")


@dataclass(frozen=True, slots=True)
class ResizeOp:
    """Resize `box` (left, top, right, bottom in source pixels) of the source to `size` (w, h)."""

    box: tuple[float, float, float, float]
    size: tuple[int, int]
    canvas: tuple[int, int] | None = None  # pad mode: final (w, h)
    offset: tuple[int, int] = (0, 0)  # pad mode: where the resized image is pasted

    @property
    def output_size(self) -> tuple[int, int]:
        return self.canvas if self.canvas is not None else self.size

    @property
    def scale(self) -> float:
        """Output pixels per source pixel (the smaller of the two axes)."""
        bw, bh = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return min(self.size[0] / bw, self.size[1] / bh)


def plan_resize(width: int, height: int, target: tuple[int, int], mode: str) -> ResizeOp:
    """Compute the resize for a `width` x `height` image to `target` (w, h) under `mode`."""
    if width < 1 or height < 1:
        raise ValueError(f"empty image {width}x{height}")
    tw, th = target
    full = (0.0, 0.0, float(width), float(height))
    if mode == "stretch":
        return ResizeOp(full, (tw, th))
    if mode == "center-crop":
        scale = max(tw / width, th / height)
        cw, ch = min(width, tw / scale), min(height, th / scale)
        left, top = (width - cw) / 2, (height - ch) / 2
        return ResizeOp((left, top, left + cw, top + ch), (tw, th))
    if mode == "pad":
        scale = min(tw / width, th / height)
        rw = min(tw, max(1, round(width * scale)))
        rh = min(th, max(1, round(height * scale)))
        return ResizeOp(full, (rw, rh), canvas=(tw, th), offset=((tw - rw) // 2, (th - rh) // 2))
    if mode in ("shorter-side", "longer-side"):
        side = min(width, height) if mode == "shorter-side" else max(width, height)
        scale = tw / side
        return ResizeOp(full, (max(1, round(width * scale)), max(1, round(height * scale))))
    raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")


def draft_request(width: int, height: int, op: ResizeOp, margin: float = 2.0) -> tuple[int, int]:
    """Smallest full-image size that still leaves `margin` x oversampling for `op` (JPEG draft)."""
    scale = min(1.0, op.scale * margin)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))
