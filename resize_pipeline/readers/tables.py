"""Parquet shards as tables: pyarrow, Hugging Face `datasets`, Ray Data.

Our Parquet ``image`` column is the `datasets` Image layout (``struct<bytes, path>``); `image_bytes`
turns a column of it (or a plain binary column) into Python bytes.
"""

from __future__ import annotations

from typing import Any

from resize_pipeline.errors import OutputError
from resize_pipeline.readers.output import open_output
from resize_pipeline.sources.image_column import column_bytes, value_bytes

__all__ = ["arrow_table", "hf_dataset", "image_bytes", "ray_dataset", "value_bytes"]


def image_bytes(table_or_column) -> list[bytes | None]:
    """The encoded image of every row: from a `pyarrow.Table` (its ``image`` column) or a column."""
    column = table_or_column.column("image") if hasattr(table_or_column, "column_names") else table_or_column
    return column_bytes(column)


def _parquet(dest: str, storage_options: dict[str, Any] | None):
    out = open_output(dest, storage_options)
    refs = out.shards("parquet")
    if not refs:
        raise OutputError(f"{dest} has no Parquet shards (formats: {', '.join(out.formats()) or 'none'})")
    return out, refs


def arrow_table(dest: str, columns: list[str] | None = None, storage_options: dict[str, Any] | None = None):
    """All Parquet shards of DEST as one `pyarrow.Table` (``image`` is a ``{bytes, path}`` struct)."""
    import pyarrow.parquet as pq

    out, refs = _parquet(dest, storage_options)
    return pq.ParquetDataset([r.path for r in refs], filesystem=out.fs).read(columns=columns)


def hf_dataset(dest: str, split: str = "train", storage_options: dict[str, Any] | None = None, **kwargs):
    """DEST's Parquet shards through ``datasets.load_dataset("parquet", ...)``: ``image`` comes back as
    PIL images (the schema carries the Image feature), ``label`` as int (None when unlabelled)."""
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise ImportError("hf_dataset needs Hugging Face datasets: pip install 'resize-pipeline[hf]'") from exc
    _, refs = _parquet(dest, storage_options)
    if storage_options:
        kwargs["storage_options"] = storage_options
    return load_dataset("parquet", data_files=[r.url for r in refs], split=split, **kwargs)


def ray_dataset(dest: str, fmt: str = "parquet", storage_options: dict[str, Any] | None = None, **kwargs):
    """A `ray.data.Dataset` over DEST's shards: ``read_parquet`` (rows: key, image {bytes, path}, ...) or
    ``read_webdataset`` (rows: ``__key__``, ``jpg`` decoded by Ray, ``json``, ``cls``)."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("ray_dataset needs Ray: pip install 'resize-pipeline[ray]'") from exc
    out = open_output(dest, storage_options)
    refs = out.shards(fmt)
    if not refs:
        raise OutputError(f"{dest} has no {fmt} shards (formats: {', '.join(out.formats()) or 'none'})")
    paths = [r.path for r in refs]
    if fmt == "parquet":
        return ray.data.read_parquet(paths, filesystem=_arrow_fs(out), **kwargs)
    return ray.data.read_webdataset(paths, filesystem=_arrow_fs(out), **kwargs)


def _arrow_fs(out):
    """A pyarrow filesystem for Ray: None locally (Ray's own), else fsspec wrapped for pyarrow."""
    if out.is_local:
        return None
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(out.fs))
