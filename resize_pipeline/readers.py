"""Feed trainers from our shards: PyTorch (webdataset), Ray Data, NVIDIA DALI, plain pyarrow.

All readers take DEST (a folder or fsspec URL holding ``_manifest.json``) and use the shard list in
the manifest, so half-written runs are never read.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from fsspec.core import url_to_fs


def shard_urls(dest: str, fmt: str = "webdataset", storage_options: dict[str, Any] | None = None) -> list[str]:
    """The complete shards of `fmt` listed in DEST's manifest, as URLs, in order."""
    fs, root = url_to_fs(dest, **(storage_options or {}))
    path = posixpath.join(root, "_manifest.json")
    if not fs.exists(path):
        raise FileNotFoundError(f"{dest} has no _manifest.json: the conversion has not finished")
    with fs.open(path, "r", encoding="utf-8") as fh:
        manifest = json.load(fh)
    names = [s["name"] for s in manifest["shards"] if s["format"] == fmt]
    if not names:
        raise ValueError(f"{dest} has no {fmt} shards (formats: {', '.join(manifest.get('formats', []))})")
    return [fs.unstrip_protocol(posixpath.join(root, n)) for n in names]


def torch_dataset(dest: str, *, shuffle: int = 0, decode: str = "torchrgb", with_label: bool = True, **wds_kwargs):
    """A `webdataset.WebDataset` yielding ``(image, label)`` (or ``(image, key)`` when unlabelled).

    `decode` is a webdataset decoder spec ("torchrgb" -> float CHW tensors, "rgb8" -> uint8 HWC numpy).
    Use with ``torch.utils.data.DataLoader(ds, batch_size=..., num_workers=...)``.
    """
    import webdataset as wds

    urls = shard_urls(dest, "webdataset")
    ds = wds.WebDataset(urls, shardshuffle=bool(shuffle), **wds_kwargs)
    if shuffle:
        ds = ds.shuffle(shuffle)
    ds = ds.decode(decode)
    image = "jpg;png;webp;npy"
    return ds.to_tuple(image, "cls" if with_label else "__key__")


def arrow_table(dest: str, columns: list[str] | None = None):
    """All Parquet shards as one `pyarrow.Table`."""
    import pyarrow.parquet as pq

    fs, _ = url_to_fs(dest)
    paths = [fs._strip_protocol(u) for u in shard_urls(dest, "parquet")]
    return pq.ParquetDataset(paths, filesystem=fs).read(columns=columns)


def ray_dataset(dest: str, fmt: str = "parquet"):
    """A `ray.data.Dataset` over the shards (`read_parquet` or `read_webdataset`)."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("ray_dataset needs `pip install resize-pipeline[ray]`") from exc
    urls = shard_urls(dest, fmt)
    return ray.data.read_parquet(urls) if fmt == "parquet" else ray.data.read_webdataset(urls)


def dali_pipeline(
    dest: str,
    *,
    batch_size: int = 64,
    num_threads: int = 4,
    device_id: int | None = None,
    ext: str = "jpg",
    shuffle: bool = False,
    seed: int = 0,
):
    """A built DALI pipeline reading our WebDataset shards: outputs ``(images, labels)``.

    Images are decoded on the GPU (``mixed``) when `device_id` is given, on the CPU otherwise
    (DALI's CPU-only mode). Labels are the raw ``.cls`` members: ASCII digits as uint8 (webdataset's
    convention), so ``int(bytes(np.asarray(labels.at(i))))`` gives the class index. Unlabelled shards
    have no ``.cls``: use ``fn.readers.webdataset(..., missing_component_behavior="empty")`` for those.
    """
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError as exc:
        raise ImportError("dali_pipeline needs `pip install resize-pipeline[dali]`") from exc
    fs, _ = url_to_fs(dest)
    paths = [fs._strip_protocol(u) for u in shard_urls(dest, "webdataset")]

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)  # type: ignore[arg-type]
    def pipe():
        img, cls = fn.readers.webdataset(
            paths=paths, ext=[ext, "cls"], random_shuffle=shuffle, name="reader",
            dtypes=[types.UINT8, types.UINT8],
        )
        if ext in ("jpg", "png", "webp"):
            img = fn.decoders.image(img, device="mixed" if device_id is not None else "cpu", output_type=types.RGB)
        return img, cls

    p = pipe()
    p.build()
    return p
