"""Manifests: a CSV/TSV/JSONL/JSON/Parquet file with a path column (relative paths resolve against the
manifest's folder) and optional label and metadata columns, read in blocks.

The rows stream: Parquet a row group batch at a time, CSV/TSV/JSONL in 32 MiB blocks (`CSV_BLOCK`),
so shard 0 can start long before the last row is read, and the driver never holds the manifest.
Before the rows are read, the manifest's rows are counted (Parquet: its metadata; text: its lines),
an upper bound on the inputs that fixes the shard names' width.

- A row without a path is an error row (stage ``list``), never read as the manifest's folder.
- Labels: an integer column keeps its numbers; any other column's values are class names, indexed
  in sorted order over the whole column (read once, that column alone, before the rows stream).
- The other columns are the row's metadata (JSON), carried to the output.
- Column types come from the first block (pyarrow's inference). A CSV/TSV column whose values stop
  fitting that type further down is read as text from that block on (a warning says where; an
  integer label column then keeps the rows whose text is a number, and gives the others label -1
  with their text as the label name). A JSONL file whose rows change type or fields is refused.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np

from resize_pipeline.errors import SourceError
from resize_pipeline.sources.common import (
    BLOCK,
    INT64,
    Listing,
    beyond_int64,
    ext,
    list_error,
    raw_block,
    unstrip,
)
from resize_pipeline.sources.manifest_io import (
    PATH_COLUMNS,
    Batches,
    _csv_header,
    _json_list,
    _release_arrow_memory,
    count_lines,
)
from resize_pipeline.sources.stamps import RowStamper, stamp_info

log = logging.getLogger(__name__)

MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")
LABEL_COLUMNS = ("label", "cls", "class", "target")


# ------------------------------------------------------------------------------------------ URLs
class ManifestPaths:
    """A manifest's path column: a URL as given, an absolute path, or a path relative to the manifest."""

    def __init__(self, fs: Any, base: str) -> None:
        self.fs, self.base = fs, base
        self._local = _local_prefix(fs)

    def rels(self, texts: list[str]) -> list[str]:
        return [t.split("://", 1)[1] if "://" in t else t for t in texts]

    def urls(self, texts: list[str]) -> list[str]:
        fs, base, join, norm = self.fs, self.base, posixpath.join, posixpath.normpath
        local = self._local
        if local is None:
            return [t if "://" in t else fs.unstrip_protocol(t) if t.startswith("/")
                    else fs.unstrip_protocol(norm(join(base, t))) for t in texts]
        # a local manifest: fsspec's unstrip_protocol of a normalised absolute path is ``file://`` + it
        # (checked by `_local_prefix`); the same strings as above, ~5x faster on millions of rows
        out = []
        prefix = local + (base.rstrip("/") or "") + "/"
        for t in texts:
            if "://" in t:
                out.append(t)
            elif t.startswith("/"):
                plain = "//" not in t and "/." not in t and not t.endswith("/")  # then normpath(t) == t
                out.append(local + t if plain or norm(t) == t else fs.unstrip_protocol(t))
            elif "//" not in t and "/." not in t and not t.startswith(".") and not t.endswith("/") and t:
                out.append(prefix + t)  # what normpath(join(base, t)) gives for a plain relative path
            else:
                out.append(local + norm(join(base, t)))
        return out


