"""`PartGate`: the job's small coordinator actor on Ray (no Ray import here: `ray_engine` wraps it).

- **Listing parts.** Shard tasks reach the actors before the listing has ended (a task is a row
  range of a listing part, known from its index alone). An actor asks the gate for its part
  (`wait`) and starts when the driver's planner has written it (or, on a rerun, checked it): `open`.
  `end` says how many parts the listing has (a task past them converts nothing); `fail` stops every
  waiting and later call (the listing turned out different: the job ends).
- **The attempt ledger.** Every attempt of a shard is counted here, whatever ended the previous
  one: an exception in the actor (`note`, from the runner's own retry) or the actor dying (Ray
  retries the task, and the next `attempt` call counts it). Past the cap the actor records the
  shard's inputs as failed (stage ``shard``) instead of converting it, so a shard that crashes its
  actor every time costs the job at most `cap` actor restarts, never a loop.

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

    def note(self, index: int, attempt: int) -> None:
        """A retry started inside an actor (the runner's own, after an exception)."""
        with self._cond:
            self._attempts[index] = max(self._attempts.get(index, 0), attempt)

    def attempts(self) -> dict[int, int]:
        with self._cond:
            return dict(self._attempts)
