"""Parquet shards as tables: pyarrow, Hugging Face `datasets`, Ray Data.

Our Parquet ``image`` column is the `datasets` Image layout (``struct<bytes, path>``); `image_bytes`
turns a column of it (or a plain binary column) into Python bytes.

Each reader takes ``generation=`` (a DEST grown by ``convert --update``; default its latest complete
generation) and leaves out the samples superseded up to it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resize_pipeline.errors import OutputError
from resize_pipeline.readers.output import open_output
from resize_pipeline.sources.image_column import column_bytes, value_bytes

__all__ = ["arrow_table", "hf_dataset", "image_bytes", "ray_dataset", "value_bytes"]


def image_bytes(table_or_column) -> list[bytes | None]:
    """The encoded image of every row: from a `pyarrow.Table` (its ``image`` column) or a column."""
    column = table_or_column.column("image") if hasattr(table_or_column, "column_names") else table_or_column
    return column_bytes(column)


def _parquet(dest: str, storage_options: dict[str, Any] | None, generation: int | None = None):
    out = open_output(dest, storage_options, generation)
    refs = out.shards("parquet")
    if not refs:
        raise OutputError(f"{dest} has no Parquet shards (formats: {', '.join(out.formats()) or 'none'})")
    return out, refs


def _live_rows(refs) -> list[int] | None:
    """Row numbers of the live samples across `refs` read in order (None: every row is live)."""
    if not any(r.dead for r in refs):
        return None
    from resize_pipeline.readers.generations import live_mask

    rows, base = [], 0
    for r in refs:
        mask = live_mask(r.samples, np.asarray(r.dead, dtype=np.int64))
        rows += (np.flatnonzero(mask) + base).tolist()
        base += r.samples
    return rows


def arrow_table(dest: str, columns: list[str] | None = None, storage_options: dict[str, Any] | None = None,
                generation: int | None = None):
    """All Parquet shards of DEST as one `pyarrow.Table` (``image`` is a ``{bytes, path}`` struct)."""
    import pyarrow.parquet as pq

    out, refs = _parquet(dest, storage_options, generation)
    if not any(r.dead for r in refs):
        return pq.ParquetDataset([r.path for r in refs], filesystem=out.fs).read(columns=columns)
    import pyarrow as pa

    from resize_pipeline.readers.generations import live_mask

    parts = []
    for r in refs:  # file by file, in the manifest's order, superseded rows left out
        with out.fs.open(r.path, "rb") as fh:  # ParquetFile: pq.read_table's threaded scan of a Python file
            t = pq.ParquetFile(fh).read(columns=columns)  # can abort the process at exit
        parts.append(t.filter(pa.array(live_mask(t.num_rows, np.asarray(r.dead, dtype=np.int64)))))
    return pa.concat_tables(parts)


def hf_dataset(dest: str, split: str = "train", storage_options: dict[str, Any] | None = None,
               generation: int | None = None, **kwargs):
    """DEST's Parquet shards through ``datasets.load_dataset("parquet", ...)``: ``image`` comes back as
    PIL images (the schema carries the Image feature), ``label`` as int (None when unlabelled)."""
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise ImportError("hf_dataset needs Hugging Face datasets: pip install 'resize-pipeline[hf]'") from exc
    _, refs = _parquet(dest, storage_options, generation)
    if storage_options:
        kwargs["storage_options"] = storage_options
    ds = load_dataset("parquet", data_files=[r.url for r in refs], split=split, **kwargs)
    live = _live_rows(refs)
    return ds if live is None else ds.select(live)


def ray_dataset(dest: str, fmt: str = "parquet", storage_options: dict[str, Any] | None = None,
                generation: int | None = None, **kwargs):
    """A `ray.data.Dataset` over DEST's shards: ``read_parquet`` (rows: key, image {bytes, path}, ...) or
    ``read_webdataset`` (rows: ``__key__``, ``jpg`` decoded by Ray, ``json``, ``cls``)."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("ray_dataset needs Ray: pip install 'resize-pipeline[ray]'") from exc
    from resize_pipeline.readers.output import superseded

    out = open_output(dest, storage_options, generation)
    refs = out.shards(fmt)
    if not refs:
        raise OutputError(f"{dest} has no {fmt} shards (formats: {', '.join(out.formats()) or 'none'})")
    paths = [r.path for r in refs]
    dead = superseded(dest, storage_options, out.generation) if any(r.dead for r in refs) else set()
    if dead:
        kwargs["include_paths"] = True
    if fmt == "parquet":
        ds = ray.data.read_parquet(paths, filesystem=_arrow_fs(out), **kwargs)
    else:
        ds = ray.data.read_webdataset(paths, filesystem=_arrow_fs(out), **kwargs)
    if not dead:
        return ds
    key = "key" if fmt == "parquet" else "__key__"
    return ds.filter(_NotSuperseded(dead, key)).drop_columns(["path"])


class _NotSuperseded:
    """A Ray Data row filter: keep rows whose (file, key) was not superseded."""

    def __init__(self, dead: set[tuple[str, str]], key: str) -> None:
        self.dead, self.key = dead, key

    def __call__(self, row: dict[str, Any]) -> bool:
        return (str(row["path"]).rsplit("/", 1)[-1], str(row[self.key])) not in self.dead


def _arrow_fs(out):
    """A pyarrow filesystem for Ray: None locally (Ray's own), else fsspec wrapped for pyarrow."""
    if out.is_local:
        return None
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(out.fs))