def _local_prefix(fs: Any) -> str | None:
    """``file://`` when `fs` is the local filesystem and turns normalised absolute paths into URLs by
    prefixing them (as fsspec's LocalFileSystem does); None otherwise."""
    import os

    from resize_pipeline.urls import is_local_fs

    if not is_local_fs(fs) or os.sep != "/":
        return None
    probe = "/a b/c.jpg"
    url = fs.unstrip_protocol(probe)
    return url[: -len(probe)] if url.endswith(probe) and url[: -len(probe)] == "file://" else None


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: str):
    if wanted:
        if wanted not in columns:
            raise SourceError(f"{path}: no {what} column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    lower = {c.lower(): c for c in columns}
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


# ----------------------------------------------------------------------------------------- labels
def _labels(values: list[Any]) -> tuple[list[int], list[str], list[str]]:
    """Label column -> (indices, names, classes). Ints are kept; strings are indexed in sorted order."""
    if all(isinstance(v, int) and not isinstance(v, bool) or v is None for v in values):
        return [-1 if v is None else int(v) for v in values], ["" if v is None else str(v) for v in values], []
    names = ["" if v is None else str(v) for v in values]
    classes = sorted({n for n in names if n})
    index = {c: i for i, c in enumerate(classes)}
    return [index.get(n, -1) for n in names], names, classes


def _label_names(column) -> list[str]:
    """A non-integer label column's values as class names ("" where there is none)."""
    import pyarrow as pa

    t = column.type
    if pa.types.is_dictionary(t):
        column = column.cast(t.value_type)
        t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return column.fill_null("").to_pylist()
    return _labels(column.to_pylist())[1]


def _is_int_labels(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_null(t)


def _label_columns(column, classes: list[str] | None, warn: list[bool]) -> tuple[list[int], list[str]]:
    """A block's label column -> (labels, label names). `classes` None: an integer column (numbers
    kept, the number as its name; a text value after a type change: label -1, its text as name);
    else the class names, indexed."""
    import pyarrow as pa

    if classes is None:
        if pa.types.is_integer(column.type) or pa.types.is_null(column.type):
            values = column.to_pylist()
            return [-1 if v is None else int(v) for v in values], ["" if v is None else str(v) for v in values]
        labels, names = [], []
        for v in column.to_pylist():
            v = "" if v is None else str(v).strip()
            try:
                labels.append(int(v) if v else -1)
                names.append(str(int(v)) if v else "")
            except ValueError:
                if not warn[0]:
                    log.warning("label %r is not a number, as the first rows' labels were: such rows get label -1", v)
                    warn[0] = True
                labels.append(-1)
                names.append(v)
        return labels, names
    names = _label_names(column)
    index = {c: i for i, c in enumerate(classes)}
    return [index.get(n, -1) for n in names], names


def _classes(batches: Batches, path_column: str, column: str) -> list[str]:
    """Every class name of a non-integer label column (rows with a path only), sorted: read once,
    that column and the paths alone."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found: set[str] = set()
    for batch in batches:
        paths = batch.column(path_column)
        if pa.types.is_dictionary(paths.type):
            paths = paths.cast(paths.type.value_type)
        if pa.types.is_null(paths.type):
            continue  # no row of this batch has a path
        valid = pc.and_kleene(pc.is_valid(paths), pc.not_equal(paths, ""))
        found.update(_label_names(batch.column(column).filter(valid)))
    found.discard("")
    return sorted(found)


# ---------------------------------------------------------------------------------------- listing
def _schema(fs, path: str, path_column: str | None):
    """The manifest's columns and their types (text manifests: from the first block), and the count
    of its rows (text manifests: of its lines, an upper bound)."""
    kind = ext(path)
    if kind == ".parquet":
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            return pf.schema_arrow, pf.metadata.num_rows
    if kind == ".json":
        table = _json_list(fs, path)
        return table.schema, table.num_rows
    schema = Batches(fs, path, path_column).infer()
    if schema is None:  # a header and no rows
        import pyarrow as pa

        if kind in (".csv", ".tsv"):
            header = _csv_header(fs, path, "\t" if kind == ".tsv" else ",")
            return pa.schema([(c, pa.string()) for c in header]), 0
        return pa.schema([]), 0
    lines = count_lines(fs, path)
    return schema, max(0, lines - 1) if kind in (".csv", ".tsv") else lines


def open_manifest(fs, path: str, path_column: str | None, label_column: str | None) -> Listing:
    """A manifest file, streamed (see the module docstring)."""
    import pyarrow as pa

    schema, bound = _schema(fs, path, path_column)
    cols = list(schema.names)
    pcol = _pick(cols, path_column, PATH_COLUMNS, "path", path)
    if pcol is None:
        raise SourceError(f"{path}: no path column; name one with --path-column (columns: {', '.join(cols)})")
    ptype = schema.field(pcol).type
    if pa.types.is_dictionary(ptype):
        ptype = ptype.value_type
    if not (pa.types.is_string(ptype) or pa.types.is_large_string(ptype) or pa.types.is_null(ptype)):
        raise SourceError(f"{path}: the path column {pcol!r} holds {ptype} values, not text paths")
    lcol = _pick(cols, label_column, LABEL_COLUMNS, "label", path)
    classes: list[str] | None = None
    if lcol is not None and not _is_int_labels(schema.field(lcol).type):
        classes = _classes(Batches(fs, path, pcol, [pcol, lcol], schema), pcol, lcol)
    extra = [c for c in cols if c not in (pcol, lcol)]
    url = unstrip(fs, path)
    rule = ManifestPaths(fs, posixpath.dirname(path))
    stamper = RowStamper(fs)
    listing = Listing("manifest", bound=bound, classes=classes or [], source_stamps=(stamp_info(fs.info(path)),),
                      stamps_complete=lambda: not stamper.stopped)

    warn = [False]
    problems: dict[int, str] = {}  # rows beyond what a column holds (row -> why), `_drop_rows`

    def blocks() -> Iterator[dict[str, list]]:
        row0 = 0
        source = Batches(fs, path, pcol, schema=schema if ext(path) != ".parquet" else None)
        source.problems = problems  # a JSON manifest's rows fill it as it is read
        for big in source:
            for a in range(0, big.num_rows, BLOCK):  # a block of Python values at a time
                batch = big.slice(a, BLOCK)
                block = _block(batch, row0)
                row0 += batch.num_rows
                if block is not None:
                    yield block
            del big, batch
            _release_arrow_memory()  # a block of text at a time, not a heap that only grows

    def _block(batch, row0: int) -> dict[str, list] | None:
        import pyarrow.compute as pc

        paths = batch.column(pcol)
        if pa.types.is_dictionary(paths.type):
            paths = paths.cast(paths.type.value_type)
        if pa.types.is_null(paths.type):
            paths = paths.cast(pa.string())
        if not (pa.types.is_string(paths.type) or pa.types.is_large_string(paths.type)):
            raise SourceError(f"{path}: the path column {pcol!r} holds {paths.type} values from row {row0} on, "
                              "not text paths")
        valid = pc.and_kleene(pc.is_valid(paths), pc.not_equal(paths, ""))
        bad = _beyond_int64_labels(batch.column(lcol), lcol, classes, row0) if lcol is not None else {}
        bad.update((i - row0, why) for i, why in problems.items() if row0 <= i < row0 + batch.num_rows)
        if bad or not pc.all(valid).as_py():
            batch, paths = _drop_rows(batch, paths, valid, bad, row0, url, listing.errors)
        if not batch.num_rows:
            return None
        texts = paths.to_pylist()
        urls = rule.urls(texts)
        labels = names = None
        if lcol is not None:
            labels, names = _label_columns(batch.column(lcol), classes, warn)
        metas = _metas(batch.select(extra)) if extra else None
        return raw_block(rule.rels(texts), urls, label=labels, label_name=names, meta=metas,
                         stamp=stamper.stamps(urls))

    listing.set_blocks(blocks)
    return listing


def _beyond_int64_labels(column, name: str, classes: list[str] | None, row0: int) -> dict[int, str]:
    """Rows of a block (index -> why) whose integer label is beyond 64 bits: an unsigned 64-bit
    column's values above the signed range (they would wrap around), or a number in a column read as
    text (`Batches.text_from`). A check per block: the manifest is never held."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    if pa.types.is_uint64(t) and len(column):
        over = pc.greater(column, pa.scalar(INT64[1], pa.uint64())).fill_null(False).to_numpy(zero_copy_only=False)
        found = np.flatnonzero(over).tolist()
        values = column.take(pa.array(found, pa.int64())).to_pylist() if found else []
    elif classes is None and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        found, values = [], []
        for i, v in enumerate(column.to_pylist()):
            v = (v or "").strip()
            digits = v[1:] if v[:1] in "+-" else v
            if len(digits) >= 19 and digits.isascii() and digits.isdigit() and (
                    len(digits) > 19 or not INT64[0] <= int(v) <= INT64[1]):
                found.append(i)
                values.append(v)
    else:
        return {}
    return {i: f"row {row0 + i} of the manifest: {name[:60]!r} {beyond_int64(v)}"
            for i, v in zip(found, values, strict=True)}


def _drop_rows(batch, paths, valid, bad: dict[int, str], row0: int, url: str, errors) -> tuple[Any, Any]:
    """A block without its rows that are no input: without a path, or in `bad` (index -> why); each
    becomes an error row (stage ``list``), in row order."""
    import pyarrow as pa

    keep = valid.fill_null(False).to_numpy(zero_copy_only=False).copy()
    why = {int(i): f"row {row0 + i} of the manifest has no path" for i in np.flatnonzero(~keep)}
    why.update(bad)
    keep[list(bad)] = False
    for i in sorted(why):
        errors.add(list_error(f"row {row0 + i}", url, why[i]))
    mask = pa.array(keep)
    return batch.filter(mask), paths.filter(mask)


def _metas(table) -> list[str]:
    """Each row of `table` as ``json.dumps(row, sort_keys=True, default=str, ensure_ascii=False)``,
    built column by column (the same text, several times faster) when every value is text, a
    number, a bool or null; row by row otherwise."""
    from json.encoder import encode_basestring  # type: ignore[attr-defined]

    names = sorted(table.column_names)
    columns = []
    for name in names:
        values = table.column(name).to_pylist()
        kinds = {type(v) for v in values}
        if not kinds <= {str, int, float, bool, type(None)}:
            return [json.dumps(r, sort_keys=True, default=str, ensure_ascii=False) for r in table.to_pylist()]
        head = encode_basestring(name) + ": "
        if kinds <= {str}:
            columns.append([head + x for x in map(encode_basestring, values)])
        else:
            columns.append([head + _json_scalar(v) for v in values])
    if not columns:
        return ["{}"] * table.num_rows
    return ["{" + ", ".join(row) + "}" for row in zip(*columns, strict=True)]


def _json_scalar(v: Any) -> str:
    from json.encoder import encode_basestring  # type: ignore[attr-defined]

    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return encode_basestring(v)
    if isinstance(v, float):
        if v != v:
            return "NaN"
        if v in (float("inf"), float("-inf")):
            return "Infinity" if v > 0 else "-Infinity"
        return float.__repr__(v)
    return int.__repr__(v)
