"""The synthetic training task: fine oriented gratings on crops of real photos; the orientation is the class.

No dataset can be downloaded here, so the bundled checkpoint is trained on this generated task
(`SyntheticGratings`). The grating period lies just above the input Nyquist limit, so an antialiased
2x downscale removes it and a plain one aliases it; a learned resizer can turn it into coarse signal.
Samples are uint8 tensors (3, S, S) at the resizer's input size ``S``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

#: scikit-image's bundled colour photos (no download needed) used as backgrounds.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    """Oriented fine gratings pasted on real-photo crops; the orientation is the class.

    The grating period (in input pixels) lies just above the input Nyquist limit, so an antialiased 2x
    downscale removes it and a plain one aliases it; a learned resizer can turn it into coarse signal.
    """

    size: int = 64  # input side S; the classifier sees S / input_scale
    num_classes: int = 4  # orientations 0, 180/K, ... degrees
    period: tuple[float, float] = (2.2, 3.2)
    amplitude: tuple[float, float] = (0.12, 0.3)
    patch: tuple[float, float] = (0.45, 0.9)  # side of the grating patch, fraction of S
    angle_jitter: float = 8.0  # degrees

    def __post_init__(self) -> None:
        if self.size < 8 or self.num_classes < 2:
            raise ValueError(f"size must be >= 8 and num_classes >= 2, got {self.size}, {self.num_classes}")


_PHOTO_CACHE: list[np.ndarray] = []


def _photos() -> list[np.ndarray]:
    if not _PHOTO_CACHE:
        try:
            import skimage.data as skdata
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError(
                "the synthetic task needs scikit-image: pip install 'resize-pipeline[sample]'"
            ) from e
        _PHOTO_CACHE.extend(np.ascontiguousarray(getattr(skdata, name)()[..., :3]) for name in PHOTOS)
    return _PHOTO_CACHE


def synthetic_sample(cfg: SyntheticConfig, rng: np.random.Generator, label: int) -> np.ndarray:
    """One uint8 (S, S, 3) image of class `label`."""
    from PIL import Image

    s = cfg.size
    photo = _photos()[rng.integers(len(_photos()))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(s, h, w), min(h, w) + 1))
    top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = np.asarray(crop.resize((s, s), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0

    theta = math.radians(label * 180.0 / cfg.num_classes + rng.uniform(-cfg.angle_jitter, cfg.angle_jitter))
    period = rng.uniform(*cfg.period)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi)
    grating = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + phase)
    ph, pw = (int(round(s * rng.uniform(*cfg.patch))) for _ in range(2))
    y0, x0 = int(rng.integers(s - ph + 1)), int(rng.integers(s - pw + 1))
    mask = np.zeros((s, s), np.float32)
    mask[y0 : y0 + ph, x0 : x0 + pw] = 1.0
    amp = rng.uniform(*cfg.amplitude)
    img = img + (amp * mask * grating)[..., None]
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class SyntheticGratings(Dataset):
    """`count` samples generated up front (deterministic in `seed`), balanced over the classes."""

    def __init__(self, count: int, seed: int, config: SyntheticConfig | None = None) -> None:
        self.config = cfg = config or SyntheticConfig()
        rng = np.random.default_rng(seed)
        labels = np.arange(count) % cfg.num_classes
        rng.shuffle(labels)
        images = np.stack([synthetic_sample(cfg, rng, int(c)) for c in labels]) if count else None
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous() if count else torch.empty(0)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.classes = [f"{int(round(k * 180 / cfg.num_classes))}deg" for k in range(cfg.num_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])
