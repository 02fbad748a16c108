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
from resize_pipeline.sources.base import SourceItem

STATS_DIR = "_stats"
#: how many times a shard is attempted (a failure inside it, or its worker process dying) before its
#: inputs are recorded as failed (stage ``shard``); a rerun tries it again
SHARD_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class ShardTask:
    index: int
    name: str
    items: tuple[SourceItem, ...]


@dataclass(slots=True)
class ShardResult:
    """What one shard produced: its files, counts and the failed inputs with reasons.

    `built` (what the worker that converted it built: decoder, resizer, device, precision) travels
    to the driver for the manifest; it is not part of the stats file.
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "total": self.total,
            "written": self.written,
            "failed": self.failed,
            "files": self.files,
            "errors": self.errors,
        }  # no timings: stats (and so reruns) stay byte-identical

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardResult:
        return cls(**{k: d[k] for k in ("index", "name", "total", "written", "failed", "files", "errors")})


def plan_shards(items: Sequence[SourceItem], samples_per_shard: int, prefix: str = "shard") -> list[ShardTask]:
    n = len(items)
    width = max(5, len(str(max(0, (n - 1) // samples_per_shard))))
    return [
        ShardTask(i, f"{prefix}-{i:0{width}d}", tuple(items[s : s + samples_per_shard]))
        for i, s in enumerate(range(0, n, samples_per_shard))
    ]


def stats_name(name: str) -> tuple[str, str]:
    """Where a shard's stats file lives, relative to DEST."""
    return STATS_DIR, f"{name}.json"


def failed_shard(task: ShardTask, exc: BaseException | str, built: dict[str, Any] | None = None) -> ShardResult:
    """A shard that kept failing as a whole: every input is recorded as failed (stage ``shard``) with
    the reason. No stats file is written for it, so a rerun tries it again."""
    errors = [error_record(key=it.key, source=it.url, stage="shard", exc=exc, error_type="RuntimeError")
              for it in task.items]
    return ShardResult(task.index, task.name, len(task.items), 0, len(task.items), [], errors, built=built)
