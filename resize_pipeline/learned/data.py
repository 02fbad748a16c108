"""Labelled real images for training and evaluating the resizer, read by the same code as ``convert``.

`open_dataset(spec, size)` lists SOURCE with `resize_pipeline.sources.list_source` (an ImageFolder
directory, a glob, a manifest, WebDataset tars, Parquet files of image bytes, any fsspec URL), or, for
a ``convert`` output (a folder with ``_manifest.json``), its complete shards as the manifest lists
them (`resize_pipeline.readers`); every row keeps the listing's key, URL, byte range and label, in
compact columns (`rowstore.RowStore`: the listing is streamed once, never held as Python objects).
Samples are read with `sources.reader.read_items` (one call per batch: tar members by byte range,
Parquet rows a row group at a time) and decoded with `decode.PillowDecoder` (EXIF orientation, the
colour rule, the decompression-bomb guard, JPEG draft decoding): the same code paths as ``convert``.

Each image becomes a uint8 (3, S, S) tensor at the resizer's input size ``S``: the centred square of
side ``min(w, h)`` (an integer box, `square_box`) resized to ``S`` with Pillow's antialiased bilinear.
Pixels stay uint8 until the training loop moves them to the device.

Bad inputs never stop a run: a sample that cannot be read or decoded comes back as a `Sample` with an
error record (``_errors.jsonl``'s fields: key, path, stage, error_type, error); `collate` drops it
from its batch and hands the record to the loop, which counts it (`skips.SkipLedger`). What could not
be listed (an unreadable folder, a broken tar, a manifest row without a path or label) is counted the
same way, up front.
"""

from __future__ import annotations

import glob
import io
import logging
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from resize_pipeline.errors import error_record

log = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"


class Sample(NamedTuple):
    """One dataset row: the image (None when it failed), its label, its row number, the error record."""

    image: torch.Tensor | None
    label: int
    position: int
    error: dict[str, str] | None = None


def square_box(w: Any, h: Any) -> tuple[Any, Any, Any, Any]:
    """The centred square of side ``min(w, h)`` as an integer box (left, top, right, bottom).

    Pure integer arithmetic, so it holds for every size (it never leaves the image, as the float box
    ``size / (size / min(w, h))`` did); works elementwise on numpy integer arrays too."""
    side = np.minimum(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def _npy_image(blob: bytes):
    from PIL import Image

    from resize_pipeline.decode.base import to_rgb_array

    arr = np.load(io.BytesIO(blob), allow_pickle=False)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"unsupported .npy image: dtype {arr.dtype}, shape {arr.shape} (expected uint8 HW[C])")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    img = Image.fromarray(np.ascontiguousarray(arr))
    return Image.fromarray(to_rgb_array(img))


_DECODER: Any = None


def _decoder():
    global _DECODER
    if _DECODER is None:  # one per process (DataLoader workers build their own)
        from resize_pipeline.decode import PillowDecoder

        _DECODER = PillowDecoder()
    return _DECODER


def load_square(blob: bytes, size: int) -> torch.Tensor:
    """Decode `blob` as ``convert`` does, crop its centred square, resize to `size`; uint8 (3, size, size).

    Raises what the decoder raised (empty file, not an image, truncated, above the bomb guard)."""
    from PIL import Image

    from resize_pipeline.geometry import draft_request, plan_resize

    if bytes(blob[:6]) == NPY_MAGIC:
        img = _npy_image(bytes(blob))
    else:
        def request(w: int, h: int) -> tuple[int, int]:  # JPEG draft: keep at least `size` on the short side
            return draft_request(w, h, plan_resize(w, h, (size, size), "center-crop"), 1.0)

        got = _decoder().decode_sized([blob], request, as_image=True)[0]
        if isinstance(got, Exception):
            raise got
        img = got[0]
    w, h = img.size
    box = tuple(int(v) for v in square_box(w, h))
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1)


