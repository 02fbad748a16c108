"""`AttemptLedger`: one count of each shard's attempts, whatever ends them, with one cap for every engine.

img2dataset keeps one ``retrier(runf, failed_shards, max_shard_retry)`` for all its distributors; this
is ours. An attempt of a shard ends in one of two ways:

- a result (the shard committed: `done`);
- no result (`fail`): an exception inside a stage or a write that failed for good (the runner), a
  device fault that ended the worker (the typed error policy: `errors.DeviceFault`), a worker
  process that died (the OOM killer, a crash in a native decoder), an actor that died (Ray).

Every way of failing counts the same, so a shard is attempted at most `cap` times in all (the
``shard_attempts`` config field, ``--shard-attempts``, default 3); after the last attempt its inputs
are recorded as failed with stage ``shard`` and *no* stats file is written, so a rerun of the same
command attempts it again.

Interface (engine-agnostic; thread-safe, so threads of one process may share one ledger):

- ``start(task) -> int``: an attempt of `task` begins (its first batch is read); returns its number,
  1-based. A shard that was only queued to a worker has not started.
- ``fail(task, reason, built=None) -> ShardResult | None``: the running attempt ended without a
  result. ``None``: attempt it again (the caller queues it, anywhere: the same runner for a failed
  stage, another worker after a device fault or a death); otherwise the final `ShardResult` that
  records every input as failed (stage ``shard``, `shards.failed_shard`): the caller reports it.
  A task without a running attempt (queued, never started) is not charged: ``None``.
- ``done(task)``: the attempt committed; the shard is forgotten.
- ``running(task) -> bool``: whether an attempt of `task` is under way.

Who calls what: `runner.ShardRunner` calls `start` when it takes a shard and `fail` when a stage or
a write fails it; the local engine (`engine.local`) calls `fail` for the shards a dead or faulted
worker was running (in-process, thread and process workers all share the driver's one ledger: a
worker process reports ``started``/``failed`` to the driver, which keeps the count); the Ray engine
calls `fail` for the shards of an actor that died.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from resize_pipeline.shards import SHARD_ATTEMPTS, ShardResult, ShardTask, failed_shard

log = logging.getLogger(__name__)

#: attempts per shard unless configured (``shard_attempts``)
DEFAULT_ATTEMPTS = SHARD_ATTEMPTS


def settle(task: ShardTask, n: int, cap: int, reason: BaseException | str,
           built: dict[str, Any] | None = None) -> ShardResult | None:
    """Attempt `n` of `task` failed: None (attempt it again) below `cap`, else the `ShardResult` that
    records its inputs as failed. Every ledger decides (and says so) here."""
    why = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
    if n < cap:
        log.warning("shard %s: attempt %d of %d failed (%s); attempting it again", task.name, n, cap, why)
        return None
    log.error("shard %s failed %d time(s); its %d inputs are recorded as failed (a rerun attempts it "
              "again): %s", task.name, n, task.size, why)
    return failed_shard(task, reason, built)


class AttemptLedger:
    """Counts attempts per shard index; see the module docstring for the interface."""

    def __init__(self, cap: int = DEFAULT_ATTEMPTS) -> None:
        if cap < 1:
            raise ValueError(f"the attempt cap must be >= 1, got {cap}")
        self.cap = int(cap)
        self._lock = threading.Lock()
        self._count: dict[int, int] = {}
        self._running: set[int] = set()

    def start(self, task: ShardTask) -> int:
        with self._lock:
            n = self._count.get(task.index, 0) + 1
            self._count[task.index] = n
            self._running.add(task.index)
            return n

    def running(self, task: ShardTask) -> bool:
        with self._lock:
            return task.index in self._running

    def attempts(self, task: ShardTask) -> int:
        """Attempts started so far."""
        with self._lock:
            return self._count.get(task.index, 0)

    def fail(self, task: ShardTask, reason: BaseException | str,
             built: dict[str, Any] | None = None) -> ShardResult | None:
        with self._lock:
            if task.index not in self._running:
                return None  # queued, never started: nothing to charge
            self._running.discard(task.index)
            n = self._count.get(task.index, 0)
            final = n >= self.cap
            if final:
                self._count.pop(task.index, None)
        return settle(task, n, self.cap, reason, built)

    def done(self, task: ShardTask) -> None:
        with self._lock:
            self._running.discard(task.index)
            self._count.pop(task.index, None)


class ForwardingLedger:
    """The ledger a worker *process* hands its runner: it keeps no count, it reports ``started`` and
    ``failed`` to the driver (whose `AttemptLedger` decides) and answers `fail` with `FORWARDED`, so
    the runner neither retries nor records: the driver queues the shard again or records it."""

    def __init__(self, report) -> None:
        self.report = report  # report(kind, payload)

    def start(self, task: ShardTask) -> int:
        self.report("started", task.index)
        return 0

    def running(self, task: ShardTask) -> bool:
        return True

    def fail(self, task: ShardTask, reason: BaseException | str, built: dict[str, Any] | None = None):
        why = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
        self.report("failed", (task.index, why))
        return FORWARDED

    def done(self, task: ShardTask) -> None:
        pass


#: `ForwardingLedger.fail`'s answer: the driver decides
FORWARDED: Any = type("Forwarded", (), {"__repr__": lambda self: "FORWARDED"})()
