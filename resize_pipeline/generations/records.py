"""The records of what DEST holds, as Arrow tables and the Parquet files `layout` names.

Three kinds of rows:

- **plan rows** (`plan_schema`): listing rows (`sources.base.ROW_COLUMNS`) as the engines convert
  them. Texts that may hold a file name (``url``, ``label_name``, ``meta``) are stored as the bytes of
  their ``surrogateescape`` encoding, so that a name that is not UTF-8 survives exactly (Arrow text
  must be UTF-8); `to_columns` gives back the same Python strings. Listing batches in the plain
  `sources.base.arrow_schema` (UTF-8 text) are accepted wherever plan rows are (`normalise`).
- **held records** (`held_schema`): what DEST holds per input: its key, identity (url, offset,
  length, row), label and stamp, its ``status`` (``written``, ``failed``, ``duplicate``, or
  ``superseded``/``retired`` for a mark), the generation that wrote the record, where its sample is
  (``shard``, ``sample``: its place among the shard's written samples), the sha256 of its bytes
  (``--dedup``), for a duplicate the key of the sample it duplicates (``of_key``), for a mark the
  generation of the record it ends (``target``: a record is named by its key and generation), and
  for a failure the stage that failed (``stage``).
  Shards' input records (``_inputs/{shard}.parquet``) and generation records
  (``_generations/{g}.records.parquet``) both have this schema.
- **superseded samples** (`superseded_schema`): one row per shard file and sample that readers of
  a generation >= ``generation`` skip: ``file``, ``position`` (the sample's index in that file),
  ``key``, ``shard``, ``sample``.

Parquet files are written with fixed settings, so the same records give the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any

from resize_pipeline.sources.base import ROW_COLUMNS

#: the listing texts that may hold bytes of a file name that are not UTF-8
RAW_TEXT = ("url", "label_name", "meta")
INT_COLUMNS = ("label", "offset", "length", "row", "stamp")
#: what a held record says about its input
STATUSES = ("written", "failed", "duplicate", "superseded", "retired")
#: the statuses of marks: they end the record (``key``, generation ``target``) they name; ``superseded``
#: also ends its sample (readers skip it), ``retired`` only the record (its sample, if any, lives on in
#: a newer record of the same key, or it had none: a duplicate)
MARKS = ("superseded", "retired")
HELD_COLUMNS = ("key", "url", "offset", "length", "row", "label", "stamp", "status", "generation", "shard",
                "sample", "sha256", "of_key", "target", "stage")
#: rows are made and written this many at a time
CHUNK = 1 << 16


def plan_schema():
    """`ROW_COLUMNS` with the name texts as exact bytes (see the module docstring)."""
    import pyarrow as pa

    def kind(c: str):
        return pa.int64() if c in INT_COLUMNS else pa.large_binary() if c in RAW_TEXT else pa.large_string()

    return pa.schema([(c, kind(c)) for c in ROW_COLUMNS])


def held_schema():
    import pyarrow as pa

    return pa.schema([
        ("key", pa.large_string()), ("url", pa.large_binary()), ("offset", pa.int64()), ("length", pa.int64()),
        ("row", pa.int64()), ("label", pa.int64()), ("stamp", pa.int64()), ("status", pa.large_string()),
        ("generation", pa.int64()), ("shard", pa.large_string()), ("sample", pa.int64()),
        ("sha256", pa.binary(32)), ("of_key", pa.large_string()), ("target", pa.int64()), ("stage", pa.large_string()),
    ])


def superseded_schema():
    import pyarrow as pa

    return pa.schema([("file", pa.large_string()), ("position", pa.int64()), ("key", pa.large_string()),
                      ("shard", pa.large_string()), ("sample", pa.int64())])


# Arrays built from their buffers: pyarrow converts Python values through a check that imports pandas
# (~0.5 s of CPU the first time, in every worker process); these helpers never convert.
def arrow_ints(values: Any):
    """An int64 array (no nulls) from a sequence or numpy array of integers."""
    import numpy as np
    import pyarrow as pa

    data = np.ascontiguousarray(np.asarray(values, dtype=np.int64))
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def arrow_bytes(values: list[bytes | None], type: Any = None):
    """A variable-width array (``large_binary`` by default, or ``large_string`` for UTF-8 bytes) or a
    ``binary(32)`` one, from bytes; None is null."""
    import numpy as np
    import pyarrow as pa

    type = type or pa.large_binary()
    n = len(values)
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=n)
    nulls = n - int(valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    if pa.types.is_fixed_size_binary(type):
        width = type.byte_width
        data = b"".join(v if v is not None else bytes(width) for v in values)
        return pa.Array.from_buffers(type, n, [bitmap, pa.py_buffer(data)], null_count=nulls)
    parts = [v if v is not None else b"" for v in values]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=n), out=offsets[1:])
    return pa.Array.from_buffers(type, n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(b"".join(parts))],
                                 null_count=nulls)


def arrow_texts(values: list[str | None], binary: bool = False):
    """Texts (None: null) as ``large_string``, or with ``binary`` as ``large_binary`` holding their exact
    bytes (``surrogateescape``: a file name that is not UTF-8 survives)."""
    import pyarrow as pa

    errors = "surrogateescape" if binary else "strict"  # UTF-8 text must be valid UTF-8
    encoded = [None if v is None else v.encode("utf-8", errors) for v in values]
    return arrow_bytes(encoded, pa.large_binary() if binary else pa.large_string())


def _raw(values: list[str]):
    """Texts -> a large_binary array of their exact bytes (UTF-8, undecodable bytes as they were)."""
    import pyarrow as pa

    try:
        return pa.array(values, type=pa.large_string()).cast(pa.large_binary())
    except UnicodeEncodeError:
        return pa.array([v.encode("utf-8", "surrogateescape") for v in values], type=pa.large_binary())


def plan_batch(columns: dict[str, list[Any]]):
    """Listing columns (`sources.rows.RowTable.columns`, `batch` lists) -> a record batch in `plan_schema`."""
    import pyarrow as pa

    schema = plan_schema()
    arrays = [arrow_texts(columns[c], binary=True) if c in RAW_TEXT else arrow_ints(columns[c])
              if c in INT_COLUMNS else arrow_texts(columns[c]) for c in ROW_COLUMNS]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def listed_batches(items: Any, chunk: int = CHUNK) -> Iterator[Any]:
    """A listing in memory (`sources.rows.RowTable`: ``columns(a, b)``) as plan-schema batches, in listing order."""
    for a in range(0, len(items), chunk):
        yield plan_batch(items.columns(a, min(len(items), a + chunk)))


def normalise(batch, schema=None):
    """A batch of listing or held rows with its name texts as bytes (`plan_schema`'s convention):
    UTF-8 text columns (`sources.base.arrow_schema`) are cast, the others kept."""
    import pyarrow as pa

    arrays, fields = [], []
    for f, col in zip(batch.schema, batch.columns, strict=True):
        if f.name in RAW_TEXT and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)):
            col, f = col.cast(pa.large_binary()), pa.field(f.name, pa.large_binary())
        elif f.name in RAW_TEXT and pa.types.is_binary(f.type):
            col, f = col.cast(pa.large_binary()), pa.field(f.name, pa.large_binary())
        arrays.append(col)
        fields.append(f)
    out = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
    return out if schema is None else out.select(schema.names).cast(schema)


def decode_raw(values: list[bytes | None]) -> list[str]:
    return ["" if v is None else v.decode("utf-8", "surrogateescape") for v in values]


def to_columns(batch) -> dict[str, list[Any]]:
    """A plan-schema batch -> the listing's columns as Python lists (`batch.columns_to_batch` input)."""
    out: dict[str, list[Any]] = {}
    for c in ROW_COLUMNS:
        values = batch.column(batch.schema.get_field_index(c)).to_pylist()
        out[c] = decode_raw(values) if c in RAW_TEXT else values
    return out


def held_table(columns: dict[str, list[Any]]):
    """Held records from Python lists (``url`` as text; missing columns: nulls / -1)."""
    import pyarrow as pa

    schema = held_schema()
    n = len(columns["key"])
    arrays = []
    for f in schema:
        values = columns.get(f.name)
        if values is None:
            values = [-1] * n if f.name in ("offset", "length", "row", "label", "sample") else \
                [0] * n if f.name == "stamp" else [None] * n
        arrays.append(_raw(values) if f.name == "url" else pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


#: the batch columns a shard's input record is made of (`shard_record`)
RECORD_COLUMNS = ("key", "url", "offset", "length", "row", "label", "stamp")


def shard_record(parts: list[dict[str, Any]]):
    """A shard's input record from the batches it wrote, in order: each part holds the batch's
    `RECORD_COLUMNS` (numpy arrays), ``written`` (bools), ``stage`` (the failed stage per row) and
    ``sha256`` (object array or None).
    Written inputs get their sample's place (0, 1, ... in writing order), failed ones -1; the
    generation is left null (it is the one that publishes the shard: `update.load_held` fills it)."""
    import numpy as np
    import pyarrow as pa

    n = sum(len(p["key"]) for p in parts)
    cols: dict[str, Any] = {}
    for c in RECORD_COLUMNS:
        values = np.concatenate([np.asarray(p[c]) for p in parts]) if parts else np.empty(0)
        cols[c] = values.tolist()
    written = np.concatenate([np.asarray(p["written"], dtype=bool) for p in parts]) if parts else np.zeros(0, bool)
    sample = np.where(written, np.cumsum(written) - 1, -1)
    digests: list[Any] = []
    stages: list[Any] = []
    for p in parts:
        digests += list(p["sha256"]) if p.get("sha256") is not None else [None] * len(p["key"])
        stages += [None if ok else str(st) for ok, st in zip(p["written"], p["stage"], strict=True)]
    schema = held_schema()
    arrays = {
        "key": arrow_texts(cols["key"]), "url": arrow_texts(cols["url"], binary=True),
        **{c: arrow_ints(cols[c]) for c in ("offset", "length", "row", "label", "stamp")},
        "status": arrow_texts(np.where(written, "written", "failed").tolist()),
        "generation": pa.nulls(n, pa.int64()), "shard": pa.nulls(n, pa.large_string()),
        "sample": arrow_ints(sample), "sha256": arrow_bytes(digests, pa.binary(32)),
        "of_key": pa.nulls(n, pa.large_string()), "target": pa.nulls(n, pa.int64()),
        "stage": arrow_texts(stages),
    }
    return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


# ------------------------------------------------------------------------------------------ files
def parquet_bytes(table) -> bytes:
    """`table` as a Parquet file with fixed settings (the same rows give the same bytes)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=CHUNK, write_statistics=False,
                   use_dictionary=False)
    return buf.getvalue()


def write_table(dest, table, *names: str) -> dict[str, Any]:
    """Commit `table` as Parquet at `names` in DEST (`sinks.dest.Dest`); returns its file record
    (name, rows, bytes, sha256)."""
    import hashlib

    data = parquet_bytes(table)
    dest.commit(data, *names)
    return {"name": "/".join(names), "rows": table.num_rows, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def _as_table(rows):
    import pyarrow as pa

    return rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])


class Spool:
    """A Parquet file of record batches built in a local spool (`sinks.dest.Dest.spool`), then
    committed to DEST or dropped: `write` batches, then `commit(dest, *names)` -> its file record."""

    def __init__(self, schema) -> None:
        import pyarrow.parquet as pq

        from resize_pipeline.sinks.base import HashingFile
        from resize_pipeline.sinks.dest import Dest

        self.schema, self.rows = schema, 0
        self.file = Dest.spool()
        self._hashing = HashingFile(self.file)  # type: ignore[arg-type]
        self._writer = pq.ParquetWriter(self._hashing, schema, compression="zstd", write_statistics=False,
                                        use_dictionary=False)

    def write(self, rows) -> None:
        """Append a record batch or a table (its columns in any order; cast to the schema)."""
        if rows.num_rows:
            self._writer.write_table(_as_table(rows).select(self.schema.names).cast(self.schema),
                                     row_group_size=CHUNK)
            self.rows += rows.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def table(self):
        """What was written, read back (for the driver's use: the plan's rows)."""
        import pyarrow.parquet as pq

        self.close()
        self.file.seek(0)
        return pq.read_table(self.file, use_threads=False)

    def ref(self, *names: str) -> dict[str, Any]:
        """Its file record (name, rows, bytes, sha256), once written completely."""
        self.close()
        return {"name": "/".join(names), "rows": self.rows, "bytes": self._hashing.nbytes,
                "sha256": self._hashing.sha.hexdigest()}

    def commit(self, dest, *names: str) -> dict[str, Any]:
        ref = self.ref(*names)
        dest.commit(self.file, *names)
        return ref

    def drop(self) -> None:
        self.close()
        self.file.close()


def read_table(fs, path: str, columns: list[str] | None = None):
    """A Parquet record file of DEST (on filesystem `fs`) as an Arrow table."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        # one thread: pyarrow's threaded scan of a Python file object can leave a thread that aborts
        # the process at exit ("terminate called without an active exception"); record files are small
        return pq.read_table(fh, columns=columns, use_threads=False)


def batches(tables: Iterable[Any], chunk: int = CHUNK) -> Iterator[Any]:
    """The record batches of `tables`, in order (each at most `chunk` rows)."""
    for t in tables:
        yield from t.to_batches(max_chunksize=chunk)