class LabelledImages(Dataset):
    """Listed inputs with labels, decoded on demand at `size` (see the module docstring).

    Args:
        rows: the labelled rows of every listing, in order (`rowstore.RowStore`, compact columns).
        labels: class index of every row (all >= 0).
        classes: class names (index -> name), or [] when the source gave numbers only.
        size: the side of the square tensors.
        errors: what the listing could not list or label (error records, counted as skipped).
    """

    def __init__(self, rows: Any, labels: np.ndarray, classes: Sequence[str], size: int,
                 errors: Sequence[dict[str, str]] = ()) -> None:
        self.rows = rows
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(rows):
            raise ValueError(f"{len(self.labels)} labels for {len(rows)} rows")
        if not len(self.labels):
            raise ValueError("the dataset is empty")
        self.num_classes = int(self.labels.max()) + 1
        self.classes = list(classes) or [str(c) for c in range(self.num_classes)]
        self.size = size
        self.errors = list(errors)

    def __len__(self) -> int:
        return len(self.labels)

    def item(self, i: int):
        """The `SourceItem` of row `i`."""
        return self.items(i, i + 1)[0]

    def items(self, a: int, b: int) -> list[Any]:
        """The `SourceItem`s of rows ``[a, b)``."""
        return self.rows.items(a, b, self.labels[a:b], self.classes)

    def __getitem__(self, i: int) -> Sample:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """The samples of one batch: their bytes in one `read_items` call, then decoded one by one."""
        from resize_pipeline.sources.reader import read_items

        indices = [int(i) for i in indices]
        items = [self.item(i) for i in indices]
        # Parquet rows in row order, so each row group is read once per batch
        order = sorted(range(len(items)), key=lambda k: (items[k].url, items[k].row, items[k].offset))
        got = read_items([items[k] for k in order])
        blobs: list[Any] = [None] * len(items)
        for k, value in zip(order, got, strict=True):
            blobs[k] = value
        out = []
        for i, it, blob in zip(indices, items, blobs, strict=True):
            label = int(self.labels[i])
            if isinstance(blob, Exception):
                out.append(Sample(None, label, i, error_record(key=it.key, source=it.url, stage="read", exc=blob)))
                continue
            try:
                out.append(Sample(load_square(blob, self.size), label, i))
            except Exception as exc:  # noqa: BLE001 - per-sample policy: counted and skipped, never fatal
                out.append(Sample(None, label, i, error_record(key=it.key, source=it.url, stage="decode", exc=exc)))
        return out


def collate(samples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, dict[str, str]]]]:
    """A batch ``(uint8 images (B, 3, S, S), labels (B,), [(index, error record), ...])``: the samples
    that failed are left out of the tensors and listed instead. Plain ``(image, label)`` pairs (the
    synthetic task) are taken as they are."""
    good = [s for s in samples if s[0] is not None]
    bad = [(int(s[2]), s[3]) for s in samples if s[0] is None]
    x = torch.stack([s[0] for s in good]) if good else torch.empty((0,), dtype=torch.uint8)
    y = torch.tensor([int(s[1]) for s in good], dtype=torch.int64)
    return x, y, bad


# --- listing -----------------------------------------------------------------------------------------


#: rows without a label recorded (as list errors) per listing, at most
MAX_UNLABELLED = 100_000


def _unlabelled_error(key: str, url: str, where: str) -> dict[str, str]:
    return error_record(key=key, source=url, stage="list", exc=f"{where}: no label", error_type="SourceError")


