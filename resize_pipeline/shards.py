"""Shard tasks: the deterministic assignment of inputs to shards, and what a converted shard reports.

Shard ``i`` always holds inputs ``[i*N, (i+1)*N)`` of the listing (N = samples per shard), whatever
engine runs it and however many times. A convert job's task is a *descriptor*: a row range of a
listing part in DEST (`parts.py`, `sources.rows.PartRows`), a few dozen bytes whatever N; the worker
reads its rows itself. A shard is done when its stats file ``_stats/{name}.json`` exists; it is
written after the shard files are committed, so a crash leaves either a complete shard with stats or
nothing that counts. Converting shards is `runner.ShardRunner`'s job; `TaskStream` carries the tasks
from the planner (`planning.py`) to an engine as they are released.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.errors import error_record
from resize_pipeline.layout import shard_name, shard_width
from resize_pipeline.sources.base import SourceItem

#: how many times a shard is attempted (a failure inside it, or its worker process or Ray actor
#: dying) before its inputs are recorded as failed (stage ``shard``); a rerun tries it again
SHARD_ATTEMPTS = 3


def shard_attempts(config: Any) -> int:
    """The attempt cap of a job (a config field where there is one, else `SHARD_ATTEMPTS`)."""
    return int(getattr(config, "shard_attempts", None) or SHARD_ATTEMPTS)


class ShardTask:
    """Shard `index`: rows ``[start, stop)`` of `rows`.

    `rows` is a listing part in DEST (`sources.rows.PartRows`: the task is a descriptor, the worker
    reads its rows), or rows in memory (`sources.rows.RowTable` or any sequence of `SourceItem`: tests,
    benchmarks). Items are made when asked for (`items`, `batch`). A task on a part pickles as its
    address; one on rows in memory carries its own items, never the whole listing. `classes` are the
    listing's class names (index -> name; None when its labels are plain numbers): the Parquet sink
    declares them as the ``label`` column's Hugging Face ``ClassLabel``. A task on a part does not
    carry them in its Ray task row (`descriptor`: a few dozen bytes): the Ray actor is given the job's
    classes once.
    """

    __slots__ = ("index", "name", "rows", "start", "stop", "classes")

    def __init__(self, index: int, name: str, rows: Sequence[SourceItem] | Any, start: int = 0,
                 stop: int | None = None, classes: Sequence[str] | None = None) -> None:
        self.index, self.name, self.rows = int(index), name, rows
        self.start, self.stop = int(start), int(len(rows) if stop is None else stop)
        names = classes if classes is not None else getattr(rows, "classes", None)
        self.classes: tuple[str, ...] | None = tuple(names) if names else None

    @property
    def size(self) -> int:
        """Inputs in this shard."""
        return self.stop - self.start

    @property
    def on_part(self) -> bool:
        """Whether the rows are a listing part in DEST (a descriptor task)."""
        return hasattr(self.rows, "prefetch")

    @property
    def items(self) -> tuple[SourceItem, ...]:
        if hasattr(self.rows, "columns"):
            cols = self.rows.columns(self.start, self.stop)
            from resize_pipeline.sources.base import ROW_COLUMNS

            return tuple(SourceItem(*r) for r in zip(*(cols[c] for c in ROW_COLUMNS), strict=True))
        return tuple(self.rows[self.start : self.stop])

    def batch(self, a: int, b: int) -> dict:
        """Rows ``[a, b)`` of this shard as a column batch (`batch.items_to_batch`)."""
        from resize_pipeline.batch import columns_to_batch, items_to_batch

        if a == 0 and self.on_part:
            self.rows.prefetch(self.start, self.stop)  # type: ignore[union-attr]  # the shard's rows, read once
        a, b = self.start + a, min(self.stop, self.start + b)
        if hasattr(self.rows, "columns"):
            return columns_to_batch(self.rows.columns(a, b))
        return items_to_batch(self.rows[a:b])

    def descriptor(self) -> dict[str, Any]:
        """A task on a listing part as a small row (what a Ray task row carries)."""
        return {"index": self.index, "name": self.name, "part": self.rows.name,  # type: ignore[union-attr]
                "start": self.start,
                "stop": self.stop}

    def __reduce__(self) -> tuple:
        if self.on_part:
            return ShardTask, (self.index, self.name, self.rows, self.start, self.stop, self.classes)
        return ShardTask, (self.index, self.name, self.items, 0, None, self.classes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardTask):
            return NotImplemented
        if self.on_part and other.on_part:
            return (self.index, self.name, self.rows, self.start, self.stop) == (
                other.index, other.name, other.rows, other.start, other.stop)
        return (self.index, self.name, self.items) == (other.index, other.name, other.items)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ShardTask({self.index}, {self.name!r}, rows {self.start}..{self.stop})"


@dataclass(slots=True)
class ShardResult:
    """What one shard produced: its files, counts and the failed inputs with reasons.

    `built` (what the worker that converted it built: decoder, resizer, device, precision) travels
    to the driver for the manifest; it is not part of the stats file. `paths` counts, per column
    (``decoded_by``, ``resized_by``), how its samples went where a stage had a choice (DALI or Pillow,
    a Pillow fallback, a CUDA graph or eager): in the stats file when there was any.
    """

    index: int
    name: str
    total: int
    written: int
    failed: int
    files: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    built: dict[str, Any] | None = None
    paths: dict[str, dict[str, int]] = field(default_factory=dict)
    #: the shard's input record (``_inputs/{shard}.parquet``: name, rows, bytes, sha256); None for
    #: shards committed before input records existed
    record: dict[str, Any] | None = None
    #: complete in DEST before this run (resumed, not converted)
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = {
            "index": self.index,
            "name": self.name,
            "total": self.total,
            "written": self.written,
            "failed": self.failed,
            "files": self.files,
            "errors": self.errors,
        }  # no timings: stats (and so reruns) stay byte-identical
        if self.paths:
            out["paths"] = self.paths
        if self.record is not None:
            out["inputs"] = self.record
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardResult:
        record = d.get("inputs")
        res = cls(**{k: d[k] for k in ("index", "name", "total", "written", "failed", "files", "errors")},
                  record=record if isinstance(record, dict) else None)
        paths = d.get("paths")
        if isinstance(paths, dict):
            res.paths = paths
        return res


def plan_shards(items: Sequence[SourceItem] | Any, samples_per_shard: int, prefix: str = "shard", *,
                first: int = 0, width: int | None = None, classes: Sequence[str] | None = None) -> list[ShardTask]:
    """Shard *first + i* = inputs ``[i*N, (i+1)*N)``; each task refers to its slice of `items` (no copy).

    `first` and `width`: a generation of ``--update`` continues the numbering of the shards DEST holds,
    with the digits its first generation chose (default: from this listing's size). `classes`: the
    class names the labels index (default: the rows' own `classes` attribute, if any)."""
    n = len(items)
    width = shard_width(n, samples_per_shard) if width is None else width
    return [
        ShardTask(first + i, shard_name(prefix, first + i, width), items, s, min(n, s + samples_per_shard), classes)
        for i, s in enumerate(range(0, n, samples_per_shard))
    ]


class TaskStream:
    """Shard tasks as they are released (the planner `put`s them, then `close`s or `fail`s), taken by
    an engine (`get`, or iteration). `expected`: how many tasks at most (sizes the worker pool)."""

    _END = object()

    def __init__(self, expected: int = 0) -> None:
        self.expected = expected
        self._q: queue.Queue = queue.Queue()
        self._ended = threading.Event()
        self.error: BaseException | None = None

    @classmethod
    def of(cls, tasks: Iterable[ShardTask]) -> TaskStream:
        tasks = list(tasks)
        stream = cls(len(tasks))
        for t in tasks:
            stream.put(t)
        stream.close()
        return stream

    def put(self, task: ShardTask) -> None:
        self._q.put(task)

    def close(self) -> None:
        self._q.put(self._END)

    def fail(self, exc: BaseException) -> None:
        """End the stream: the tasks already put still run; the error is the planner's to raise."""
        self.error = exc
        self.close()

    def get(self, timeout: float | None = None) -> ShardTask | None:
        """The next task; None once the stream has ended; `queue.Empty` after `timeout`."""
        if self._ended.is_set():
            return None
        item = self._q.get(timeout=timeout)
        if item is self._END:
            self._ended.set()
            return None
        return item

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def __iter__(self) -> Iterator[ShardTask]:
        while (task := self.get()) is not None:
            yield task


def failed_shard(task: ShardTask, exc: BaseException | str, built: dict[str, Any] | None = None) -> ShardResult:
    """A shard that kept failing as a whole: every input is recorded as failed (stage ``shard``) with
    the reason. No stats file is written for it, so a rerun tries it again."""
    errors = [error_record(key=it.key, source=it.url, stage="shard", exc=exc, error_type="RuntimeError")
              for it in task.items]
    return ShardResult(task.index, task.name, task.size, 0, task.size, [], errors, built=built)
