"""The Ray Data actor: one shard task in, one `ShardResult` out.

`ShardConverter` is a plain callable class (no Ray import): Ray Data's ``map_batches`` runs it as an
actor pool, so the `ConvertStage` (decoder, resizer model) is built once per actor and every shard
goes through the spine's `run_shard` unchanged, which commits the shard atomically and writes its
stats file last. A shard is therefore safe to run again after a killed actor: Ray retries the task on
a restarted actor and the shard comes out byte-identical.

Shard tasks travel as compact rows (``index``, ``name``, zlib-compressed JSON of the items), so
thousands of shards of thousands of inputs stay small in the object store.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from resize_pipeline.shards import ShardResult, ShardTask
from resize_pipeline.sources.base import SourceItem

log = logging.getLogger(__name__)

#: Test hook: path of a marker file. The first actor to reach it creates the file and dies
#: (``os._exit(1)``) in the middle of its first shard; later shards (and the retry) run normally.
CRASH_ONCE_ENV = "RESIZE_PIPELINE_RAY_TEST_CRASH_ONCE"
#: Test hook: a shard name whose every attempt fails mid-shard with ``OSError("No space left on device")``.
FAIL_SHARD_ENV = "RESIZE_PIPELINE_RAY_TEST_FAIL_SHARD"

_ITEM_FIELDS = ("key", "url", "label", "label_name", "meta", "offset", "length", "row")


def encode_task(task: ShardTask) -> dict[str, Any]:
    """`ShardTask` -> a row for ``ray.data.from_items`` (items as zlib-compressed JSON)."""
    items = [[getattr(it, f) for f in _ITEM_FIELDS] for it in task.items]
    blob = zlib.compress(json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"), 6)
    return {"index": task.index, "name": task.name, "items": blob}


def decode_task(index: int, name: str, blob: bytes) -> ShardTask:
    rows = json.loads(zlib.decompress(blob).decode("utf-8", "surrogatepass"))
    return ShardTask(int(index), str(name), tuple(SourceItem(*r) for r in rows))


def result_to_json(result: ShardResult) -> str:
    return json.dumps(dict(result.to_dict(), seconds=result.seconds), ensure_ascii=False)


def result_from_json(text: str) -> ShardResult:
    d = json.loads(text)
    res = ShardResult.from_dict(d)
    res.seconds = float(d.get("seconds", 0.0))
    return res


class _TestHooks:
    """Failure injection for the tests, called by `run_shard` after each batch (mid-shard)."""

    def __init__(self, shard: str, crash_once: str | None, fail_shard: str | None) -> None:
        self.shard, self.crash_once, self.fail_shard = shard, crash_once, fail_shard

    def __call__(self, n: int) -> None:
        if self.fail_shard == self.shard:
            raise OSError("No space left on device")
        if not self.crash_once:
            return
        try:
            fd = os.open(self.crash_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        log.warning("test hook %s: actor %d exits mid-shard", CRASH_ONCE_ENV, os.getpid())
        os._exit(1)


class ShardConverter:
    """Converts whole shards; Ray Data's ``map_batches`` runs it as an actor pool.

    A shard that raises (a write error, say) is retried in the actor, then recorded as failed input by
    input, exactly as the local engine does (`resize_pipeline.engine.local.failed_shard`: no stats
    file, so a rerun redoes it). A shard whose actor *dies* is Ray's to retry.

    Args:
        config: the job's `ConvertConfig`.
        threads: CPU threads this actor may use (the stages' thread pools, DALI's CPU threads, torch
            intra-op); the engine passes the actor's ``num_cpus``.
        crash_once, fail_shard: test hooks, see `CRASH_ONCE_ENV` and `FAIL_SHARD_ENV`.
    """

    def __init__(self, config, threads: int | None = None, crash_once: str | None = None,
                 fail_shard: str | None = None) -> None:
        from fsspec.core import url_to_fs

        from resize_pipeline.stages import ConvertStage

        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)
            if config.resizer.startswith("learned"):  # torch only when used (~2 s, ~250 MB per actor)
                try:
                    import torch

                    torch.set_num_threads(threads)
                except ImportError:
                    pass
        self.config = config
        # the engine's CPU share of this actor: decode/resize/encode thread pools, DALI CPU threads
        self.stage = ConvertStage(config, threads=threads)
        self.fs, self.root = url_to_fs(config.dest, **config.storage_options)
        self.crash_once, self.fail_shard = crash_once, fail_shard

    def convert(self, task: ShardTask) -> ShardResult:
        from resize_pipeline.engine.local import SHARD_ATTEMPTS, failed_shard
        from resize_pipeline.shards import run_shard

        hook = _TestHooks(task.name, self.crash_once, self.fail_shard) if (self.crash_once or self.fail_shard) else None
        for attempt in range(1, SHARD_ATTEMPTS + 1):
            try:
                return run_shard(task, self.stage, self.config, self.fs, self.root, hook)
            except Exception as exc:  # noqa: BLE001 - shard-level failure: retry, then record
                if attempt == SHARD_ATTEMPTS:
                    return failed_shard(task, exc)
                log.warning("shard %s failed (%s: %s); retrying", task.name, type(exc).__name__, exc)
        raise AssertionError("unreachable")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: list[str] = []
        for index, name, blob in zip(batch["index"], batch["name"], batch["items"], strict=True):
            result = self.convert(decode_task(index, name, blob))
            log.debug("shard %s: %d written, %d failed", result.name, result.written, result.failed)
            out.append(result_to_json(result))
        return {"result": _objects(out)}


def _objects(values: Sequence[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr
