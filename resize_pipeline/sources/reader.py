"""Fetch the bytes of a batch of `SourceItem`s through fsspec, with retries for transient errors.

Whole files go through ``fs.cat`` (concurrent on async filesystems such as s3fs), tar members through
``fs.cat_ranges``, Parquet rows through the row groups that hold them. Failures come back in place as
exceptions; permanent ones (missing file, permission) are not retried.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from fsspec.core import url_to_fs

from resize_pipeline.sources.base import SourceItem
from resize_pipeline.urls import protocol

log = logging.getLogger(__name__)

PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def _fs(url: str, storage_options: dict[str, Any]):
    return url_to_fs(url, **storage_options)


def _cat_files(items: list[SourceItem], so: dict[str, Any]) -> list[bytes | Exception]:
    fs, _ = _fs(items[0].url, so)
    paths = [fs._strip_protocol(it.url) for it in items]
    # fs.cat expands glob characters: a file named "img[1].jpg" would match "img1.jpg" (or nothing), so
    # such names are read one by one, literally
    plain = [p for p in paths if not any(c in p for c in "*?[")]
    got: dict[str, bytes | Exception] = {}
    if plain:
        got = fs.cat(plain, on_error="return")
        if not isinstance(got, dict):  # a single path comes back as bytes
            got = {plain[0]: got}
    for p in paths:
        if p not in got:
            try:
                got[p] = fs.cat_file(p)
            except Exception as exc:  # noqa: BLE001 - returned in place, like fs.cat(on_error="return")
                got[p] = exc
    return [got[p] for p in paths]


def _cat_ranges(items: list[SourceItem], so: dict[str, Any]) -> list[bytes | Exception]:
    fs, _ = _fs(items[0].url, so)
    paths = [fs._strip_protocol(it.url) for it in items]
    starts = [it.offset for it in items]
    ends = [it.offset + it.length for it in items]
    return list(fs.cat_ranges(paths, starts, ends, on_error="return"))


def _parquet_rows(items: list[SourceItem], so: dict[str, Any]) -> list[bytes | Exception]:
    import pyarrow.parquet as pq

    from resize_pipeline.sources.image_column import column_bytes, find_image_column

    fs, path = _fs(items[0].url, so)
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        col = find_image_column(pf.schema_arrow)
        if col is None:
            raise ValueError(f"{items[0].url} has no column of image bytes")
        bounds, start = [], 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            bounds.append((start, start + n))
            start += n
        out: list[bytes | Exception] = []
        cache: dict[int, list] = {}
        for it in items:
            found = next((i for i, (a, b) in enumerate(bounds) if a <= it.row < b), None)
            if found is None:
                out.append(IndexError(f"row {it.row} not in {it.url}"))
                continue
            g = found
            if g not in cache:
                cache.clear()  # rows arrive in order: keep one row group in memory
                cache[g] = column_bytes(pf.read_row_group(g, columns=[col]).column(0))
            value = cache[g][it.row - bounds[g][0]]
            out.append(value if value is not None else ValueError("null image bytes"))
    return out


def _read_group(kind: str, items: list[SourceItem], so: dict[str, Any]) -> list[bytes | Exception]:
    try:
        if kind == "range":
            return _cat_ranges(items, so)
        if kind == "parquet":
            return _parquet_rows(items, so)
        return _cat_files(items, so)
    except Exception as exc:  # noqa: BLE001 - the whole group failed: every item gets the reason
        return [exc] * len(items)


def read_items(
    items: Sequence[SourceItem],
    storage_options: dict[str, Any] | None = None,
    retries: int = 3,
    backoff: float = 0.2,
) -> list[bytes | Exception]:
    """Read every item's bytes, in order; exceptions in place of what could not be read."""
    so = storage_options or {}
    out: list[bytes | Exception | None] = [None] * len(items)
    pending = list(range(len(items)))
    for attempt in range(retries + 1):
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i in pending:
            it = items[i]
            kind = "parquet" if it.row >= 0 else "range" if it.offset >= 0 else "file"
            proto = protocol(it.url)
            groups[(kind, proto if kind != "parquet" else it.url)].append(i)
        for (kind, _), idx in groups.items():
            for i, value in zip(idx, _read_group(kind, [items[i] for i in idx], so), strict=True):
                out[i] = value
        pending = [
            i for i in pending if isinstance(out[i], Exception) and not isinstance(out[i], PERMANENT)
        ]
        if not pending or attempt == retries:
            break
        log.warning("retrying %d reads after transient errors (attempt %d): %s", len(pending), attempt + 1, out[pending[0]])
        time.sleep(backoff * 2**attempt)
    return out  # type: ignore[return-value]