def _combine(listings: Sequence[Any], size: int, where: str, classes: Sequence[str] = ()) -> LabelledImages:
    """One dataset from several listings, each streamed once into compact columns (`rowstore.RowStore`).
    Text labels are re-indexed over the union of their names (sorted); numeric labels are kept. Rows
    without a label are recorded as list errors."""
    from resize_pipeline.learned.rowstore import RowStore

    store = RowStore()
    errors: list[dict[str, str]] = []
    labels: list[tuple[Any, np.ndarray]] = []  # (listing, its rows' labels as listed) for listings with rows
    listed = 0
    for lst in listings:
        unlabelled: list[dict[str, str]] = []
        got: list[np.ndarray] = []
        for block in lst.rows():
            lab = np.asarray(block["label"], dtype=np.int64)
            listed += len(lab)
            keep = lab >= 0
            if not keep.all():
                for j in np.flatnonzero(~keep)[: max(0, MAX_UNLABELLED - len(unlabelled))].tolist():
                    unlabelled.append(_unlabelled_error(block["key"][j], block["url"][j], where))
                idx = np.flatnonzero(keep).tolist()
                block = {c: [block[c][j] for j in idx] for c in ("key", "url", "offset", "length", "row")}
                lab = lab[keep]
            if len(lab):
                store.add(block)
                got.append(lab)
        errors.extend(lst.errors)  # after its rows: a manifest adds to them as they stream
        errors.extend(unlabelled)
        if got:
            labels.append((lst, np.concatenate(got)))
    store.finish()
    named = any(lst.classes for lst in listings) and not classes
    all_names = sorted({c for lst in listings for c in lst.classes}) if named else list(classes)
    index = {c: i for i, c in enumerate(all_names)}
    if named:
        for k, (lst, lab) in enumerate(labels):
            if not lst.classes:
                raise ValueError(f"{where}: some files have text labels and others numbers")
            labels[k] = (lst, np.asarray([index[c] for c in lst.classes], dtype=np.int64)[lab])
    if not len(store):
        if listed:
            raise ValueError(f"{where}: none of its {listed} images has a label (an ImageFolder tree "
                             "ROOT/CLASS/image.jpg, a label column or .cls members)")
        raise ValueError(f"{where}: no images found")
    return LabelledImages(store, np.concatenate([lab for _, lab in labels]), all_names, size, errors)


def _list(url: str):
    from resize_pipeline.errors import SourceError
    from resize_pipeline.sources.listing import list_source

    try:
        return list_source(url)
    except SourceError as exc:
        raise ValueError(str(exc)) from None


def converted_output(dest: str, size: int) -> LabelledImages:
    """The complete shards of a ``convert`` output (WebDataset preferred, else Parquet), as listed by
    its ``_manifest.json``; class names from the manifest."""
    from resize_pipeline.errors import OutputError
    from resize_pipeline.readers.output import open_output

    try:
        out = open_output(dest)
    except OutputError as exc:
        raise ValueError(str(exc)) from None
    refs = out.shards("webdataset") or out.shards("parquet")  # tars preferred (byte-range reads)
    if not refs:
        raise ValueError(f"{dest}: the output lists no shards")
    classes = [str(c) for c in out.manifest.get("classes", [])]
    return _combine([_list(r.url) for r in refs], size, dest, classes)


def _parquet_files(paths: Sequence[str], size: int, where: str) -> LabelledImages:
    return _combine([_list(p) for p in paths], size, where)


def _has_manifest(url: str) -> bool:
    """A remote folder holding ``_manifest.json`` (a ``convert`` output on an object store)."""
    from fsspec.core import url_to_fs

    try:
        fs, root = url_to_fs(url)
        return bool(fs.isfile(root.rstrip("/") + "/_manifest.json"))
    except Exception:  # noqa: BLE001 - not a folder we can look into: list it as a source
        return False


def open_dataset(spec: str, size: int) -> LabelledImages:
    """A directory (ImageFolder, a ``convert`` output, or holding *.tar / *.parquet), a manifest file,
    a glob, or any fsspec URL ``list_source`` reads."""
    if os.path.isdir(spec):
        if os.path.exists(os.path.join(spec, "_manifest.json")):
            return converted_output(spec, size)
        if not glob.glob(os.path.join(glob.escape(spec), "*.tar")):
            parquets = sorted(glob.glob(os.path.join(glob.escape(spec), "*.parquet")))
            images = _list(spec)
            if parquets and not images.bound:  # a folder's bound is its exact image count
                images.close()
                return _parquet_files(parquets, size, spec)
            if images.kind == "directory":
                raise ValueError(f"{spec}: no class sub-folders (expected ROOT/CLASS/.../image.jpg)")
            return _combine([images], size, spec)
        return _combine([_list(spec)], size, spec)
    if "://" in spec and _has_manifest(spec):
        return converted_output(spec, size)
    if "://" not in spec and any(c in spec for c in "*?["):
        paths = sorted(glob.glob(spec))
        if not paths:
            raise ValueError(f"dataset {spec!r}: no such directory or files")
        if all(p.endswith(".parquet") for p in paths):
            return _parquet_files(paths, size, spec)
    elif "://" not in spec and not os.path.exists(spec):
        raise ValueError(f"dataset {spec!r}: no such directory or files")
    return _combine([_list(spec)], size, spec)
