"""Fetch the bytes of a batch of `SourceItem`s through fsspec, with retries for transient errors.

Whole files go through ``fs.cat`` (concurrent on async filesystems such as s3fs), tar members through
``fs.cat_ranges``, Parquet rows through the row groups that hold them. Failures come back in place as
exceptions; permanent ones (missing file, permission) are not retried.

Each read is bounded in size (``--max-bytes``): an input larger than that (by its size on a local disk
or in a tar header, else by a ranged read of one byte more) fails alone with `InputTooLarge`, and a
local path that is not a regular file (``/dev/zero``, a FIFO) with `NotAFile`, before anything is
read into memory.

`ReadPool` bounds each read in time: every input (every Parquet file's group of rows) is read on its
own daemon thread and given up after ``--read-timeout`` seconds, retries included; it then fails
alone (`ReadTimeout`, a ``read`` error row) while the rest of its batch goes on. A read that was
given up keeps its thread until the filesystem returns (it cannot be interrupted); a fresh thread
takes its place, so stuck reads never starve the others.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fsspec.core import url_to_fs

from resize_pipeline.sources.base import SourceItem
from resize_pipeline.urls import is_local_fs, protocol

log = logging.getLogger(__name__)

class InputTooLarge(ValueError):
    """An input larger than ``--max-bytes``: never read into memory."""


class NotAFile(ValueError):
    """A local input that is not a regular file (a device such as /dev/zero, a FIFO, a socket)."""


PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, InputTooLarge, NotAFile)
_KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO",
          stat.S_IFSOCK: "a socket"}


def _too_large(size: int, max_bytes: int, known: bool = True) -> InputTooLarge:
    said = f"{size} bytes" if known else f"more than {max_bytes} bytes"
    return InputTooLarge(f"{said}, over the --max-bytes limit of {max_bytes}: not read")


def read_local(path: str, max_bytes: int | None = None) -> bytes:
    """A local file's bytes: refused before reading when it is not a regular file (`NotAFile`) or larger
    than `max_bytes` (`InputTooLarge`; also when it grows past it while being read)."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer (regular files ignore the flag)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", path)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFile(f"not a regular file ({_KINDS.get(stat.S_IFMT(st.st_mode), 'not a file')}): not read")
        if max_bytes is not None and st.st_size > max_bytes:
            raise _too_large(st.st_size, max_bytes)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        if max_bytes is None:
            return fh.read()
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes, known=False)
    return data


def _fs(url: str, storage_options: dict[str, Any]):
    return url_to_fs(url, **storage_options)


def _cat_files(items: list[SourceItem], so: dict[str, Any], max_bytes: int | None = None) -> list[bytes | Exception]:
    fs, _ = _fs(items[0].url, so)
    paths = [fs._strip_protocol(it.url) for it in items]
    if is_local_fs(fs):
        out: list[bytes | Exception] = []
        for p in paths:
            try:
                out.append(read_local(p, max_bytes))
            except Exception as exc:  # noqa: BLE001 - returned in place, like fs.cat(on_error="return")
                out.append(exc)
        return out
    # at most one byte more than the cap is ever read (a ranged read): more means too large
    bound: dict[str, Any] = {} if max_bytes is None else {"start": 0, "end": max_bytes + 1}
    # fs.cat expands glob characters: a file named "img[1].jpg" would match "img1.jpg" (or nothing), so
    # such names are read one by one, literally
    plain = [p for p in paths if not any(c in p for c in "*?[")]
    got: dict[str, bytes | Exception] = {}
    if plain:
        got = fs.cat(plain, on_error="return", **bound)
        if not isinstance(got, dict):  # a single path comes back as bytes
            got = {plain[0]: got}
    for p in paths:
        if p not in got:
            try:
                got[p] = fs.cat_file(p, **bound)
            except Exception as exc:  # noqa: BLE001 - returned in place, like fs.cat(on_error="return")
                got[p] = exc
    if max_bytes is not None:
        for p, v in got.items():
            if not isinstance(v, Exception) and len(v) > max_bytes:
                got[p] = _too_large(len(v), max_bytes, known=False)
    return [got[p] for p in paths]


def _cat_ranges(items: list[SourceItem], so: dict[str, Any], max_bytes: int | None = None) -> list[bytes | Exception]:
    out: list[bytes | Exception | None] = [None] * len(items)
    wanted = []
    for i, it in enumerate(items):  # a tar member's size is known from its header: refused unread
        if max_bytes is not None and it.length > max_bytes:
            out[i] = _too_large(it.length, max_bytes)
        else:
            wanted.append(i)
    if wanted:
        fs, _ = _fs(items[0].url, so)
        paths = [fs._strip_protocol(items[i].url) for i in wanted]
        starts = [items[i].offset for i in wanted]
        ends = [items[i].offset + items[i].length for i in wanted]
        for i, v in zip(wanted, fs.cat_ranges(paths, starts, ends, on_error="return"), strict=True):
            out[i] = v
    return out  # type: ignore[return-value]


def _parquet_rows(items: list[SourceItem], so: dict[str, Any], max_bytes: int | None = None) -> list[bytes | Exception]:
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
            if value is None:
                out.append(ValueError("null image bytes"))
            elif max_bytes is not None and len(value) > max_bytes:
                out.append(_too_large(len(value), max_bytes))
            else:
                out.append(value)
    return out


