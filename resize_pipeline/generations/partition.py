"""Hash partitions on local disk: joins over every input with the driver's memory bounded.

`PartitionSet` spreads record batches over `n` Arrow IPC files by a hash of one column (`bucket_ids`,
vectorised over the Arrow buffers), so that rows with the same key land in the same file; a join
then loads one partition of each side at a time. `partitions_for` sizes `n` from the expected row
count (about `ROWS_PER_PARTITION` rows each). `SortedRuns` collects rows in per-partition files, each
sorted by one integer column, and `merge` streams them back in that column's order, a window at a
time (the listing's order, for the rows to convert).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

#: rows per partition the sizing aims at: one partition of both sides of a join is in memory at once
ROWS_PER_PARTITION = 500_000
#: at most this many partition files open at once per set
MAX_PARTITIONS = 128
_RNG = np.random.default_rng(0x5EED)
_WEIGHTS = _RNG.integers(1, 2**63, size=256, dtype=np.uint64) | np.uint64(1)


def partitions_for(rows: int) -> int:
    """Partitions for about `rows` rows (at least 1, at most `MAX_PARTITIONS`)."""
    return int(min(MAX_PARTITIONS, max(1, -(-int(rows) // ROWS_PER_PARTITION))))


def bucket_ids(array: Any, n: int) -> np.ndarray:
    """The partition (``0 <= id < n``) of each value of an Arrow text or bytes array (nulls: 0).

    A multiply-add hash over each value's bytes, computed on the Arrow buffers with numpy (no Python
    object per row); equal values always get the same id."""
    import pyarrow as pa

    if n <= 1 or len(array) == 0:
        return np.zeros(len(array), dtype=np.int64)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not pa.types.is_large_binary(array.type):
        array = array.cast(pa.large_binary())
    if array.null_count:
        array = array.fill_null(b"")
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    base, top = int(offsets[0]), int(offsets[-1])
    lengths = np.diff(offsets)
    if top == base:
        return np.zeros(len(array), dtype=np.int64)
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[base:top].astype(np.uint64)
    pos = np.arange(top - base, dtype=np.int64) - np.repeat(offsets[:-1] - base, lengths)
    with np.errstate(over="ignore"):
        contrib = (data + np.uint64(1)) * _WEIGHTS[pos & 255] + np.uint64(pos >> 8 & 0xFF)
        cs = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(contrib, dtype=np.uint64)])
        h = cs[offsets[1:] - base] - cs[offsets[:-1] - base] + lengths.astype(np.uint64)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    return (h % np.uint64(n)).astype(np.int64)


class PartitionSet:
    """Rows of one schema spread over `n` IPC files in `directory` by a hash of column `by`.

    `add` batches, `close`, then `read(i)` each partition as a table (in the order rows were added)."""

    def __init__(self, directory: str, name: str, n: int, schema: Any, by: str) -> None:
        self.directory, self.name, self.n, self.schema, self.by = directory, name, max(1, int(n)), schema, by
        self._writers: dict[int, Any] = {}
        self._files: dict[int, Any] = {}
        self.rows = 0

    def path(self, i: int) -> str:
        return os.path.join(self.directory, f"{self.name}-{i:04d}.arrow")

    def add(self, batch: Any) -> None:
        import pyarrow as pa

        if batch.num_rows == 0:
            return
        if batch.schema != self.schema:
            batch = pa.RecordBatch.from_arrays(list(batch.columns), schema=self.schema)
        self.rows += batch.num_rows
        ids = bucket_ids(batch.column(batch.schema.get_field_index(self.by)), self.n)
        if self.n == 1:
            self._write(0, batch)
            return
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        bounds = np.flatnonzero(np.diff(sorted_ids)) + 1
        for run in np.split(order, bounds):
            if len(run):
                self._write(int(ids[run[0]]), batch.take(pa.array(run)))

    def _write(self, i: int, batch: Any) -> None:
        import pyarrow as pa

        w = self._writers.get(i)
        if w is None:
            self._files[i] = pa.OSFile(self.path(i), "wb")
            w = self._writers[i] = pa.ipc.new_stream(self._files[i], self.schema)
        w.write_batch(batch)

    def close(self) -> None:
        for i, w in self._writers.items():
            w.close()
            self._files[i].close()
        self._writers.clear()
        self._files.clear()

    def read(self, i: int) -> Any:
        """Partition `i` as a table (empty when nothing landed there)."""
        import pyarrow as pa

        path = self.path(i)
        if not os.path.exists(path):
            return self.schema.empty_table()
        with pa.memory_map(path) as source:
            table = pa.ipc.open_stream(source).read_all()
        return table


class SortedRuns:
    """Runs of rows, each sorted by integer column `by`, merged back into one sorted stream."""

    def __init__(self, directory: str, name: str, schema: Any, by: str = "pos") -> None:
        self.directory, self.name, self.schema, self.by = directory, name, schema, by
        self.paths: list[str] = []
        self.rows = 0

    def add(self, table: Any) -> None:
        """One run: `table` is sorted here (it fits in memory: one partition's rows)."""
        import pyarrow as pa

        if table.num_rows == 0:
            return
        table = table.sort_by(self.by)
        path = os.path.join(self.directory, f"{self.name}-{len(self.paths):04d}.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, self.schema) as w:
            for b in table.select(self.schema.names).cast(self.schema).to_batches(max_chunksize=1 << 16):
                w.write_batch(b)
        self.paths.append(path)
        self.rows += table.num_rows

    def merge(self, window: int = 1 << 16) -> Iterator[Any]:
        """Every row, in order of `by`, as record batches (a window of `by` values at a time)."""
        import pyarrow as pa

        cursors = [_Cursor(p, self.by) for p in self.paths]
        while True:
            live = [c for c in cursors if not c.done]
            if not live:
                return
            lo = min(c.head() for c in live)
            parts = [c.take_below(lo + window) for c in live]
            table = pa.concat_tables([p for p in parts if p is not None]).sort_by(self.by)
            yield from table.to_batches(max_chunksize=1 << 16)


class _Cursor:
    """Reads one sorted run batch by batch."""

    def __init__(self, path: str, by: str) -> None:
        import pyarrow as pa

        self._source = pa.memory_map(path)
        self._reader = pa.ipc.open_file(self._source)
        self.by, self._next, self.done = by, 0, False
        self._buf: Any = None
        self._load()

    def _load(self) -> None:
        import pyarrow as pa

        while self._buf is None or self._buf.num_rows == 0:
            if self._next >= self._reader.num_record_batches:
                self.done, self._buf = True, None
                self._source.close()
                return
            self._buf = pa.Table.from_batches([self._reader.get_batch(self._next)])
            self._next += 1

    def head(self) -> int:
        return int(self._buf.column(self.by)[0].as_py())

    def take_below(self, hi: int) -> Any:
        import pyarrow as pa

        parts = []
        while not self.done:
            values = self._buf.column(self.by).to_numpy()
            k = int(np.searchsorted(values, hi, side="left"))
            if k == 0:
                break
            parts.append(self._buf.slice(0, k))
            if k < self._buf.num_rows:
                self._buf = self._buf.slice(k)
                break
            self._buf = None
            self._load()
        return pa.concat_tables(parts) if parts else None
