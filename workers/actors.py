"""The Ray Data actor: shard tasks in, `ShardResult`s out, through one streaming `ShardRunner`.

`ShardConverter` is a plain callable class (no Ray import at module level): Ray Data's
``map_batches`` runs it as an actor pool. The actor builds one `ShardRunner` (decoder, resizer model)
and runs it as a `ShardService`: each call submits its shard to the runner's stream and waits for
that shard's result. The engine lets two calls run at once per actor, so the next shard streams in
behind the current one instead of the stream draining between calls. The runner commits each shard
atomically, its stats file last, and retries-then-records failing shards exactly as the local
engine does.

A task row is a descriptor (`task_row`): the shard's index and name, and its row range in a listing
part in DEST, a few dozen bytes whatever the shard size. The actor waits until the driver has
written (or checked) that part (`gate.PartGate.wait`), reads its rows from it, and counts the attempt
in the job's ledger (`gate.PartGate.attempt`): a shard whose actor died `shard_attempts` times is
recorded as failed (stage ``shard``) instead of being run again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from resize_pipeline.batch import objects
from resize_pipeline.shards import ShardResult, ShardTask, failed_shard, shard_attempts

log = logging.getLogger(__name__)

_PART = re.compile(r"part-(\d+)\.parquet$")
#: what an actor answers for a task past the end of the listing (its part turned out shorter)
NOTHING = "{}"


def task_row(index: int, name: str, part: str, start: int, stop: int) -> dict[str, Any]:
    """A shard task as a Ray Data row: ``index``, ``name``, ``part`` (a listing part's file name),
    ``start``, ``stop`` (its rows in the part; the part may turn out shorter)."""
    return {"index": index, "name": name, "part": part, "start": start, "stop": stop}


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

    def __init__(self, config, resolved, threads: int | None = None, gate: Any = None) -> None:
        from resize_pipeline.devices import Placement
        from resize_pipeline.runner import ShardRunner, ShardService

        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        placement = Placement("cuda:0" if resolved.uses_gpu else "cpu", {})
        log.info("actor %d: CUDA_VISIBLE_DEVICES=%s", os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.config, self.gate = config, gate
        self.cap = shard_attempts(config)
        self._parts: dict[int, int] = {}
        runner = ShardRunner(config, resolved, placement, threads or 1)
        if gate is not None:
            runner.on_retry = self._note
        self.service = ShardService(runner)

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

    def _attempt(self, index: int) -> int:
        return 1 if self.gate is None else int(self._ray_get(self.gate.attempt.remote(index)))

    def _note(self, task: ShardTask, attempt: int) -> None:
        self._ray_get(self.gate.note.remote(task.index, attempt))

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
        return ShardTask(int(row["index"]), str(row["name"]), part, start, stop)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        futures: list[Future | None] = []
        for i in range(len(batch["index"])):
            row = {k: batch[k][i] for k in ("index", "name", "part", "start", "stop")}
            task = self._task(row)
            if task is None:
                futures.append(None)
                continue
            attempt = self._attempt(task.index)
            if attempt > self.cap:
                log.error("shard %s: its actor died %d times while converting it; its %d inputs are recorded "
                          "as failed", task.name, attempt - 1, task.size)
                failed: Future = Future()
                failed.set_result(failed_shard(task, f"a Ray actor died while converting it ({attempt - 1} attempts)"))
                futures.append(failed)
                continue
            futures.append(self.service.submit(task, attempt))
        out = []
        for fut in futures:
            if fut is None:
                out.append(NOTHING)
                continue
            t0 = time.perf_counter()
            result = fut.result()
            log.debug("shard %s: %d written, %d failed (%.1f s)", result.name, result.written, result.failed,
                      time.perf_counter() - t0)
            out.append(result_to_json(result))
        return {"result": objects(out)}
