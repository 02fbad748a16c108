"""Shard tasks: deterministic assignment of inputs to shards, and converting one shard.

Shard ``i`` always holds inputs ``[i*N, (i+1)*N)`` of the listing (N = samples per shard), whatever
engine runs it and however many times. A shard is done when its stats file ``_stats/{name}.json``
exists; it is written after the shard files are committed, so a crash leaves either a complete shard
with stats or nothing that counts.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.engine.overlap import overlapped, should_overlap
from resize_pipeline.errors import error_record
from resize_pipeline.sinks import WRITERS, RollingShardWriter, Sample
from resize_pipeline.sources.base import SourceItem
from resize_pipeline.stages import items_to_batch

log = logging.getLogger(__name__)

STATS_DIR = "_stats"


@dataclass(frozen=True, slots=True)
class ShardTask:
    index: int
    name: str
    items: tuple[SourceItem, ...]


@dataclass(slots=True)
class ShardResult:
    """What one shard produced: its files, counts and the failed inputs with reasons."""

    index: int
    name: str
    total: int
    written: int
    failed: int
    files: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

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


def stats_path(root: str, name: str) -> str:
    return posixpath.join(root, STATS_DIR, f"{name}.json")


def write_json_atomic(fs, path: str, data: Any) -> None:
    """Write JSON so that `path` only ever holds a complete document."""
    from resize_pipeline.sinks.base import is_local

    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False)
    if is_local(fs):
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.partial")
        with fs.open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        fs.mv(tmp, path)
    else:
        with fs.open(path, "w", encoding="utf-8") as fh:
            fh.write(text)


def run_shard(
    task: ShardTask,
    stage: Callable[[dict], dict],
    config,
    fs,
    root: str,
    on_progress: Callable[[int], None] | None = None,
) -> ShardResult:
    """Convert one shard: batches through `stage`, samples into every format's writer, stats last."""
    t0 = time.perf_counter()
    writers = [
        RollingShardWriter(fs, root, task.name, fmt, WRITERS[fmt], config.max_shard_bytes,
                           {"row_group_size": config.row_group_size})
        for fmt in config.formats
    ]
    errors: list[dict[str, str]] = []
    written = 0
    batches = (items_to_batch(task.items[s : s + config.batch_size]) for s in range(0, len(task.items), config.batch_size))
    steps = getattr(stage, "steps", None)
    results = overlapped(batches, steps) if steps and should_overlap(config) else map(stage, batches)
    try:
        for batch in results:
            for i in range(len(batch["key"])):
                if batch["error"][i]:
                    errors.append(error_record(
                        key=str(batch["key"][i]), source=str(batch["url"][i]), stage=str(batch["error_stage"][i]),
                        exc=str(batch["error"][i]), error_type=str(batch["error_type"][i]),
                    ))
                    continue
                sample = Sample(
                    key=str(batch["key"][i]),
                    payload=batch["payload"][i],
                    ext=config.encode,
                    width=int(batch["width"][i]),
                    height=int(batch["height"][i]),
                    orig_width=int(batch["orig_width"][i]),
                    orig_height=int(batch["orig_height"][i]),
                    source=str(batch["url"][i]),
                    label=int(batch["label"][i]),
                    label_name=str(batch["label_name"][i]),
                    meta=str(batch["meta"][i]),
                )
                for w in writers:
                    w.write(sample)
                written += 1
            if on_progress:
                on_progress(len(batch["key"]))
        files = [f.to_dict() for w in writers for f in w.close()]
    except BaseException:
        if hasattr(results, "close"):
            results.close()  # stop the stage threads
        for w in writers:
            try:
                w.abort()
            except Exception:  # noqa: BLE001 - best effort cleanup, the original error matters
                pass
        raise
    result = ShardResult(task.index, task.name, len(task.items), written, len(errors), files, errors,
                         time.perf_counter() - t0)
    write_json_atomic(fs, stats_path(root, task.name), result.to_dict())
    return result
