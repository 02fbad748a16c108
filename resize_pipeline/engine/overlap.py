"""Overlap stages: each stage runs in its own thread, linked by bounded queues, order preserved.

While batch k is resized, batch k+1 is read/decoded and batch k-1 encoded: the decoder, the resizer
(GPU or Pillow, both release the GIL) and the encoder work at the same time. Queues of `depth` batches
bound memory. An unexpected exception in any stage stops the chain and is re-raised to the consumer
(per-sample failures never raise: they are error rows).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

_DONE = object()


def should_overlap(config) -> bool:
    """``--overlap`` / ``--no-overlap``, else auto: overlap when a stage waits on something other than
    this process's CPU — a GPU (DALI mixed decode, the CNN on CUDA) or a remote source (s3, gs, http).

    Measured on the 2-core CPU box (docs/benchmarks.md): with CPU-bound Pillow stages, overlapping
    threads only oversubscribe the cores (2 processes: 481 vs 587 img/s), so it is off there.
    """
    if config.overlap is not None:
        return bool(config.overlap)
    proto = config.source.split("://", 1)[0] if "://" in config.source else "file"
    if proto not in ("file", "local", "memory"):
        return True
    from resize_pipeline.engine.local import _uses_gpu

    return _uses_gpu(config)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def overlapped(items: Iterable[Any], stages: Sequence[Callable[[Any], Any]], depth: int = 2) -> Iterator[Any]:
    """Yield ``stages[-1](...stages[0](item))`` for each item, in order, stages running concurrently."""
    if not stages:
        yield from items
        return
    stop = threading.Event()
    queues: list[queue.Queue] = [queue.Queue(maxsize=depth) for _ in range(len(stages) + 1)]

    def put(q: queue.Queue, value: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            for item in items:
                if not put(queues[0], item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(queues[0], _Failure(exc))
            return
        put(queues[0], _DONE)

    def work(i: int, fn: Callable[[Any], Any]) -> None:
        src, dst = queues[i], queues[i + 1]
        while not stop.is_set():
            try:
                item = src.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE or isinstance(item, _Failure):
                put(dst, item)
                return
            try:
                out = fn(item)
            except BaseException as exc:  # noqa: BLE001
                put(dst, _Failure(exc))
                return
            if not put(dst, out):
                return

    threads = [threading.Thread(target=feed, name="overlap-feed", daemon=True)]
    threads += [threading.Thread(target=work, args=(i, fn), name=f"overlap-{i}", daemon=True)
                for i, fn in enumerate(stages)]
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
