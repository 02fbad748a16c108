"""The Ray Data actor: shard tasks in, `ShardResult`s out, through one streaming `ShardRunner`.

`ShardConverter` is a plain callable class (no Ray import): Ray Data's ``map_batches`` runs it as an
actor pool. The actor builds one `ShardRunner` (decoder, resizer model) and runs it as a
`ShardService`: each call submits its shard to the runner's stream and waits for that shard's
result. The engine lets two calls run at once per actor, so the next shard streams in behind the
current one instead of the stream draining between calls. The runner commits each shard
atomically, its stats file last, and retries-then-records failing shards exactly as the local
engine does. A device fault (`errors.DeviceFault`) ends the actor's process, as the local engine ends
a worker: a shard whose actor *dies* is Ray's to retry; it comes out byte-identical.

Shard tasks travel as compact rows (``index``, ``name``, zlib-compressed JSON of the items), so
thousands of shards of thousands of inputs stay small in the object store.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from typing import Any

import numpy as np

from resize_pipeline.batch import item_rows, objects
from resize_pipeline.errors import DeviceFault
from resize_pipeline.shards import ShardResult, ShardTask
from resize_pipeline.sources.base import SourceItem

log = logging.getLogger(__name__)


def encode_task(task: ShardTask) -> dict[str, Any]:
    """`ShardTask` -> a row for ``ray.data.from_items`` (items as zlib-compressed JSON)."""
    text = json.dumps({"rows": item_rows(task.items), "classes": task.classes}, ensure_ascii=False,
                      separators=(",", ":"))
    return {"index": task.index, "name": task.name, "items": zlib.compress(text.encode("utf-8", "surrogatepass"), 6)}


def decode_task(index: int, name: str, blob: bytes) -> ShardTask:
    got = json.loads(zlib.decompress(blob).decode("utf-8", "surrogatepass"))
    return ShardTask(int(index), str(name), tuple(SourceItem(*r) for r in got["rows"]), classes=got["classes"])


def result_to_json(result: ShardResult) -> str:
    return json.dumps(dict(result.to_dict(), seconds=result.seconds, built=result.built), ensure_ascii=False)


def result_from_json(text: str) -> ShardResult:
    d = json.loads(text)
    res = ShardResult.from_dict(d)
    res.seconds = float(d.get("seconds", 0.0))
    res.built = d.get("built")
    return res


class ShardConverter:
    """Converts whole shards; Ray Data's ``map_batches`` runs it as an actor pool.

    Args:
        config: the job's `ConvertConfig`.
        resolved: the driver's `preflight.Resolved` decisions; with a GPU, Ray has already set this
            actor's ``CUDA_VISIBLE_DEVICES`` to its own GPU, which it then sees as ``cuda:0``.
        threads: CPU threads this actor may use (the stages' thread pools, DALI's CPU threads, torch
            intra-op); the engine passes the actor's ``num_cpus``.
    """

    def __init__(self, config, resolved, threads: int | None = None) -> None:
        from resize_pipeline.devices import Placement
        from resize_pipeline.runner import ShardRunner, ShardService

        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        placement = Placement("cuda:0" if resolved.uses_gpu else "cpu", {})
        log.info("actor %d: CUDA_VISIBLE_DEVICES=%s", os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.service = ShardService(ShardRunner(config, resolved, placement, threads or 1))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        futures = [self.service.submit(decode_task(index, name, blob))
                   for index, name, blob in zip(batch["index"], batch["name"], batch["items"], strict=True)]
        out = []
        for fut in futures:
            try:
                result = fut.result()
            except DeviceFault as exc:
                # the typed error policy: the actor dies (its CUDA context may be poisoned); Ray
                # restarts it and runs its shards again (``max_restarts``/``max_task_retries``)
                log.error("actor %d: device fault (%s); exiting so that Ray replaces this actor", os.getpid(), exc)
                os._exit(3)
            log.debug("shard %s: %d written, %d failed", result.name, result.written, result.failed)
            out.append(result_to_json(result))
        return {"result": objects(out)}
