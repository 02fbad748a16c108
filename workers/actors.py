"""The Ray Data actor: shard tasks in, `ShardResult`s out, through one streaming `ShardRunner`.

`ShardConverter` is a plain callable class (no Ray import at module level): Ray Data's
``map_batches`` runs it as an actor pool. The actor builds one `ShardRunner` (decoder, resizer model)
and runs it as a `ShardService`: each call submits its shard to the runner's stream and waits for
that shard's result. The engine lets two calls run at once per actor, so the next shard streams in
behind the current one instead of the stream draining between calls. The runner commits each shard
atomically, its stats file last, and retries-then-records failing shards exactly as the local
engine does. A device fault (`errors.DeviceFault`) ends the actor's process, as the local engine ends
a worker: a shard whose actor *dies* is Ray's to retry; it comes out byte-identical.

A task row is a descriptor (`task_row`): the shard's index and name, and its row range in a listing
part in DEST, a few dozen bytes whatever the shard size. The actor waits until the driver has
written (or checked) that part (`gate.PartGate.wait`), reads its rows from it, and counts the attempt
in the job's ledger (`gate.GateLedger`, the local engine's interface over the gate's counts): a
shard whose attempts are used up, whatever ended them (an exception, an actor dying), is recorded as
failed (stage ``shard``) instead of being run again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import zlib
from concurrent.futures import Future
from typing import Any

import numpy as np

from resize_pipeline.batch import item_rows, objects
from resize_pipeline.errors import DeviceFault
from resize_pipeline.shards import ShardResult, ShardTask, failed_shard, shard_attempts
from resize_pipeline.sources.base import SourceItem

log = logging.getLogger(__name__)

_PART = re.compile(r"part-(\d+)\.parquet$")
#: what an actor answers for a task past the end of the listing (its part turned out shorter)
NOTHING = "{}"


def task_row(index: int, name: str, part: str, start: int, stop: int) -> dict[str, Any]:
    """A shard task as a Ray Data row: ``index``, ``name``, ``part`` (a listing part's file name),
    ``start``, ``stop`` (its rows in the part; the part may turn out shorter)."""
    return {"index": index, "name": name, "part": part, "start": start, "stop": stop}


def encode_task(task: ShardTask) -> dict[str, Any]:
    """A task on rows in memory (``--update``'s plan) -> a row for ``ray.data.from_items`` (its items
    as zlib-compressed JSON)."""
    text = json.dumps({"rows": item_rows(task.items), "classes": task.classes}, ensure_ascii=False,
                      separators=(",", ":"))
    return {"index": task.index, "name": task.name, "items": zlib.compress(text.encode("utf-8", "surrogatepass"), 6)}


def decode_task(index: int, name: str, blob: bytes) -> ShardTask:
    got = json.loads(zlib.decompress(blob).decode("utf-8", "surrogatepass"))
    return ShardTask(int(index), str(name), tuple(SourceItem(*r) for r in got["rows"]), classes=got["classes"])


def result_to_json(result: ShardResult) -> str:
    return json.dumps(dict(result.to_dict(), seconds=result.seconds, built=result.built), ensure_ascii=False)


def result_from_json(text: str) -> ShardResult | None:
    """The result of a task (None: the task was past the end of the listing)."""
    d = json.loads(text)
    if not d:
        return None
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
        gate: the job's `gate.PartGate` actor (None: every part is ready, one attempt is counted
            per call; the class used without Ray).
    """

    def __init__(self, config, resolved, threads: int | None = None, gate: Any = None,
                 classes: Any = None) -> None:
        from resize_pipeline.devices import Placement
        from resize_pipeline.runner import ShardRunner, ShardService

        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        placement = Placement("cuda:0" if resolved.uses_gpu else "cpu", {})
        log.info("actor %d: CUDA_VISIBLE_DEVICES=%s", os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.config, self.gate = config, gate
        self.classes = tuple(classes) if classes else None
        self.cap = shard_attempts(config)
        self._parts: dict[int, int] = {}
        ledger = None
        if gate is not None:
            from workers.gate import GateLedger

            ledger = GateLedger(gate, self.cap)
        self.service = ShardService(ShardRunner(config, resolved, placement, threads or 1, ledger=ledger))

    # -- the gate ---------------------------------------------------------------------------------
    def _ray_get(self, ref: Any) -> Any:
        import ray

        return ray.get(ref)

    def _part_rows(self, part: int) -> int | None:
        """Rows of listing part `part` once the driver has it ready; None: past the listing's end."""
        if part in self._parts:
            return self._parts[part]
        if self.gate is None:
            return None
        while True:
            kind, value = self._ray_get(self.gate.wait.remote(part))
            if kind == "failed":
                from workers.gate import PlanFailed

                raise PlanFailed(f"the job stopped: {value}")
            if kind == "rows":
                self._parts[part] = int(value)
                return int(value)

    def _attempts(self, index: int) -> int:
        """Attempts of shard `index` started so far, on any actor (the gate's count)."""
        return 0 if self.gate is None else int(self._ray_get(self.gate.count.remote(index)))

    # -- a call -----------------------------------------------------------------------------------
    def _task(self, row: dict[str, Any]) -> ShardTask | None:
        from resize_pipeline.sources.rows import PartRows

        m = _PART.search(str(row["part"]))
        rows = self._part_rows(int(m.group(1))) if m else None
        start, stop = int(row["start"]), int(row["stop"])
        if rows is not None:
            if start >= rows:
                return None
            stop = min(stop, rows)
        part = PartRows(self.config.dest, self.config.storage_options, str(row["part"]))
        return ShardTask(int(row["index"]), str(row["name"]), part, start, stop, self.classes)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        futures: list[Future | None] = []
        for i in range(len(batch["index"])):
            if "items" in batch:  # a task on rows in memory (``--update``'s plan)
                task: ShardTask | None = decode_task(batch["index"][i], batch["name"][i], batch["items"][i])
            else:
                task = self._task({k: batch[k][i] for k in ("index", "name", "part", "start", "stop")})
            if task is None:
                futures.append(None)
                continue
            tried = self._attempts(task.index)
            if tried >= self.cap:  # Ray retried the task of an actor that died: its attempts are used up
                log.error("shard %s: its %d attempts are used up (the last one's actor died); its %d inputs are "
                          "recorded as failed", task.name, tried, task.size)
                failed: Future = Future()
                failed.set_result(failed_shard(task, f"a Ray actor died while converting it ({tried} attempts)"))
                futures.append(failed)
                continue
            futures.append(self.service.submit(task))
        out = []
        for fut in futures:
            if fut is None:
                out.append(NOTHING)
                continue
            t0 = time.perf_counter()
            try:
                result = fut.result()
            except DeviceFault as exc:
                # the typed error policy: the actor dies (its CUDA context may be poisoned); Ray
                # restarts it and runs its shards again (``max_restarts``/``max_task_retries``)
                log.error("actor %d: device fault (%s); exiting so that Ray replaces this actor", os.getpid(), exc)
                os._exit(3)
            log.debug("shard %s: %d written, %d failed (%.1f s)", result.name, result.written, result.failed,
                      time.perf_counter() - t0)
            out.append(result_to_json(result))
        return {"result": objects(out)}
