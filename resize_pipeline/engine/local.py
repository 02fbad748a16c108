"""Local engine: `ShardRunner` workers on one machine, in-process, in threads or in processes.

The engine only schedules: each worker builds one `ShardRunner` and streams the shards it is given
(two in flight per worker, so its stream never drains between shards). ``workers=1`` runs in this
process. On a GPU job the default is, for each visible GPU, one worker process per four cores of its
share (`CORES_PER_GPU_WORKER`), each process seeing only its GPU (``CUDA_VISIBLE_DEVICES``). A worker process that dies (the OOM killer, a decoder crash) is
replaced and its unfinished shards are run again; a shard present at `SHARD_ATTEMPTS` such deaths
is recorded as failed (it may be what kills them).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from resize_pipeline.devices import Placement, gpu_count, parse_device, place_workers
from resize_pipeline.errors import JobStopped, OutputError, ResizePipelineError
from resize_pipeline.shards import SHARD_ATTEMPTS, ShardResult, ShardTask, failed_shard
from resize_pipeline.urls import is_in_process_url

log = logging.getLogger(__name__)

#: shards queued to a worker at once: one converting, one ready to stream in behind it
WINDOW = 2


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _exit_with_parent(parent: int) -> None:
    # A SIGKILLed job leaves its workers blocked on their queues forever: follow the parent. An
    # unfinished shard leaves nothing visible (parts are spooled locally), a temp file at worst.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def worker_main(wid: int, config, resolved, placement: Placement, threads: int, inbox, outbox,
                parent: int | None = None) -> None:
    """A worker: build a `ShardRunner`, stream the tasks that arrive in `inbox` (None ends), report
    ``(kind, wid, payload)`` messages to `outbox`: result, fatal (job-level error), error (could not
    start), crash (a bug), exit."""
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()
        os.environ.update(placement.env)  # before anything imports CUDA
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    from resize_pipeline.runner import ShardRunner, TaskQueue

    try:
        runner = ShardRunner(config, resolved, placement, threads)
    except BaseException as exc:  # noqa: BLE001 - reported to the driver
        outbox.put(("error", wid, _one_line(exc)))
        return
    source = TaskQueue()

    def pump() -> None:
        while True:
            task = inbox.get()
            if task is None:
                source.close()
                return
            source.put(task)

    threading.Thread(target=pump, daemon=True, name="task-pump").start()
    try:
        for result in runner.run(source):
            outbox.put(("result", wid, result))
    except ResizePipelineError as exc:
        outbox.put(("fatal", wid, str(exc)))
        return
    except BaseException:  # noqa: BLE001 - a bug: the driver treats it like a dead worker
        outbox.put(("crash", wid, traceback.format_exc()))
        return
    outbox.put(("exit", wid, None))


def _mp_context():
    """``fork`` where it is safe (Linux, no torch/DALI/CUDA state in this process): workers start
    faster on short jobs; ``spawn`` otherwise (fork after CUDA or OpenMP init can hang the children)."""
    import sys

    heavy = ("torch", "nvidia.dali", "jax", "tensorflow")
    if sys.platform == "linux" and not any(m in sys.modules for m in heavy):
        return mp.get_context("fork")
    return mp.get_context("spawn")


#: on a GPU job, one worker process per this many CPU cores of each GPU's share: one process's host
#: side (read, probe, encode, write) is capped by its GIL near 3k img/s on the 2-core sandbox (1 -> 2
#: threads: 0.84x; 1 -> 2 processes: 1.83x, docs/benchmarks.md), far below what one GPU decodes, so a
#: GPU is fed by several processes (each its own CUDA context, DALI pipeline and CNN)
CORES_PER_GPU_WORKER = 4


def plan_workers(config, resolved, n_tasks: int) -> tuple[int, str]:
    """(worker count, ``process`` | ``thread``): one per CPU core; on a GPU job, for each GPU one
    worker process per `CORES_PER_GPU_WORKER` cores of its share (at least one)."""
    workers = config.workers
    if not workers:
        if resolved.uses_gpu:
            _, index = parse_device(resolved.device)
            gpus = 1 if index is not None else max(1, gpu_count())
            workers = gpus * max(1, (os.cpu_count() or 1) // gpus // CORES_PER_GPU_WORKER)
        else:
            workers = config.num_workers
    workers = max(1, min(workers, n_tasks))
    parallelism = config.parallelism
    if workers > 1 and parallelism == "process" and (is_in_process_url(config.source) or
                                                    is_in_process_url(config.dest)):
        log.info("memory:// lives in one process: using threads instead of processes")
        parallelism = "thread"
    return workers, parallelism


class _Slot:
    """One worker (a thread or a process), its own channels and the shards it holds."""

    def __init__(self, wid: int, handle: Any, inbox: Any, conn: Any = None) -> None:
        self.wid, self.handle, self.inbox, self.conn = wid, handle, inbox, conn
        self.tasks: dict[int, ShardTask] = {}
        self.exited = False


def run_local(
    config,
    resolved,
    tasks: Sequence[ShardTask],
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[ShardResult]:
    """Convert `tasks`, yielding each shard's result as it completes (in completion order); each
    result carries what its worker built."""
    if not tasks:
        return
    workers, parallelism = plan_workers(config, resolved, len(tasks))
    threads = max(1, (os.cpu_count() or 1) // workers)
    placements = place_workers(resolved.device, workers, isolate=parallelism == "process" and workers > 1)
    log.info("local engine: %d %s worker(s), %d thread(s) each, on %s", workers,
             "in-process" if workers == 1 else parallelism, threads, [p.device for p in placements])
    if workers == 1:
        from resize_pipeline.runner import ShardRunner, TaskQueue

        runner = ShardRunner(config, resolved, placements[0], os.cpu_count() or 1)
        yield from runner.run(TaskQueue.of(tasks), on_progress)
        return
    yield from _run_pool(config, resolved, tasks, workers, parallelism, threads, placements, on_progress)


def _run_pool(config, resolved, tasks, workers, parallelism, threads, placements, on_progress):
    """Workers in threads or processes; each gets its shards through its own inbox (two queued).

    Worker processes report through their own pipe (never a shared queue: a process killed while
    writing to a shared queue would leave its lock held and hang the others), and their death is
    seen at once through the process sentinel.
    """
    shared: queue.Queue = queue.Queue()  # thread workers' reports
    ctx = _mp_context() if parallelism == "process" else None

    def start(wid: int) -> _Slot:
        if ctx is not None:
            inbox = ctx.SimpleQueue()
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=worker_main, name=f"convert-{wid}", daemon=True,
                            args=(wid, config, resolved, placements[wid], threads, inbox, _PipeOutbox(send),
                                  os.getpid()))
            p.start()
            send.close()  # the child holds the write end: EOF here when it dies
            return _Slot(wid, p, inbox, recv)
        inbox = queue.Queue()
        t = threading.Thread(target=worker_main, name=f"convert-{wid}", daemon=True,
                             args=(wid, config, resolved, placements[wid], threads, inbox, shared))
        t.start()
        return _Slot(wid, t, inbox)

    pending: deque[ShardTask] = deque(tasks)
    attempts: dict[int, int] = {t.index: 1 for t in tasks}
    slots = [start(w) for w in range(workers)]
    remaining = len(tasks)

    def assign(slot: _Slot) -> None:
        while pending and len(slot.tasks) < WINDOW:
            t = pending.popleft()
            slot.tasks[t.index] = t
            slot.inbox.put(t)

    def lost(slot: _Slot, why: str) -> Iterator[ShardResult]:
        """A worker died: replace it and run its shards again (or record them, past the attempts)."""
        nonlocal remaining
        log.warning("a worker process died (worker %d: %s); restarting it and its %d shard(s)",
                    slot.wid, why, len(slot.tasks))
        for t in sorted(slot.tasks.values(), key=lambda t: t.index, reverse=True):
            attempts[t.index] += 1
            if attempts[t.index] > SHARD_ATTEMPTS:
                res = failed_shard(t, f"a worker process died while converting it ({why})")
                remaining -= 1
                if on_progress:
                    on_progress(res.total)
                yield res
            else:
                pending.appendleft(t)
        if slot.conn is not None:
            slot.conn.close()
        slots[slot.wid] = start(slot.wid)
        assign(slots[slot.wid])

    def messages(timeout: float) -> Iterator[tuple[_Slot, Any]]:
        """(slot, message) pairs ready within `timeout`; message None = the worker process is gone."""
        if ctx is None:
            try:
                kind, wid, payload = shared.get(timeout=timeout)
            except queue.Empty:
                return
            yield slots[wid], (kind, wid, payload)
            return
        from multiprocessing.connection import wait

        by_conn = {s.conn: s for s in slots}
        by_sentinel = {s.handle.sentinel: s for s in slots if not s.exited}
        for ready in wait(list(by_conn) + list(by_sentinel), timeout):
            slot = by_conn.get(ready)
            if slot is not None:
                try:
                    yield slot, slot.conn.recv()
                except (EOFError, OSError):
                    if not slot.exited:
                        yield slot, None
            else:
                slot = by_sentinel[ready]
                if slots[slot.wid] is not slot or slot.exited:
                    continue  # already handled through its pipe
                try:
                    if slot.conn.poll():
                        continue  # its last reports come through the pipe first
                except OSError:
                    continue
                yield slot, None

    for s in slots:
        assign(s)
    try:
        while remaining:
            for slot, msg in messages(0.5):
                if slots[slot.wid] is not slot:
                    continue  # a report of a worker already replaced
                if msg is None:
                    yield from lost(slot, f"exit code {slot.handle.exitcode}")
                    continue
                kind, _, payload = msg
                if kind == "result":
                    slot.tasks.pop(payload.index, None)
                    remaining -= 1
                    if on_progress:
                        on_progress(payload.total)
                    yield payload
                    assign(slot)
                elif kind == "error":
                    raise OutputError(f"a worker could not start: {payload}")
                elif kind == "fatal":
                    raise OutputError(payload)
                elif kind == "crash":
                    slot.exited = True
                    log.error("worker %d crashed:\n%s", slot.wid, payload)
                    yield from lost(slot, payload.strip().splitlines()[-1])
                elif kind == "exit":
                    slot.exited = True
    finally:
        # stopped from outside (lock taken over, SIGTERM) or abandoned by the driver: end the worker
        # processes now rather than let them finish (and commit) their shards
        stopped = isinstance(sys.exc_info()[1], GeneratorExit | JobStopped)
        for s in slots:
            try:
                s.inbox.put(None)
            except (OSError, ValueError):
                pass
        deadline = time.time() + (0 if stopped else 10)
        for s in slots:
            s.handle.join(max(0.1, deadline - time.time()))
            if ctx is not None and s.handle.is_alive():
                s.handle.terminate()
            if s.conn is not None:
                s.conn.close()


class _PipeOutbox:
    """A worker process's end of its report pipe, with a queue's ``put``."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def put(self, msg) -> None:
        self.conn.send(msg)
