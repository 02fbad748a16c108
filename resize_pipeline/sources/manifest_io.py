"""Reading a manifest file a block at a time (`Batches`): CSV/TSV and JSONL with pyarrow's streaming
readers (types from the first block), JSON as a whole list, Parquet a row-group batch at a time; and
what a listing needs before its rows (`count_lines`: a text manifest's row bound). See `manifest`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from resize_pipeline.errors import SourceError
from resize_pipeline.sources.common import INT64, beyond_int64, ext

log = logging.getLogger(__name__)

PATH_COLUMNS = ("path", "filepath", "file_path", "file", "filename", "image_path", "url", "uri")
#: bytes of CSV/JSONL text the column types are inferred from (the first block, as pyarrow's reader does)
CSV_BLOCK = 32 << 20
#: bytes of CSV/JSONL text parsed at a time after that (the types fixed: the memory of a small block)
READ_BLOCK = 4 << 20
#: rows per Parquet batch
PARQUET_BATCH = 1 << 14


def _csv_header(fs, path: str, delimiter: str) -> list[str]:
    import csv
    import io

    with fs.open(path, "rb") as fh:
        first = fh.readline(1 << 20).decode("utf-8-sig", "replace")
    return next(csv.reader(io.StringIO(first), delimiter=delimiter), [])


def parquet_batches(pf: Any, columns: list[str] | None) -> Iterator[Any]:
    """A Parquet file's batches, one row group's reader at a time: a reader over the whole file keeps
    what it read of every row group until the end (~the file's size in memory by then)."""
    for g in range(pf.num_row_groups):
        yield from pf.iter_batches(batch_size=PARQUET_BATCH, row_groups=[g], columns=columns)


def count_lines(fs, path: str) -> int:
    """Lines in a text file (a final line without a newline counts): the rows' upper bound. One
    buffer, reused (no heap that grows with the file)."""
    n, last = 0, 10
    buf = bytearray(16 << 20)
    with _open(fs, path) as fh:
        while got := fh.readinto(buf):
            n += buf.count(b"\n", 0, got)
            last = buf[got - 1]
    return n + (last != 10)


class _BytesFS:
    """A filesystem of one file's bytes (the first block of a manifest, `_Batches.infer`)."""

    protocol = "bytes"

    def __init__(self, data: bytes) -> None:
        self.data = data

    def open(self, path: str, mode: str = "rb"):
        import io

        return io.BytesIO(self.data)


def _open(fs, path: str):
    """`path` for reading: a local file natively (its reads then never go through Python bytes, which
    would leave the driver's heap fragmented by blocks of megabytes), anything else through fsspec."""
    from resize_pipeline.urls import is_local_fs

    if is_local_fs(fs):
        import pyarrow as pa

        return pa.OSFile(path, "rb")
    return fs.open(path, "rb")


class Batches:
    """A manifest's record batches from the start, for columns `columns` (None: all).

    CSV/TSV: pyarrow's streaming reader; when a block no longer fits the types inferred from the
    first one, it reads on from that row with every column as text. JSONL: pyarrow's streaming
    reader. JSON: the whole list, then its batches. Parquet: row-group batches."""

    def __init__(self, fs, path: str, path_column: str | None, columns: list[str] | None = None,
                 schema: Any = None) -> None:
        self.fs, self.path, self.kind = fs, path, ext(path)
        self.path_column, self.columns = path_column, columns
        #: a text manifest's column types (`infer`); None: inferred from the first block read
        self.schema = schema
        #: the row of the manifest (0-based) from which CSV columns are read as text (None: not)
        self.text_from: int | None = None
        #: rows that cannot be taken as they are (row -> why), found while reading (`_json_list`)
        self.problems: dict[int, str] = {}

    def infer(self) -> Any:
        """The column types (a text manifest: inferred from its first `CSV_BLOCK` bytes, as pyarrow's
        reader does; the memory that took is given back); None for a manifest without rows."""
        if self.kind == ".parquet":
            import pyarrow.parquet as pq

            with self.fs.open(self.path, "rb") as fh:
                return pq.ParquetFile(fh).schema_arrow
        if self.kind == ".json":
            return _json_list(self.fs, self.path).schema
        # the first block's text (up to its last complete line) parsed alone: what the streaming reader
        # infers its types from, without its read-ahead of the next block
        with _open(self.fs, self.path) as fh:
            head = fh.read(CSV_BLOCK)
            more = bool(fh.read(1))
        if more:
            head = head[: head.rfind(b"\n") + 1] or head
        first = next(iter(Batches(_BytesFS(head), self.path, self.path_column, self.columns)), None)
        schema = first.schema if first is not None else None
        del first, head
        _release_arrow_memory()
        return schema

    def __iter__(self) -> Iterator[Any]:
        if self.kind == ".parquet":
            import pyarrow.parquet as pq

            with _open(self.fs, self.path) as fh:
                yield from parquet_batches(pq.ParquetFile(fh, pre_buffer=False), self.columns)
            return
        if self.kind in (".csv", ".tsv"):
            yield from self._csv()
            return
        if self.kind in (".jsonl", ".ndjson"):
            yield from self._jsonl()
            return
        table = _json_list(self.fs, self.path, self.problems)
        if self.columns is not None:
            table = table.select(self.columns)
        yield from table.to_batches(max_chunksize=PARQUET_BATCH)

    def _csv(self) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        delimiter = "\t" if self.kind == ".tsv" else ","
        header = _csv_header(self.fs, self.path, delimiter)
        wanted = {self.path_column} if self.path_column else {c for c in header if c.lower() in PATH_COLUMNS}
        types: dict[str, Any] = {c: pa.string() for c in wanted}
        block = CSV_BLOCK
        if self.schema is not None:  # the types are known: small blocks
            types = {f.name: f.type for f in self.schema}
            block = READ_BLOCK
        skip = emitted = 0
        while True:
            conv = pcsv.ConvertOptions(strings_can_be_null=False, column_types=types, include_columns=self.columns)
            with _open(self.fs, self.path) as fh:
                reader = pcsv.open_csv(fh, read_options=pcsv.ReadOptions(block_size=block, use_threads=False),
                                       parse_options=pcsv.ParseOptions(delimiter=delimiter), convert_options=conv)
                try:
                    for batch in reader:
                        if skip:
                            if batch.num_rows <= skip:
                                skip -= batch.num_rows
                                continue
                            batch, skip = batch.slice(skip), 0
                        emitted += batch.num_rows
                        yield batch
                    return
                except pa.ArrowInvalid as exc:
                    if self.text_from is not None or "conversion error" not in str(exc):
                        raise
                    first = (str(exc).strip().splitlines() or [""])[0]
                    log.warning("%s: from about row %d the values no longer fit the column types of the first "
                                "rows (%s): its columns are read as text from there on", self.path, emitted, first)
                    self.text_from = emitted
                    types = {c: pa.string() for c in reader.schema.names}
                    skip = emitted

    def _jsonl(self) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.json as pjson

        opts = pjson.ParseOptions()
        block = CSV_BLOCK
        if self.schema is not None:  # the types are known: small blocks
            opts, block = pjson.ParseOptions(explicit_schema=self.schema), READ_BLOCK
        with _open(self.fs, self.path) as fh:
            reader = pjson.open_json(fh, read_options=pjson.ReadOptions(block_size=block, use_threads=False),
                                     parse_options=opts)
            rows = 0
            try:
                for batch in reader:
                    rows += batch.num_rows
                    yield batch.select(self.columns) if self.columns is not None else batch
            except pa.ArrowInvalid as exc:
                first = (str(exc).strip().splitlines() or [""])[0]
                raise SourceError(f"{self.path}: the rows after row {rows} do not have the fields and types of the "
                                  f"first ones ({first}): give every row the same ones, or use CSV or Parquet") from None


def _json_list(fs, path: str, problems: dict[int, str] | None = None):
    """A ``.json`` manifest (a list of objects) as a table. A row holding an integer beyond 64 bits
    (no Arrow column holds it) has that value set to null, and is added to `problems` (row -> why:
    it becomes an error row)."""
    import pyarrow as pa

    with fs.open(path, "rb") as fh:
        rows = json.load(fh)
    if not isinstance(rows, list):
        raise SourceError(f"{path}: a .json manifest must hold a list of objects, not {type(rows).__name__}")
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise SourceError(f"{path}: a .json manifest must hold a list of objects; item {bad} is "
                          f"{type(rows[bad]).__name__}")
    huge = _beyond_int64_rows(rows)
    if problems is not None:
        problems.update(huge)
    try:
        return pa.Table.from_pylist(rows)
    except OverflowError:  # inside a list or an object: not a row's own value
        raise SourceError(f"{path}: cannot read the manifest: a nested value holds an integer beyond the "
                          "64-bit integer range") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        kinds: dict[str, set[str]] = {}
        for r in rows:
            for k, v in r.items():
                if v is not None:
                    kinds.setdefault(str(k), set()).add(type(v).__name__)
        mixed = next((f"column {k!r} mixes {' and '.join(sorted(t))} values" for k, t in kinds.items()
                      if len(t) > 1), str(exc).splitlines()[0])
        raise SourceError(f"{path}: cannot read the manifest: {mixed}") from None


def _beyond_int64_rows(rows: list[dict]) -> dict[int, str]:
    """Rows of a JSON manifest holding an integer beyond 64 bits: the value is set to null, the row
    reported (row -> why)."""
    lo, hi = INT64
    found: dict[int, str] = {}
    for i, r in enumerate(rows):
        for k, v in r.items():
            if type(v) is int and not lo <= v <= hi:
                found.setdefault(i, f"row {i} of the manifest: {str(k)[:60]!r} {beyond_int64(v)}")
                r[k] = None
    return found


def _release_arrow_memory() -> None:
    """Give the memory Arrow's allocator kept from reading a large manifest back to the system."""
    import pyarrow as pa

    try:
        pa.default_memory_pool().release_unused()
    except (AttributeError, NotImplementedError):
        pass
