"""`ShardRunner`: one worker's body, whatever schedules it (in-process, a thread, a worker process or
a Ray actor). Built once per worker, it owns the stages, the shard writers and the failure policy.

It converts a *stream* of shard tasks: batches flow from the reader through decode/resize/encode to
the writers without draining at shard boundaries (batch k+1 of the next shard is read while this
shard's last batch encodes); every batch carries its shard, and a shard is committed (its files,
then its input record ``_inputs/{shard}.parquet``: every input it took, written or failed, then its
stats file) when its last batch is written. Shards stay the unit of retry, resume and
atomic commit:

The typed error policy (`errors.error_kind`):

- a per-sample failure is an error row (`batch.fail`), recorded in the shard's stats;
- an exception inside a stage, or a write that still fails after the sink's own retries, fails the
  shard attempt: its partial files are dropped, the rest of its batches are skipped, and the shard
  is attempted again; the runner's `attempts.AttemptLedger` counts the attempts (shared with the
  engine, which also counts dead workers) and after the last one its inputs are recorded as failed
  (stage ``shard``, no stats file: a rerun attempts it again);
- a device fault (`errors.DeviceFault`: a CUDA error, GPU out of memory, a DALI device failure)
  ends the runner: every open shard attempt is dropped and `run` raises it; the engine ends the
  worker and attempts its shards again elsewhere (a sticky CUDA error poisons the whole process);
- a job-level error (`ResizePipelineError`, e.g. the destination is full) stops the stream.

`ShardService` runs a runner on a background thread, fed by `submit(task) -> Future`: what a Ray
actor (whose calls arrive one by one) and a worker process use.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline import formats
from resize_pipeline.attempts import FORWARDED, AttemptLedger
from resize_pipeline.devices import Placement
from resize_pipeline.errors import DeviceFault, ResizePipelineError, error_record, is_device_fault
from resize_pipeline.layout import inputs_name, stats_name
from resize_pipeline.shards import ShardResult, ShardTask
from resize_pipeline.sinks import RollingShardWriter, Sample
from resize_pipeline.sinks.dest import Dest, is_full
from resize_pipeline.stream import IDLE, Attempt, Work, chain
from resize_pipeline.urls import is_remote_url

log = logging.getLogger(__name__)

#: the batch columns a written sample is made of (`ShardRunner._write`)
#: per-sample columns saying which way a stage went where it had a choice (`ShardResult.paths`)
PATH_COLUMNS = ("decoded_by", "resized_by")
_WRITE_COLUMNS = ("key", "url", "payload", "width", "height", "orig_width", "orig_height", "label",
                  "label_name", "meta")
#: the batch columns a shard's input record keeps (`generations.records.RECORD_COLUMNS`)
_RECORD_COLUMNS = ("key", "url", "offset", "length", "row", "label", "stamp")


class TaskQueue:
    """Shard tasks for a runner: `put` them, `close` when no more will come."""

    def __init__(self, tasks: list[ShardTask] | None = None, *, closed: bool = False) -> None:
        self._items: deque[Any] = deque(tasks or [])
        self._cond = threading.Condition()
        self._closed = closed

    def put(self, task: ShardTask) -> None:
        with self._cond:
            self._items.append(task)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @classmethod
    def of(cls, tasks) -> TaskQueue:
        return cls(list(tasks), closed=True)


class _Feed:
    """Works for the stream: retries first, then new tasks; `IDLE` once before waiting for more.

    Each shard taken starts an attempt in the ledger (``ledger.start``). Ends when the queue is
    closed and every task taken has finished (committed, finally failed, or handed back).
    """

    def __init__(self, tasks: TaskQueue, batch_size: int, ledger) -> None:
        self.tasks, self.batch_size, self.ledger = tasks, batch_size, ledger
        self._retries: deque[ShardTask] = deque()
        self._open = 0  # tasks taken and not finished
        self._attempts = itertools.count(1)  # this runner's attempt ids (keys of its open shards)

    def retry(self, task: ShardTask) -> None:
        with self.tasks._cond:
            self._retries.append(task)
            self.tasks._cond.notify_all()

    def finished(self) -> None:
        with self.tasks._cond:
            self._open -= 1
            self.tasks._cond.notify_all()

    def _take(self) -> ShardTask | None:
        """The next task if one is ready; call with the lock held."""
        if self._retries:
            return self._retries.popleft()
        if self.tasks._items:
            self._open += 1
            return self.tasks._items.popleft()
        return None

    def _ended(self) -> bool:
        return self.tasks._closed and self._open == 0 and not self._retries and not self.tasks._items

    def __iter__(self) -> Iterator[Any]:
        cond = self.tasks._cond
        while True:
            with cond:
                task = self._take()
                if task is None and self._ended():
                    return
            if task is None:
                yield IDLE  # let lagged steps finish what they hold, then wait for more
                with cond:
                    while not (self._retries or self.tasks._items or self._ended()):
                        cond.wait(timeout=1.0)
                continue
            self.ledger.start(task)
            attempt, state = next(self._attempts), Attempt()
            starts = list(range(0, task.size, self.batch_size)) or [0]
            for seq, s in enumerate(starts):
                last = seq == len(starts) - 1
                if state.failed and not last:
                    continue  # the runner gave up on this attempt: only its end marker still travels
                yield Work(task, attempt, seq, last, task.batch(s, s + self.batch_size), state=state)


@dataclass
class _Shard:
    """A shard attempt being written."""

    task: ShardTask
    attempt: int
    writers: list[RollingShardWriter]
    t0: float = field(default_factory=time.perf_counter)
    errors: list[dict[str, str]] = field(default_factory=list)
    written: int = 0
    #: per path column (`PATH_COLUMNS`), how many of its samples went each way
    paths: dict[str, Counter] = field(default_factory=dict)
    #: shared with the attempt's works: once failed, its remaining batches skip every step
    state: Attempt = field(default_factory=Attempt)
    #: per batch, the columns of the shard's input record (`generations.records.shard_record`)
    inputs: list[dict[str, Any]] = field(default_factory=list)


class ShardRunner:
    """Converts shard tasks into committed shards; built once per worker.

    Args:
        config: the job's `ConvertConfig`.
        resolved: the driver's `preflight.Resolved` decisions (decoder, device, precision).
        placement: where this worker runs (``cpu`` or its GPU as it sees it).
        threads: CPU threads this worker may use (the engine divides the cores among workers).
        ledger: the `attempts.AttemptLedger` counting shard attempts (the engine's, shared with its
            other workers; a worker process gets a `attempts.ForwardingLedger` reporting to the
            driver's); default: a ledger of its own with ``config.shard_attempts``.
    """

    def __init__(self, config, resolved, placement: Placement | None = None, threads: int = 1,
                 ledger=None) -> None:
        from resize_pipeline.pipeline import build_stages

        self.config, self.resolved = config, resolved
        self.ledger = ledger if ledger is not None else AttemptLedger(config.shard_attempts)
        self.placement = placement or Placement("cpu", {})
        self.dest = Dest(config.dest, config.storage_options, io_timeout=config.io_timeout)
        self.stages = build_stages(config, resolved, self.placement.device, max(1, threads))
        self.overlap = should_overlap(config, resolved)
        self.built = dict(self.stages.built, pid=os.getpid(), overlap=self.overlap,
                          cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
        log.info("worker %d built %s", os.getpid(), self.built)

    def run(self, tasks: TaskQueue, on_progress: Callable[[int], None] | None = None) -> Iterator[ShardResult]:
        """Yield each shard's result as it is committed (or finally fails), until `tasks` is closed
        and drained."""
        feed = _Feed(tasks, self.config.batch_size, self.ledger)
        open_: dict[tuple[int, int], _Shard] = {}
        counted: dict[int, int] = {}  # progress reported per shard, so retries never count twice

        def progress(task: ShardTask, n: int) -> None:
            if on_progress is None:
                return
            before = counted.get(task.index, 0)
            now = min(task.size, before + n)
            counted[task.index] = now
            if now > before:
                on_progress(now - before)

        def finish(shard: _Shard, result: ShardResult) -> ShardResult:
            progress(shard.task, shard.task.size)
            counted.pop(shard.task.index, None)
            feed.finished()
            return result

        for w in chain(feed, self.stages.steps, overlap=self.overlap):
            if w is IDLE:
                continue
            key = (w.task.index, w.attempt)
            shard = open_.get(key)
            if shard is None:
                shard = open_[key] = _Shard(w.task, w.attempt, [], state=w.state or Attempt())
            if not shard.state.failed:
                try:
                    if not shard.writers:
                        shard.writers = self._writers(w.task)
                    if w.error is not None:
                        raise w.error
                    self._write(shard, w.batch)
                    progress(w.task, len(w.batch["key"]))
                    if w.last:
                        del open_[key]
                        result = self._commit(shard)
                        self.ledger.done(w.task)
                        yield finish(shard, result)
                        continue
                except ResizePipelineError:
                    self._abort(shard)
                    raise
                except Exception as exc:  # noqa: BLE001 - the shard attempt fails; retried or recorded below
                    if is_full(exc):  # DEST (or the local spool) filled its disk: no retry can help
                        self._abort(shard)
                        raise self.dest.full(f"writing shard {w.task.name}", exc) from exc
                    if is_device_fault(exc):  # the typed error policy: this worker is done for
                        for other in open_.values():
                            other.state.failed = True
                            self._abort(other)
                        log.error("worker %d: device fault in shard %s (%s: %s); the worker stops", os.getpid(),
                                  w.task.name, type(exc).__name__, exc)
                        raise exc if isinstance(exc, DeviceFault) else DeviceFault(
                            f"{type(exc).__name__}: {exc}") from exc
                    shard.state.failed = True  # its remaining batches are skipped as they arrive
                    self._abort(shard)
                    outcome = self.ledger.fail(w.task, exc, self.built)
                    if outcome is None:
                        feed.retry(w.task)
                    elif outcome is FORWARDED:  # a worker process: the driver attempts it again or records it
                        counted.pop(w.task.index, None)
                        feed.finished()
                    else:
                        yield finish(shard, outcome)
            if w.last:
                open_.pop(key, None)

    def _writers(self, task: ShardTask) -> list[RollingShardWriter]:
        c = self.config
        options = {"row_group_size": c.row_group_size, "classes": task.classes}
        return [RollingShardWriter(self.dest, task.name, fmt, formats.get(fmt).load("writer"), c.max_shard_bytes,
                                   options) for fmt in c.formats]

    def _write(self, shard: _Shard, batch: dict) -> None:
        # The hot path of a GPU worker (~20k samples/s through one process, under the GIL): columns
        # become Python lists once per batch, not element by element.
        ext, writers = self.config.encode, shard.writers
        for name in PATH_COLUMNS:
            if name in batch:
                counts = shard.paths.setdefault(name, Counter())
                counts.update(v for v in batch[name].tolist() if v)
        cols = {k: batch[k].tolist() for k in _WRITE_COLUMNS}
        errors = batch["error"].tolist()
        shard.inputs.append({**{c: batch[c] for c in _RECORD_COLUMNS}, "sha256": batch.get("sha256"),
                             "written": [not e for e in errors], "stage": batch["error_stage"]})
        for i, err in enumerate(errors):
            if err:
                shard.errors.append(error_record(
                    key=str(cols["key"][i]), source=str(cols["url"][i]), stage=str(batch["error_stage"][i]),
                    exc=str(err), error_type=str(batch["error_type"][i]),
                ))
                continue
            sample = Sample(str(cols["key"][i]), cols["payload"][i], ext, int(cols["width"][i]),
                            int(cols["height"][i]), int(cols["orig_width"][i]), int(cols["orig_height"][i]),
                            str(cols["url"][i]), int(cols["label"][i]), str(cols["label_name"][i]),
                            str(cols["meta"][i]))
            for writer in writers:
                writer.write(sample)
            shard.written += 1

    def _commit(self, shard: _Shard) -> ShardResult:
        from resize_pipeline.generations.records import shard_record, write_table

        files = [f.to_dict() for w in shard.writers for f in w.close()]
        t = shard.task
        # what the shard took, before its stats: a shard with stats always has its input record
        record = write_table(self.dest, shard_record(shard.inputs), *inputs_name(t.name))
        result = ShardResult(t.index, t.name, t.size, shard.written, len(shard.errors), files,
                             shard.errors, time.perf_counter() - shard.t0, self.built,
                             {k: dict(sorted(v.items())) for k, v in sorted(shard.paths.items()) if v}, record)
        self.dest.write_json(result.to_dict(), *stats_name(t.name))
        return result

    @staticmethod
    def _abort(shard: _Shard) -> None:
        for w in shard.writers:
            try:
                w.abort()
            except Exception:  # noqa: BLE001 - best effort cleanup, the original error matters
                pass


def should_overlap(config, resolved) -> bool:
    """``--overlap`` / ``--no-overlap``, else auto: overlap the steps in threads when one waits on
    something other than this process's CPU — a GPU (DALI mixed decode, the CNN on CUDA) or a remote
    source (s3, gs, http).

    Measured on the 2-core CPU box (docs/benchmarks.md): with CPU-bound Pillow stages, overlapping
    threads only oversubscribe the cores, so it is off there.
    """
    if config.overlap is not None:
        return bool(config.overlap)
    return resolved.uses_gpu or is_remote_url(config.source)


class ShardService:
    """A `ShardRunner` on a background thread: `submit(task)` returns a Future of its `ShardResult`.

    A job-level error (`ResizePipelineError`) or a crash of the stream fails every pending and
    later future with that error.
    """

    def __init__(self, runner: ShardRunner) -> None:
        self.runner = runner
        self.tasks = TaskQueue()
        self._futures: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="shard-service", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            for result in self.runner.run(self.tasks):
                with self._lock:
                    fut = self._futures.pop(result.index, None)
                if fut is not None:
                    fut.set_result(result)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
            with self._lock:
                self._error = exc
                pending, self._futures = list(self._futures.values()), {}
            for fut in pending:
                fut.set_exception(exc)

    def submit(self, task: ShardTask) -> Future:
        """Queue `task` on the runner's stream; a Future of its result."""
        fut: Future = Future()
        with self._lock:
            if self._error is not None:
                fut.set_exception(self._error)
                return fut
            self._futures[task.index] = fut
        self.tasks.put(task)
        return fut

    def close(self, timeout: float | None = None) -> None:
        self.tasks.close()
        self._thread.join(timeout)
