"""A PNG grid comparing classical filters with the learned resizer at one target size."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

COLUMNS = ("original", "bilinear", "bicubic", "lanczos", "learned")


def make_preview(
    images: Sequence[str],
    output: str,
    *,
    size: int = 224,
    resizer_path: str | None = None,
    mode: str = "center-crop",
    device: str = "auto",
    zoom: int = 2,
) -> str:
    """Write a grid (one row per image): original crop, bilinear, bicubic, lanczos, learned.

    Resized cells are shown enlarged `zoom` x with nearest neighbour, so pixels stay visible; the
    original cell is the same crop at ``zoom x size`` (Lanczos).
    """
    from PIL import Image, ImageDraw

    from resize_pipeline.decode.base import to_rgb_array
    from resize_pipeline.geometry import plan_resize
    from resize_pipeline.learned.inference import LearnedResizer
    from resize_pipeline.resize.classical import ClassicalResizer

    if not images:
        raise ValueError("no images given")
    learned = LearnedResizer(resizer_path, device=device)
    classical = {name: ClassicalResizer(name) for name in ("bilinear", "bicubic", "lanczos")}
    rows = []
    for path in images:
        with Image.open(path) as im:
            from PIL import ImageOps

            arr = to_rgb_array(ImageOps.exif_transpose(im))
        op = plan_resize(arr.shape[1], arr.shape[0], (size, size), mode)
        cells = {name: r.resize([arr], [op])[0] for name, r in classical.items()}
        cells["learned"] = learned.resize([arr], [op])[0]
        w, h = op.size
        big = (w * zoom, h * zoom)
        row = [Image.fromarray(arr).resize(big, Image.Resampling.LANCZOS, box=op.box)]
        row += [Image.fromarray(cells[c]).resize(big, Image.Resampling.NEAREST) for c in COLUMNS[1:]]
        rows.append(row)
    header = 18
    cw = max(r[0].width for r in rows)
    ch = max(r[0].height for r in rows)
    grid = Image.new("RGB", (cw * len(COLUMNS), header + ch * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(COLUMNS):
        label = name if name == "original" else f"{name} {size}px"
        draw.text((j * cw + 4, 3), label, fill=(0, 0, 0))
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            grid.paste(cell, (j * cw, header + i * ch))
    grid.save(output, format="PNG")
    log.info("preview of %d image(s) written to %s", len(rows), output)
    return output


def difference_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean / max absolute difference and PSNR between two uint8 images of the same shape."""
    d = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(d * d))
    return {
        "mae": float(np.mean(np.abs(d))),
        "max": float(np.max(np.abs(d))),
        "psnr": float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse),
    }
