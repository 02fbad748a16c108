"""Sorted runs: how a listing made of many pieces (sub-folders listed in parallel, tars) is put back
into one order without holding it.

A listing task writes what it found as runs (`RunStore.write`): Parquet files of at most `RUN_ROWS`
rows each, sorted by path where the order is the paths' order. The driver reads them back a batch at a
time: `merged` (a k-way merge by path: the same order as sorting every path, today's folder order)
or one after the other (tars, in tar order). Runs live in a local temporary folder, or in DEST's
``_listing/`` when the tasks run on other nodes (Ray); they are removed once merged.

Texts are stored as bytes (UTF-8 with ``surrogateescape``), so names that are not UTF-8 survive.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter
from typing import Any

from resize_pipeline.layout import LISTING_DIR, listing_run

#: rows a listing task sorts and writes at a time
RUN_ROWS = 1 << 20
#: rows read back at a time from each run
READ_ROWS = 1 << 14


def _enc(values: Sequence[str]) -> list[bytes]:
    return [v.encode("utf-8", "surrogateescape") for v in values]


def _dec(values: Sequence[bytes]) -> list[str]:
    return [v.decode("utf-8", "surrogateescape") for v in values]


class RunStore:
    """A folder (a local temporary one, or ``DEST/_listing``) holding sorted runs.

    Pickles as its address: a Ray task on another node writes into the same place."""

    def __init__(self, url: str | None = None, storage_options: dict[str, Any] | None = None,
                 subdir: str = "") -> None:
        self._temp = url is None
        if url is None:
            from resize_pipeline.sources.keyindex import private_folder

            url = private_folder("resize-pipeline-runs")
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.subdir = subdir
        self._dest: Any = None

    @classmethod
    def in_dest(cls, dest_url: str, storage_options: dict[str, Any] | None) -> RunStore:
        return cls(dest_url, storage_options, LISTING_DIR)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options, "subdir": self.subdir, "_temp": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._dest = None

    @property
    def dest(self) -> Any:
        if self._dest is None:
            from resize_pipeline.sinks.dest import Dest

            self._dest = Dest(self.url, self.storage_options)
        return self._dest

    def _names(self, name: str) -> tuple[str, ...]:
        return (self.subdir, name) if self.subdir else (name,)

    def write(self, task: int, run: int, columns: dict[str, Sequence[Any]]) -> tuple[str, int]:
        """Write one run (text columns as `str`, numbers as `int`); returns (name, rows)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrays = {}
        for c, v in columns.items():
            first = next((x for x in v), None)
            if isinstance(first, str):
                arrays[c] = pa.array(_enc(v), type=pa.large_binary())
            else:
                arrays[c] = pa.array(v, type=pa.int64())
        table = pa.table(arrays)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", write_statistics=False)
        name = listing_run(task, run)[1]
        if self._temp:  # this process's own folder: a plain file
            with open(f"{self.url}/{name}", "wb") as fh:
                fh.write(buf.getvalue())
        else:
            self.dest.commit(buf.getvalue(), *self._names(name))
        return name, table.num_rows

    def read(self, name: str, text: Sequence[str] = ()) -> Iterator[dict[str, list]]:
        """A run's rows, a batch at a time, as lists (the `text` columns decoded back to `str`)."""
        import pyarrow.parquet as pq

        opened = open(f"{self.url}/{name}", "rb") if self._temp else \
            self.dest.fs.open(self.dest.path(*self._names(name)), "rb")
        with opened as fh:
            pf = pq.ParquetFile(fh)
            for batch in pf.iter_batches(batch_size=READ_ROWS):
                cols = batch.to_pydict()
                for c in text:
                    cols[c] = _dec(cols[c])
                yield cols

    def rows(self, name: str, columns: Sequence[str], text: Sequence[str] = ()) -> Iterator[tuple]:
        for cols in self.read(name, text):
            yield from zip(*(cols[c] for c in columns), strict=True)

    def remove(self, names: Sequence[str]) -> None:
        for name in names:
            if self._temp:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f"{self.url}/{name}")
            else:
                self.dest.remove(*self._names(name))

    def close(self) -> None:
        """Remove a temporary store (a store in DEST keeps what was not removed by name)."""
        if self._temp:
            shutil.rmtree(self.url, ignore_errors=True)


def merged(store: RunStore, names: Sequence[str], columns: Sequence[str] = ("path", "stamp"),
           text: Sequence[str] = ("path",)) -> Iterator[tuple]:
    """The rows of sorted runs `names` in one sorted order (by the first column)."""
    streams = [store.rows(n, columns, text) for n in names]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=itemgetter(0))


def sort_and_write(store: RunStore, task: int, first_run: int, rows: list[tuple], columns: Sequence[str]) -> list[tuple[str, int]]:
    """Sort `rows` (tuples, by their first value) and write them as runs of at most `RUN_ROWS`."""
    rows.sort(key=itemgetter(0))
    out = []
    for k, a in enumerate(range(0, len(rows), RUN_ROWS)):
        chunk = rows[a:a + RUN_ROWS]
        out.append(store.write(task, first_run + k, {c: [r[i] for r in chunk] for i, c in enumerate(columns)}))
    return out


def run_tasks(runner: Callable[[Callable, list[tuple]], list] | None, fn: Callable, args: list[tuple], threads: int) -> list:
    """Run the listing tasks: `runner(fn, args)` (Ray), else threads here; results in task order."""
    if runner is not None:
        return runner(fn, args)
    if len(args) == 1 or threads <= 1:
        return [fn(*a) for a in args]
    with ThreadPoolExecutor(min(threads, len(args))) as pool:
        return list(pool.map(lambda a: fn(*a), args))
