"""A Parquet file of image bytes (a binary column such as ``image``/``jpg``/``bytes``, or the Hugging
Face ``datasets`` Image struct ``{bytes, path}`` that our own Parquet shards use; see `image_column`):
one input per row, read back by row. Its other columns stream a batch at a time; the image column is
never read while listing. A row whose (unsigned 64-bit) label is beyond the signed 64-bit range is
an error row (stage ``list``), never wrapped around."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

from resize_pipeline.sources.common import INT64, Listing, beyond_int64, list_error, raw_block, unstrip
from resize_pipeline.sources.manifest import LABEL_COLUMNS, PATH_COLUMNS, _labels, _pick
from resize_pipeline.sources.manifest_io import PARQUET_BATCH, parquet_batches
from resize_pipeline.sources.stamps import stamp_info


def open_parquet_bytes(fs, path: str, image_column: str, label_column: str | None) -> Listing:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        schema, n_rows = pf.schema_arrow, pf.metadata.num_rows
    cols = [n for n in schema.names if n != image_column]
    kcol = "key" if "key" in cols else None
    pcol = _pick(cols, None, PATH_COLUMNS + ("source",), "path", path)
    lcol = _pick(cols, label_column, LABEL_COLUMNS, "label", path)
    stem = posixpath.splitext(posixpath.basename(path))[0]
    url = unstrip(fs, path)
    stamp = stamp_info(fs.info(path))

    def batches(columns: list[str]) -> Iterator[Any]:
        with fs.open(path, "rb") as fh:
            yield from parquet_batches(pq.ParquetFile(fh, pre_buffer=False), columns)

    # labels are numbers when every value is one, else class names indexed in sorted order: the
    # whole column decides, so it is read once (alone) before the rows stream
    classes: list[str] = []
    numbers = True
    if lcol:
        found: set[str] = set()
        for b in batches([lcol]):
            values = b.column(0).to_pylist()
            _, names, _ = _labels(values)
            if numbers and not all(isinstance(v, int) and not isinstance(v, bool) or v is None for v in values):
                numbers = False
            found.update(n for n in names if n)
        classes = [] if numbers else sorted(found)
    index = {c: i for i, c in enumerate(classes)}
    wanted = [c for c in (kcol, pcol, lcol, "label_name" if "label_name" in cols else None,
                          "meta" if "meta" in cols else None) if c]
    listing = Listing("parquet-bytes", bound=n_rows, classes=classes, source_stamps=(stamp,))

    def blocks() -> Iterator[dict[str, list]]:
        if not cols:  # nothing but the image column: the metadata gives the rows
            for a in range(0, n_rows, PARQUET_BATCH):
                m = min(n_rows, a + PARQUET_BATCH) - a
                yield raw_block([f"{stem}/{i:09d}" for i in range(a, a + m)], [url] * m, row=range(a, a + m),
                                stamp=[stamp] * m)
            return
        row0 = 0
        for b in batches(sorted(set(wanted)) or cols[:1]):
            n = b.num_rows
            get = {c: b.column(c).to_pylist() for c in set(wanted)}
            if kcol:
                rels = [str(k) for k in get[kcol]]
            elif pcol:
                rels = [str(p) for p in get[pcol]]
            else:
                rels = [f"{stem}/{i:09d}" for i in range(row0, row0 + n)]
            labels = names = None
            if lcol:
                values = get[lcol]
                names = ["" if v is None else str(v) for v in values]
                labels = [-1 if v is None else int(v) for v in values] if numbers else [index.get(x, -1) for x in names]
                if "label_name" in get:
                    names = [str(v or "") for v in get["label_name"]]
            metas = [str(v or "") for v in get["meta"]] if "meta" in get else None
            rows: range | list[int] = range(row0, row0 + n)
            if labels and (max(labels) > INT64[1] or min(labels) < INT64[0]):
                rels, labels, names, metas, rows = _without_huge_labels(listing, url, stem, lcol, row0, rels, labels,
                                                                        names, metas)
            yield raw_block(rels, [url] * len(rels), label=labels, label_name=names, meta=metas,
                            row=rows, stamp=[stamp] * len(rels))
            row0 += n

    listing.set_blocks(blocks)
    return listing


def _without_huge_labels(listing: Listing, url: str, stem: str, lcol: str, row0: int, rels: list[str],
                         labels: list[int], names: list[str] | None, metas: list[str] | None) -> tuple:
    """A block without its rows whose label is beyond 64 bits: each is an error row (stage ``list``)."""
    keep = []
    for i, v in enumerate(labels):
        if INT64[0] <= v <= INT64[1]:
            keep.append(i)
        else:
            why = f"row {row0 + i} of the manifest: {lcol[:60]!r} {beyond_int64(v)}"
            listing.errors.add(list_error(f"{stem}/row {row0 + i}", url, why))

    def pick(values: list | None) -> list | None:
        return None if values is None else [values[i] for i in keep]

    return pick(rels), pick(labels), pick(names), pick(metas), [row0 + i for i in keep]
