"""`PartGate`: the job's small coordinator actor on Ray (no Ray import here: `ray_engine` wraps it).

- **Listing parts.** Shard tasks reach the actors before the listing has ended (a task is a row
  range of a listing part, known from its index alone). An actor asks the gate for its part
  (`wait`) and starts when the driver's planner has written it (or, on a rerun, checked it): `open`.
  `end` says how many parts the listing has (a task past them converts nothing); `fail` stops every
  waiting and later call (the listing turned out different: the job ends).
- **The attempt counts.** Every attempt of a shard is counted here, whatever ended the previous one:
  each time an actor's runner starts it (`GateLedger.start`: the first time, after an exception in
  the runner, after Ray retried the task of an actor that died). At the cap the shard's inputs are
  recorded as failed (stage ``shard``: `GateLedger.fail`, or the actor when Ray hands it a task
  whose attempts are used up) instead of converting it again, so a shard
  that crashes its actor every time costs the job at most `cap` actor restarts, never a loop.
  `GateLedger` is the `attempts.AttemptLedger` interface over these counts: the runner in a Ray
  actor counts and caps its attempts exactly as the local engine's runners do.

It runs on the driver's node, with no CPU, many calls at once (threads), and dies with the driver.
"""

from __future__ import annotations

import threading
from typing import Any


class PlanFailed(RuntimeError):
    """The driver stopped the job while a shard waited for its listing part."""


class PartGate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._parts: dict[int, int] = {}
        self._parts_total: int | None = None
        self._failed: str | None = None
        self._attempts: dict[int, int] = {}

    # -- listing parts --------------------------------------------------------------------------
    def open(self, part: int, rows: int) -> None:
        with self._cond:
            self._parts[part] = rows
            self._cond.notify_all()

    def end(self, parts: int) -> None:
        with self._cond:
            self._parts_total = parts
            self._cond.notify_all()

    def fail(self, reason: str) -> None:
        with self._cond:
            self._failed = reason
            self._cond.notify_all()

    def wait(self, part: int, timeout: float = 30.0) -> tuple[str, Any]:
        """(``"rows"``, rows in `part`) once it is ready; (``"failed"``, why) if the job stopped;
        (``"wait"``, None) after `timeout` (call again: a call never blocks an actor's thread
        forever)."""
        with self._cond:
            ready = self._cond.wait_for(lambda: self._ready(part), timeout)
            if self._failed is not None:
                return "failed", self._failed
            if not ready:
                return "wait", None
            return "rows", self._parts.get(part, 0)

    def _ready(self, part: int) -> bool:
        return self._failed is not None or part in self._parts or (
            self._parts_total is not None and part >= self._parts_total)

    # -- the attempt ledger -----------------------------------------------------------------------
    def attempt(self, index: int) -> int:
        """Start an attempt of shard `index`; returns its number (1 = first)."""
        with self._cond:
            n = self._attempts.get(index, 0) + 1
            self._attempts[index] = n
            return n

    def count(self, index: int) -> int:
        """Attempts of shard `index` started so far."""
        with self._cond:
            return self._attempts.get(index, 0)

    def attempts(self) -> dict[int, int]:
        with self._cond:
            return dict(self._attempts)


class GateLedger:
    """The `attempts.AttemptLedger` interface of a Ray actor's runner, over the gate's counts (one
    count per shard for the whole cluster, `PartGate`): `start` counts an attempt, `fail` at the cap
    records the shard's inputs as failed."""

    def __init__(self, gate: Any, cap: int) -> None:
        self.gate, self.cap = gate, int(cap)
        self._lock = threading.Lock()
        self._running: set[int] = set()

    def _get(self, ref: Any) -> Any:
        import ray

        return ray.get(ref)

    def start(self, task: Any) -> int:
        with self._lock:
            self._running.add(task.index)
        return int(self._get(self.gate.attempt.remote(task.index)))

    def running(self, task: Any) -> bool:
        with self._lock:
            return task.index in self._running

    def attempts(self, task: Any) -> int:
        return int(self._get(self.gate.count.remote(task.index)))

    def fail(self, task: Any, reason: BaseException | str, built: dict[str, Any] | None = None) -> Any:
        from resize_pipeline.attempts import settle

        with self._lock:
            if task.index not in self._running:
                return None
            self._running.discard(task.index)
        return settle(task, int(self._get(self.gate.count.remote(task.index))), self.cap, reason, built)

    def done(self, task: Any) -> None:
        with self._lock:
            self._running.discard(task.index)
