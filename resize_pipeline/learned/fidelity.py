"""Colour fidelity of a resizer on real photos: does grey stay grey, do the low frequencies stay put?

The learned resizer is trained on a task loss only; nothing in that loss asks it to keep colours. These
metrics say whether it does, against the pipeline's plain Pillow bilinear at the same output size:

- `channel_spread`: mean over pixels of ``max(R, G, B) - min(R, G, B)`` (grey levels). Run on
  greyscale inputs (`to_grey_rgb`), where every classical filter gives exactly 0.
- `lowpass_psnr`: PSNR between two images after a Gaussian blur (sigma in output pixels, default 2).
  A resizer that only adds or reshapes fine detail scores high; a colour cast or a brightness shift
  moves the low frequencies and scores low.
- `fidelity_report`: both, over a set of photos, through the same `Resizer.resize` call `convert`
  uses (crop box + target size from `plan_resize`).

`heldout_photos` are scikit-image's bundled photographs, augmented (`sample_data.augmented_photos`:
random crops, scales, flips, rotations, 10% greyscale) with a seed of their own: whole images at their
own sizes, resized to 224 like a conversion would, not the 64 px training crops of the synthetic task.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

#: seed of the held-out photos (the demo's sample dataset uses seed 0, training crops their own RNG).
HELDOUT_SEED = 20261127


def channel_spread(img: np.ndarray) -> float:
    """Mean over pixels of the largest minus the smallest channel (uint8 HWC RGB -> grey levels)."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HWC RGB image, got shape {img.shape}")
    a = img.astype(np.int16)
    return float(np.mean(a.max(axis=2) - a.min(axis=2)))


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian, radius ceil(4 sigma)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = max(1, math.ceil(4 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W) or (H, W, C) image in float64, reflected borders."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    out = img.astype(np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        # "symmetric" needs r <= n for a plain reflection; tiny images fall back to edge padding
        p = np.pad(out, pad, mode="symmetric" if r <= n else "edge")
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * np.take(p, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB between two arrays of the same shape (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def lowpass_psnr(a: np.ndarray, b: np.ndarray, sigma: float = 2.0) -> float:
    """PSNR after blurring both images with a Gaussian of `sigma` pixels."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return psnr(gaussian_blur(a, sigma), gaussian_blur(b, sigma))


def to_grey_rgb(img: np.ndarray) -> np.ndarray:
    """Pillow's luminance (ITU-R 601-2), replicated to three equal channels."""
    from PIL import Image

    return np.asarray(Image.fromarray(img).convert("L").convert("RGB"))


def heldout_photos(n: int = 48, seed: int = HELDOUT_SEED) -> list[tuple[str, np.ndarray]]:
    """`n` augmented scikit-image photos as ``(source photo name, uint8 HWC RGB)`` (greyscale kept)."""
    from resize_pipeline.decode.base import to_rgb_array
    from resize_pipeline.sample_data import augmented_photos

    return [(name, to_rgb_array(img)) for name, img, _, _ in augmented_photos(n, seed)]


def _stats(values: Sequence[float]) -> dict[str, float]:
    finite = [v for v in values if math.isfinite(v)] or [math.inf]
    vals = sorted(values)
    return {
        "median": float(statistics.median(vals)),
        "mean": float(statistics.fmean(finite)),
        "min": float(vals[0]),
        "p10": float(vals[max(0, int(0.1 * (len(vals) - 1)))]),
        "max": float(vals[-1]),
    }


def fidelity_report(
    resizer: Any,
    photos: Sequence[tuple[str, np.ndarray]],
    *,
    size: int = 224,
    mode: str = "center-crop",
    sigma: float = 2.0,
    reference: Any = None,
) -> dict[str, Any]:
    """Grey spread and low-pass PSNR of `resizer` vs Pillow bilinear (`reference`) over `photos`.

    `resizer` and `reference` are `Resizer`s (``resize(images, ops)``). Greyscale sources are skipped
    for the colour PSNR (they are in the grey test anyway). Returns summary numbers and per-image rows.
    """
    from resize_pipeline.geometry import plan_resize
    from resize_pipeline.resize.classical import ClassicalResizer

    if not photos:
        raise ValueError("no photos given")
    reference = reference or ClassicalResizer("bilinear")
    rows: list[dict[str, Any]] = []
    for name, img in photos:
        op = plan_resize(img.shape[1], img.shape[0], (size, size), mode)
        grey_in = to_grey_rgb(img)
        out, grey_out = resizer.resize([img, grey_in], [op, op])
        ref = reference.resize([img], [op])[0]
        is_grey = channel_spread(img) == 0.0
        rows.append(
            {
                "photo": name,
                "shape": list(img.shape[:2]),
                "greyscale_source": is_grey,
                "grey_spread": channel_spread(grey_out),
                "grey_spread_max": float(np.max(grey_out.max(axis=2).astype(int) - grey_out.min(axis=2))),
                "lowpass_psnr": lowpass_psnr(out, ref, sigma),
                "psnr": psnr(out, ref),
                "mean_shift": [float(v) for v in out.reshape(-1, 3).mean(0) - ref.reshape(-1, 3).mean(0)],
            }
        )
    colour = [r for r in rows if not r["greyscale_source"]] or rows
    return {
        "size": size,
        "mode": mode,
        "sigma": sigma,
        "images": len(rows),
        "colour_images": len(colour),
        "grey_spread": _stats([r["grey_spread"] for r in rows]),
        "grey_spread_max": max(r["grey_spread_max"] for r in rows),
        "lowpass_psnr": _stats([r["lowpass_psnr"] for r in colour]),
        "psnr": _stats([r["psnr"] for r in colour]),
        "rows": rows,
    }


def format_fidelity(report: dict[str, Any], label: str = "") -> str:
    """One line: grey spread (mean / worst pixel) and low-pass PSNR (median, min)."""
    g, lp, p = report["grey_spread"], report["lowpass_psnr"], report["psnr"]
    return (
        f"{label}grey spread mean {g['mean']:.2f} (max image {g['max']:.2f}, worst pixel "
        f"{report['grey_spread_max']:.0f}) | low-pass PSNR vs bilinear median {lp['median']:.1f} dB "
        f"(min {lp['min']:.1f}) | PSNR median {p['median']:.1f} dB "
        f"[{report['images']} photos at {report['size']}]"
    )
