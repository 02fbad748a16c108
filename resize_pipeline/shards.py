"""Shard tasks: the deterministic assignment of inputs to shards, and what a converted shard reports.

Shard ``i`` always holds inputs ``[i*N, (i+1)*N)`` of the listing (N = samples per shard), whatever
engine runs it and however many times. A shard is done when its stats file ``_stats/{name}.json``
exists; it is written after the shard files are committed, so a crash leaves either a complete shard
with stats or nothing that counts. Converting shards is `runner.ShardRunner`'s job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.errors import error_record
from resize_pipeline.layout import shard_name, shard_width
from resize_pipeline.sources.base import SourceItem

#: how many times a shard is attempted (a failure inside it, or its worker process dying) before its
#: inputs are recorded as failed (stage ``shard``); a rerun tries it again
SHARD_ATTEMPTS = 3


class ShardTask:
    """Shard `index`: rows ``[start, stop)`` of the listing.

    A task refers to its slice of the listing (`sources.table.ItemTable`, or any sequence of
    `SourceItem`) instead of holding its inputs: planning costs nothing per input. Its items are made
    when asked for (`items`, `batch`); a task that is pickled (to a worker process, a Ray actor)
    carries its own items, so a worker never receives the whole listing. `classes` are the listing's
    class names (index -> name; None when its labels are plain numbers): the Parquet sink declares
    them as the ``label`` column's Hugging Face ``ClassLabel``.
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
    def items(self) -> tuple[SourceItem, ...]:
        return tuple(self.rows[self.start : self.stop])

    def batch(self, a: int, b: int) -> dict:
        """Rows ``[a, b)`` of this shard as a column batch (`batch.items_to_batch`)."""
        from resize_pipeline.batch import columns_to_batch, items_to_batch

        a, b = self.start + a, min(self.stop, self.start + b)
        if hasattr(self.rows, "columns"):
            return columns_to_batch(self.rows.columns(a, b))
        return items_to_batch(self.rows[a:b])

    def __reduce__(self) -> tuple:
        return ShardTask, (self.index, self.name, self.items, 0, None, self.classes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardTask):
            return NotImplemented
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
    class names the labels index (default: the listing's own, `ItemTable.classes`)."""
    n = len(items)
    width = shard_width(n, samples_per_shard) if width is None else width
    return [
        ShardTask(first + i, shard_name(prefix, first + i, width), items, s, min(n, s + samples_per_shard), classes)
        for i, s in enumerate(range(0, n, samples_per_shard))
    ]


def failed_shard(task: ShardTask, exc: BaseException | str, built: dict[str, Any] | None = None) -> ShardResult:
    """A shard that kept failing as a whole: every input is recorded as failed (stage ``shard``) with
    the reason. No stats file is written for it, so a rerun tries it again."""
    errors = [error_record(key=it.key, source=it.url, stage="shard", exc=exc, error_type="RuntimeError")
              for it in task.items]
    return ShardResult(task.index, task.name, task.size, 0, task.size, [], errors, built=built)
