"""The bundled default dataset: scikit-image's sample photographs, augmented into varied images.

`make_sample_dataset(dest, n)` writes an ImageFolder tree (class = source photo) of `n` images with
random crops, scales, flips, rotations, a few greyscale ones and a mix of JPEG/PNG/WebP, sizes from
~120 to ~1400 px. Deterministic for a given seed.
"""

from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "motorcycle_left", "retina", "immunohistochemistry")


def load_photos() -> dict[str, np.ndarray]:
    """The bundled colour photographs as uint8 HWC RGB (no download: they ship with scikit-image)."""
    try:
        import skimage.data as data
    except ImportError as exc:
        raise ImportError("the sample dataset needs scikit-image: pip install 'resize-pipeline[sample]'") from exc
    out = {}
    for name in PHOTOS:
        try:
            img = getattr(data, name)()
        except Exception as exc:  # noqa: BLE001 - a photo that needs a download is skipped
            log.debug("skipping sample photo %s: %s", name, exc)
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out[name] = np.ascontiguousarray(img[..., :3].astype(np.uint8))
    if not out:
        raise RuntimeError("no scikit-image sample photos available")
    return out


def augmented_photos(n: int = 300, seed: int = 0, photos: dict[str, np.ndarray] | None = None):
    """Yield `n` ``(photo_name, PIL image, ext, save_kwargs)``: the augmented images, in memory.

    Deterministic in `seed`; `make_sample_dataset` writes exactly these images.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = photos if photos is not None else load_photos()
    names = sorted(photos)
    for i in range(n):
        name = names[i % len(names)]
        src = Image.fromarray(photos[name])
        w, h = src.size
        cw = int(rng.uniform(0.4, 1.0) * w)
        ch = int(rng.uniform(0.4, 1.0) * h)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((x, y, x + cw, y + ch))
        scale = rng.uniform(0.5, 2.2)
        img = img.resize((max(16, int(cw * scale)), max(16, int(ch * scale))), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.2:
            img = img.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR, expand=True)
        if rng.random() < 0.1:
            img = img.convert("L")
        r = rng.random()
        kw: dict
        ext, kw = ("jpg", {"quality": int(rng.integers(75, 96))}) if r < 0.8 else ("png", {}) if r < 0.93 else ("webp", {"quality": 90})
        yield name, img, ext, kw


def make_sample_dataset(dest: str, n: int = 300, seed: int = 0) -> list[str]:
    """Write `n` augmented images under `dest/<photo>/NNNN.<ext>`; returns their paths."""
    paths = []
    for i, (name, img, ext, kw) in enumerate(augmented_photos(n, seed)):
        os.makedirs(os.path.join(dest, name), exist_ok=True)
        path = os.path.join(dest, name, f"{i:05d}.{ext}")
        img.save(path, **kw)
        paths.append(path)
    return paths