def _read_group(kind: str, items: list[SourceItem], so: dict[str, Any],
                max_bytes: int | None = None) -> list[bytes | Exception]:
    try:
        if kind == "range":
            return _cat_ranges(items, so, max_bytes)
        if kind == "parquet":
            return _parquet_rows(items, so, max_bytes)
        return _cat_files(items, so, max_bytes)
    except Exception as exc:  # noqa: BLE001 - the whole group failed: every item gets the reason
        return [exc] * len(items)


def read_one(item: SourceItem, storage_options: dict[str, Any] | None = None,
             max_bytes: int | None = None) -> bytes | Exception:
    """One item's bytes (or the exception). A whole local file is read with plain ``open`` (fsspec's
    path handling costs more than reading a small file); anything else, or a local read that fails
    with a possibly transient error, goes through `read_items` (with its retries)."""
    if item.offset < 0 and item.row < 0 and item.url.startswith("file:///"):
        try:
            return read_local(item.url[7:], max_bytes)
        except PERMANENT as exc:
            return exc
        except OSError:
            pass
    return read_items([item], storage_options, max_bytes=max_bytes)[0]


def read_items(
    items: Sequence[SourceItem],
    storage_options: dict[str, Any] | None = None,
    retries: int = 3,
    backoff: float = 0.2,
    max_bytes: int | None = None,
) -> list[bytes | Exception]:
    """Read every item's bytes, in order; exceptions in place of what could not be read (or is larger
    than `max_bytes`)."""
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
            for i, value in zip(idx, _read_group(kind, [items[i] for i in idx], so, max_bytes), strict=True):
                out[i] = value
        pending = [
            i for i in pending if isinstance(out[i], Exception) and not isinstance(out[i], PERMANENT)
        ]
        if not pending or attempt == retries:
            break
        log.warning("retrying %d reads after transient errors (attempt %d): %s", len(pending), attempt + 1, out[pending[0]])
        time.sleep(backoff * 2**attempt)
    return out  # type: ignore[return-value]


T = TypeVar("T")
#: threads given up on (still waiting for a filesystem) beyond which no replacement is started
MAX_STUCK = 256


class ReadTimeout(TimeoutError):
    """A read that took longer than ``--read-timeout``."""


class _Job:
    __slots__ = ("fn", "cond", "submitted", "started", "finished", "abandoned", "result")

    def __init__(self, fn: Callable[[], Any], cond: threading.Condition) -> None:
        self.fn, self.cond = fn, cond
        self.submitted = time.monotonic()
        self.started: float | None = None
        self.finished = self.abandoned = False
        self.result: Any = None


class ReadPool:
    """Daemon threads that run reads, each bounded by a timeout (see the module docstring).

    Args:
        threads: reads running at once.
    """

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))
        self._lock = threading.Lock()
        self._queue: list[_Job] = []
        self._wake = threading.Condition(self._lock)
        self._workers = 0
        self._spawned = 0.0  # when the last replacement thread was started
        self.stuck = 0

    @staticmethod
    def _give_up(job: _Job, timeout: float) -> None:
        job.abandoned = True
        job.result = ReadTimeout(f"no data after {timeout:g} s (--read-timeout)")

    def _spawn(self) -> None:  # with the lock held
        while self._workers < self.threads and self.stuck < MAX_STUCK:
            self._workers += 1
            threading.Thread(target=self._serve, name="read", daemon=True).start()

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._wake.wait()
                job = self._queue.pop(0)
                if job.abandoned:
                    continue
                job.started = time.monotonic()
            try:
                result: Any = job.fn()
            except Exception as exc:  # noqa: BLE001 - handed to the caller in place
                result = exc
            with self._lock:
                if job.abandoned:  # given up on (its result stays the timeout): a replacement took
                    self.stuck -= 1  # this thread's place
                    return
                job.result, job.finished = result, True
                job.cond.notify_all()

    def map(self, fns: Sequence[Callable[[], T]], timeout: float | None = None) -> list[T | Exception]:
        """Run every ``fn()``; results in order, an exception in place of what failed or timed out
        (`ReadTimeout` after `timeout` seconds of running; a read waiting for a thread is timed from
        when it starts, unless `MAX_STUCK` threads are stuck and none will free up)."""
        if not fns:
            return []
        cond = threading.Condition(self._lock)
        jobs = [_Job(fn, cond) for fn in fns]
        with self._lock:
            self._queue.extend(jobs)
            self._spawn()
            self._wake.notify_all()
            pending = list(jobs)
            while pending:
                now = time.monotonic()
                # a read is timed by how long it has run: one given up on gets a replacement thread,
                # so reads still queued behind it start soon
                for job in pending:
                    if not job.finished and job.started is not None and timeout is not None \
                            and now - job.started >= timeout:
                        self._give_up(job, timeout)
                        self._workers -= 1
                        self.stuck += 1
                        self._spawn()
                        self._spawned = now
                if self.stuck >= MAX_STUCK:  # no thread will free up: reads still queued wait no more
                    for job in pending:
                        if not job.finished and not job.abandoned and job.started is None and timeout is not None \
                                and now - max(job.submitted, self._spawned) >= timeout:
                            self._give_up(job, timeout)
                pending = [j for j in pending if not (j.finished or j.abandoned)]
                if pending:
                    waits = [(j.started if j.started is not None else max(j.submitted, self._spawned))
                             + timeout - now for j in pending] if timeout is not None else []
                    cond.wait(max(0.001, min(waits)) if waits else None)
        return [j.result for j in jobs]
