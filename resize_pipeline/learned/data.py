"""Labelled image datasets for training / evaluating the resizer.

Every dataset yields ``(uint8 tensor (3, S, S), int label)`` at the resizer's *input* size ``S``
(= input_scale x target size). Sources:

- ``synthetic``: a generated task where fine detail decides the class (`SyntheticGratings`).
- an ImageFolder directory (class = first sub-folder, classes sorted by name);
- the output folder of ``resize-pipeline convert`` (it holds ``_manifest.json``): its complete shards,
  listed through `resize_pipeline.readers` (WebDataset preferred, else Parquet), labels from
  ``.cls`` / the ``label`` column;
- WebDataset shards (``*.tar``: ``{key}.jpg|jpeg|png|webp|npy`` + ``{key}.cls``);
- Parquet files (``*.parquet``: an image column and ``label`` (int)); the image column may hold
  encoded bytes or Hugging Face ``Image`` structs ``{bytes, path}`` (`image_value_bytes`);
- a manifest (``.csv``, ``.tsv``, ``.jsonl``, ``.ndjson``, ``.json``, or a ``.parquet`` with a path
  column but no image column): a path column and a label column, read with the same rules as
  ``convert``'s sources (relative paths resolve against the manifest's folder, string labels are
  indexed in sorted order).

Real images are resized so the shorter side is ``S`` (antialiased bilinear, Pillow) and centre-cropped.
"""

from __future__ import annotations

import glob
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: scikit-image's bundled colour photos (no download needed) used as backgrounds.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


# --- the synthetic task ------------------------------------------------------------------------------


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


# --- real images -------------------------------------------------------------------------------------

MANIFEST_EXTS = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "bytes", "image_bytes", "data")


def _read_source(item: bytes | str) -> bytes | str:
    """Encoded bytes stay; a local path stays (Pillow opens it); a URL is read through fsspec."""
    if isinstance(item, str) and "://" in item:
        import fsspec

        with fsspec.open(item, "rb") as fh:
            return fh.read()
    return item


def load_square(blob_or_path: bytes | str, size: int) -> torch.Tensor:
    """Decode, shorter side -> `size` (antialiased bilinear), centre crop; uint8 (3, size, size)."""
    from PIL import Image

    from resize_pipeline.decode.base import to_rgb_array

    blob_or_path = _read_source(blob_or_path)
    if isinstance(blob_or_path, (bytes, bytearray, memoryview)):
        if bytes(blob_or_path[:6]) == b"\x93NUMPY":
            arr = np.load(io.BytesIO(bytes(blob_or_path)))
            img = Image.fromarray(arr.astype(np.uint8)).convert("RGB")
        else:
            img = Image.open(io.BytesIO(bytes(blob_or_path)))
    else:
        img = Image.open(blob_or_path)
    img = Image.fromarray(to_rgb_array(img))
    w, h = img.size
    scale = size / min(w, h)
    cw, ch = size / scale, size / scale
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1)


class EncodedImages(Dataset):
    """Items are paths, URLs or encoded bytes, decoded lazily at `size`."""

    def __init__(self, items: Sequence[bytes | str], labels: Sequence[int], size: int, classes=None) -> None:
        if len(items) != len(labels):
            raise ValueError("items and labels differ in length")
        if not items:
            raise ValueError("the dataset is empty")
        if min(labels) < 0:
            raise ValueError(f"{sum(1 for v in labels if v < 0)} sample(s) have no label; training needs labels")
        self.items, self.labels, self.size = list(items), [int(v) for v in labels], size
        self.classes = classes or [str(c) for c in range(max(self.labels) + 1)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return load_square(self.items[i], self.size), self.labels[i]
        except Exception as exc:  # noqa: BLE001 - name the sample; a bad image stops training loudly
            item = self.items[i]
            where = item if isinstance(item, str) else f"item {i}"
            raise ValueError(f"cannot decode training image {where}: {type(exc).__name__}: {exc}") from exc


def image_folder(root: str, size: int) -> EncodedImages:
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected ROOT/CLASS/.../image.jpg)")
    items, labels = [], []
    for k, c in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, c))):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTS):
                    items.append(os.path.join(dirpath, f))
                    labels.append(k)
    if not items:
        raise ValueError(f"{root}: no images found")
    return EncodedImages(items, labels, size, classes)


def webdataset_shards(paths: Sequence[str], size: int) -> EncodedImages:
    """Tar shards (local paths or fsspec URLs): samples with an image member and a ``.cls``."""
    import tarfile

    import fsspec

    items, labels = [], []
    for path in paths:
        groups: dict[str, dict[str, bytes]] = {}
        # plain tarfile: the shards are ordinary tars, no streaming needed
        with fsspec.open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = os.path.basename(m.name).partition(".")
                key = os.path.join(os.path.dirname(m.name), key)
                f = tar.extractfile(m)
                groups.setdefault(key, {})[ext.lower()] = f.read() if f else b""
        for key, g in groups.items():
            img = next((g[e] for e in ("jpg", "jpeg", "png", "webp", "npy") if e in g), None)
            if img is None or "cls" not in g:
                log.warning("%s: sample %s has no image or no .cls, skipped", path, key)
                continue
            items.append(img)
            labels.append(int(g["cls"].decode().strip()))
    return EncodedImages(items, labels, size)


