"""Listing parts: the job's listing written to DEST (``_listing/part-*.parquet``) as it streams.

A part holds the final rows (`sources.base.ROW_COLUMNS`, Arrow types `arrow_schema`) of a whole
number of shards, in order: part ``p`` is rows ``[p*R, (p+1)*R)`` of the listing, ``R`` a multiple of
the shard size (`rows_per_part`). A shard task is a row range of one part (`shards.ShardTask`), and
the worker that converts it reads just those rows (`read_rows`: the row groups that hold them), so a
task is a few dozen bytes whatever the shard size, and the driver never holds the listing.

Each part records two digests in its metadata: one over every column but ``stamp`` (what the inputs
are, and so what is written), one over the stamps (whether they changed). A rerun lists SOURCE
again and compares each part it makes with the recorded one (`PartSink`): equal parts are kept, a
different one stops the job before any shard of it runs (see docs/reliability.md, section 2).

Texts that are not valid UTF-8 (file names read with ``surrogateescape``) are stored escaped
(``\\`` -> ``\\\\``, a lone surrogate -> ``\\udcXX``), flagged per column in the part's metadata, and
restored on reading.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from resize_pipeline.layout import LISTING_DIR, listing_part
from resize_pipeline.sources.base import ROW_COLUMNS, arrow_schema

#: rows a part aims at (rounded to whole shards): small enough that the first shard starts soon
PART_ROWS = 1 << 14
#: rows per Parquet row group inside a part aim at this (rounded to whole shards)
GROUP_ROWS = 1 << 12
META_KEY = b"resize_pipeline.part"
_TEXT = ("url", "label_name", "meta")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED = re.compile(r"\\(\\|ud[89a-f][0-9a-f]{2})")


def rows_per_part(samples_per_shard: int) -> int:
    """Rows in each part (the last one may hold fewer): a whole number of shards, about `PART_ROWS`."""
    return samples_per_shard * max(1, -(-PART_ROWS // samples_per_shard))


def rows_per_group(samples_per_shard: int) -> int:
    return samples_per_shard * max(1, GROUP_ROWS // samples_per_shard)


def part_name(index: int) -> str:
    return listing_part(index)[1]


@dataclass(frozen=True, slots=True)
class PartInfo:
    """What a part's metadata records."""

    index: int
    rows: int
    digest: str
    stamps: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": part_name(self.index), "rows": self.rows, "digest": self.digest, "stamps": self.stamps}


# ---------------------------------------------------------------------------------------- escaping
def _needs_escape(values: list[str]) -> bool:
    return any(_SURROGATE.search(v) for v in values if v)


def _escape_all(values: list[str]) -> list[str]:
    def one(v: str) -> str:
        v = v.replace("\\", "\\\\")
        return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", v) if _SURROGATE.search(v) else v
    return [one(v) for v in values]


def _unescape(values: list[str]) -> list[str]:
    def one(m: re.Match) -> str:
        s = m.group(1)
        return "\\" if s == "\\" else chr(int(s[1:], 16))
    return [_ESCAPED.sub(one, v) if "\\" in v else v for v in values]


# ------------------------------------------------------------------------------------------ write
def encode_part(index: int, block: dict[str, list], group_rows: int) -> tuple[bytes, PartInfo]:
    """A part's Parquet bytes and what it records, from final rows (`ROW_COLUMNS` as lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema()
    escaped: list[str] = []
    arrays = []
    for c in ROW_COLUMNS:
        values = block[c]
        try:
            arrays.append(pa.array(values, type=schema.field(c).type))
        except UnicodeEncodeError:  # a name that is not UTF-8 (surrogateescape): stored escaped
            if c not in _TEXT or not _needs_escape(values):
                raise
            arrays.append(pa.array(_escape_all(values), type=schema.field(c).type))
            escaped.append(c)
    table = pa.Table.from_arrays(arrays, schema=schema)
    h, hs = hashlib.sha256(), hashlib.sha256()
    h.update(json.dumps(escaped).encode())
    for c, arr in zip(ROW_COLUMNS, arrays, strict=True):
        for buf in arr.buffers():
            if buf is not None:
                (hs if c == "stamp" else h).update(memoryview(buf))
    info = PartInfo(index, table.num_rows, h.hexdigest()[:32], hs.hexdigest()[:32])
    meta = dict(info.to_dict(), escaped=escaped)
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=max(1, group_rows), compression="zstd", write_statistics=False)
    return out.getvalue(), info


def info_of(metadata: Any, index: int) -> PartInfo | None:
    """The `PartInfo` a part's Parquet metadata records (None: not a part of ours)."""
    raw = (metadata.metadata or {}).get(META_KEY)
    try:
        d = json.loads(raw or b"")
        return PartInfo(index, int(d["rows"]), str(d["digest"]), str(d["stamps"]))
    except (TypeError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------------------------------- read
def _open(dest_url: str, storage_options: dict[str, Any], name: str):
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(dest_url, **storage_options)
    return fs, posixpath.join(root.rstrip("/") or "/", LISTING_DIR, name)


def read_info(dest_url: str, storage_options: dict[str, Any], index: int) -> PartInfo | None:
    """What recorded part `index` holds; None when it is absent or unreadable."""
    import pyarrow.parquet as pq

    fs, path = _open(dest_url, storage_options, part_name(index))
    try:
        with fs.open(path, "rb") as fh:
            return info_of(pq.ParquetFile(fh).schema_arrow, index)
    except (OSError, ValueError):
        return None


def read_rows(dest_url: str, storage_options: dict[str, Any], name: str, a: int, b: int) -> dict[str, list]:
    """Rows ``[a, b)`` of part `name` as lists (`ROW_COLUMNS`): only the row groups that hold them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = _open(dest_url, storage_options, name)
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        meta = json.loads((pf.schema_arrow.metadata or {}).get(META_KEY, b"{}"))
        groups, start, first = [], 0, None
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if start < b and start + n > a:
                groups.append(g)
                first = start if first is None else first
            start += n
        if not groups:
            return {c: [] for c in ROW_COLUMNS}
        table = pf.read_row_groups(groups, columns=list(ROW_COLUMNS))
    assert first is not None
    table = table.slice(a - first, b - a)
    if isinstance(table, pa.Table):
        out = table.to_pydict()
    else:  # pragma: no cover - pyarrow always returns a Table here
        out = dict(table)
    for c in meta.get("escaped", ()):
        out[c] = _unescape(out[c])
    return out


def read_keys(dest_url: str, storage_options: dict[str, Any], index: int) -> Sequence[str]:
    """The keys of recorded part `index` (tests and tools)."""
    info = read_info(dest_url, storage_options, index)
    return read_rows(dest_url, storage_options, part_name(index), 0, info.rows if info else 0)["key"]
