"""The per-worker stream: units of work flowing through steps, serially or overlapped in threads.

A `Work` is one batch of one shard attempt. A *step* maps an iterator of works to an iterator of
works (same order). `map_step` turns a stage (``Batch -> Batch``) into a step; `split_step` cuts a
batch into several (a pixel budget: `stages.PixelBudget`); `lagged` turns a
``submit``/``finish`` pair into a step that keeps work in flight (DALI decoding batch k+1 while the
next step works on batch k). An exception raised by a stage is caught into ``work.error``: it fails
that work's shard (which the runner retries), never the stream.

`IDLE` travels through the steps when the source has nothing to give right now (a worker waiting
for its next shard): a lagged step then finishes what it holds, so no shard waits on input that
has not arrived. `chain` runs the steps one after the other in the calling thread, or each in its
own thread linked by bounded queues (`overlap=True`): batch k+1 is read while k decodes and k-1
encodes, across shard boundaries (the threads start once per worker, not per shard).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

IDLE: Any = type("Idle", (), {"__repr__": lambda self: "IDLE"})()
_DONE = object()

Step = Callable[[Iterator[Any]], Iterator[Any]]


class Attempt:
    """One attempt at one shard, shared by its works: once it has failed, its remaining works skip
    every step (nothing more is spent on a shard that will be redone)."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False


@dataclass(slots=True)
class Work:
    """One batch of one attempt at one shard."""

    task: Any  # shards.ShardTask
    attempt: int
    seq: int
    last: bool
    batch: dict
    error: BaseException | None = None
    state: Attempt | None = None

    @property
    def live(self) -> bool:
        """Still worth working on: no error, and its shard attempt has not failed."""
        return self.error is None and not (self.state is not None and self.state.failed)


def map_step(fn: Callable[[dict], dict]) -> Step:
    """A step applying `fn` to each work's batch; an exception fails that work."""

    def step(works: Iterator[Any]) -> Iterator[Any]:
        for w in works:
            if w is not IDLE and w.live:
                try:
                    w.batch = fn(w.batch)
                except Exception as exc:  # noqa: BLE001 - fails the shard, which the runner retries
                    w.error = exc
            yield w

    return step


def split_step(split: Callable[[dict], list[dict] | None]) -> Step:
    """A step that may cut each work's batch into several consecutive batches (`split` returns them,
    or None to keep the batch whole): they go on as works of the same shard attempt, in order, the
    last one keeping the work's `last` mark. An exception fails that work."""

    def step(works: Iterator[Any]) -> Iterator[Any]:
        for w in works:
            if w is IDLE or not w.live:
                yield w
                continue
            try:
                parts = split(w.batch)
            except Exception as exc:  # noqa: BLE001 - fails the shard, which the runner retries
                w.error = exc
                parts = None
            if not parts or len(parts) == 1:
                yield w
                continue
            for j, part in enumerate(parts):
                yield Work(w.task, w.attempt, w.seq, w.last and j == len(parts) - 1, part, state=w.state)

    return step


def lagged(submit: Callable[[dict], Any], finish: Callable[[Any], dict], depth: int = 1) -> Step:
    """A step that submits each batch and finishes it `depth` works later (or on IDLE / at the end)."""

    def step(works: Iterator[Any]) -> Iterator[Any]:
        held: deque[tuple[Work, Any]] = deque()

        def done(w: Work, token: Any) -> Work:
            if w.error is None and token is not None:
                try:
                    w.batch = finish(token)
                except Exception as exc:  # noqa: BLE001
                    w.error = exc
            return w

        for w in works:
            if w is IDLE:
                while held:
                    yield done(*held.popleft())
                yield w
                continue
            token = None
            if w.live:
                try:
                    token = submit(w.batch)
                except Exception as exc:  # noqa: BLE001
                    w.error = exc
            held.append((w, token))
            while len(held) > depth:
                yield done(*held.popleft())
        while held:
            yield done(*held.popleft())

    return step


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def chain(source: Iterable[Any], steps: Sequence[Step], *, overlap: bool = False, depth: int = 2) -> Iterator[Any]:
    """Run `source` through `steps` in order; with `overlap`, each step in its own thread."""
    if not overlap:
        it: Iterator[Any] = iter(source)
        for s in steps:
            it = s(it)
        yield from it
        return
    yield from _overlapped(source, steps, depth)


def _overlapped(source: Iterable[Any], steps: Sequence[Step], depth: int) -> Iterator[Any]:
    stop = threading.Event()
    queues: list[queue.Queue] = [queue.Queue(maxsize=depth) for _ in range(len(steps) + 1)]

    def put(q: queue.Queue, value: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def drain(q: queue.Queue) -> Iterator[Any]:
        while not stop.is_set():
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def feed() -> None:
        try:
            for item in source:
                if not put(queues[0], item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(queues[0], _Failure(exc))
            return
        put(queues[0], _DONE)

    def work(i: int, step: Step) -> None:
        try:
            for out in step(drain(queues[i])):
                if not put(queues[i + 1], out):
                    return
        except BaseException as exc:  # noqa: BLE001 - a step's own bug, or a failure passed along
            put(queues[i + 1], _Failure(exc))
            return
        put(queues[i + 1], _DONE)

    threads = [threading.Thread(target=feed, name="stream-feed", daemon=True)]
    threads += [threading.Thread(target=work, args=(i, s), name=f"stream-{i}", daemon=True)
                for i, s in enumerate(steps)]
    for t in threads:
        t.start()
    try:
        while True:
            item = queues[-1].get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