def image_value_bytes(value: Any) -> bytes | str | None:
    """The encoded image in one Parquet cell: raw bytes, or a Hugging Face ``Image`` struct
    ``{"bytes": ..., "path": ...}`` (bytes preferred, else the path); None when empty."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        if value.get("path"):
            return str(value["path"])
        return None
    raise ValueError(f"unsupported image cell of type {type(value).__name__} (expected bytes or {{bytes, path}})")


def _image_column(schema: Any, where: str) -> str:
    import pyarrow as pa

    def is_image(t: Any) -> bool:
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return True
        return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0

    cols = [f.name for f in schema if is_image(f.type)]
    if not cols:
        raise ValueError(f"{where}: no image column (binary, or a struct with a 'bytes' field)")
    lower = {c.lower(): c for c in cols}
    return next((lower[c] for c in IMAGE_COLUMNS if c in lower), cols[0])


def _table_items(table: Any, where: str) -> tuple[list[bytes | str], list[int]]:
    col = _image_column(table.schema, where)
    if "label" not in table.column_names:
        raise ValueError(f"{where}: no 'label' column (columns: {', '.join(table.column_names)})")
    items, labels = [], []
    for value, label in zip(table.column(col).to_pylist(), table.column("label").to_pylist(), strict=True):
        blob = image_value_bytes(value)
        if blob is None or label is None:
            continue
        items.append(blob)
        labels.append(int(label))
    return items, labels


def parquet_files(paths: Sequence[str], size: int) -> EncodedImages:
    import pyarrow.parquet as pq

    items: list[bytes | str] = []
    labels: list[int] = []
    for path in paths:
        it, lab = _table_items(pq.read_table(path), path)
        items += it
        labels += lab
    return EncodedImages(items, labels, size)


def converted_output(dest: str, size: int) -> EncodedImages:
    """The complete shards of a ``resize-pipeline convert`` output folder (listed by its manifest)."""
    from resize_pipeline import readers
    from resize_pipeline.errors import OutputError

    try:
        urls = readers.shard_urls(dest, "webdataset")
    except (ValueError, OutputError):  # no tars (a Parquet-only output): read its Parquet
        urls = []
    if urls:
        return webdataset_shards(urls, size)
    table = readers.arrow_table(dest)
    items, labels = _table_items(table, dest)
    return EncodedImages(items, labels, size)


def manifest_file(path: str, size: int) -> EncodedImages:
    """A CSV/TSV/JSONL/JSON/Parquet manifest with a path and a label column."""
    from resize_pipeline.sources.listing import list_source

    listing = list_source(path)
    if not listing.items:
        raise ValueError(f"{path}: the manifest lists no images")
    if all(it.label < 0 for it in listing.items):
        raise ValueError(f"{path}: no label column (one of label, cls, class, target)")
    return EncodedImages([it.url for it in listing.items], [it.label for it in listing.items], size,
                         listing.classes or None)


def _is_manifest_parquet(path: str) -> bool:
    import pyarrow.parquet as pq

    try:
        _image_column(pq.read_schema(path), path)
    except ValueError:
        return True
    return False


def open_dataset(spec: str, size: int) -> EncodedImages:
    """A directory (ImageFolder, a ``convert`` output, or holding *.tar / *.parquet), a manifest file,
    or a file / glob of shards."""
    if os.path.isdir(spec):
        if os.path.exists(os.path.join(spec, "_manifest.json")):
            return converted_output(spec, size)
        tars = sorted(glob.glob(os.path.join(spec, "*.tar")))
        parquets = sorted(glob.glob(os.path.join(spec, "*.parquet")))
        if tars:
            return webdataset_shards(tars, size)
        if parquets:
            return parquet_files(parquets, size)
        return image_folder(spec, size)
    if os.path.isfile(spec) and (
        spec.lower().endswith(MANIFEST_EXTS) or (spec.endswith(".parquet") and _is_manifest_parquet(spec))
    ):
        return manifest_file(spec, size)
    paths = sorted(glob.glob(spec))
    if not paths:
        raise ValueError(f"dataset {spec!r}: no such directory or files")
    if all(p.endswith(".tar") for p in paths):
        return webdataset_shards(paths, size)
    if all(p.endswith(".parquet") for p in paths):
        return parquet_files(paths, size)
    raise ValueError(
        f"dataset {spec!r}: expected a directory, a manifest (.csv/.tsv/.jsonl/.json/.parquet), "
        "*.tar shards or *.parquet files"
    )
