"""Shared fixtures: real photographs (scikit-image's bundled samples) written as real files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    from resize_pipeline.sample_data import load_photos

    return load_photos()


@pytest.fixture(scope="session")
def photo(photos) -> np.ndarray:
    return photos["astronaut"]


def write_image(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


@pytest.fixture
def image_folder(tmp_path, photos) -> Path:
    """An ImageFolder tree: 2 classes x 5 varied-size JPEG/PNG crops of real photos."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    names = ["chelsea", "coffee"]
    for cls in names:
        img = photos[cls]
        for i in range(5):
            h, w = img.shape[:2]
            ch, cw = int(rng.integers(h // 3, h)), int(rng.integers(w // 3, w))
            y, x = int(rng.integers(0, h - ch)), int(rng.integers(0, w - cw))
            ext = "png" if i == 4 else "jpg"
            write_image(root / cls / f"img_{i}.{ext}", np.ascontiguousarray(img[y : y + ch, x : x + cw]))
    return root


@pytest.fixture
def broken_folder(image_folder) -> Path:
    """The image folder plus a truncated JPEG, a zero-byte file and text named .jpg."""
    good = (image_folder / "chelsea" / "img_0.jpg").read_bytes()
    (image_folder / "chelsea" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (image_folder / "coffee" / "empty.jpg").write_bytes(b"")
    (image_folder / "coffee" / "notes.jpg").write_text("this is not an image\n")
    return image_folder


os.environ.setdefault("TQDM_DISABLE", "1")
