"""Local engine: `ShardRunner` workers on one machine, in-process, in threads or in processes.

The engine only schedules: each worker builds one `ShardRunner` and streams the shards it is given
(two in flight per worker, so its stream never drains between shards). Tasks arrive as a stream
(`shards.TaskStream`: the planner releases each listing part's shards as the listing is read), so
the first shard starts while SOURCE is still being listed. ``workers=1`` runs in this
process. On a GPU job the default is, for each visible GPU, one worker process per four cores of its
share (`CORES_PER_GPU_WORKER`), each process seeing only its GPU (``CUDA_VISIBLE_DEVICES``).

Every worker, whatever it is, counts shard attempts in the driver's one `attempts.AttemptLedger`
(cap: ``--shard-attempts``): a failed stage (the runner attempts the shard again), a device fault
(`errors.DeviceFault`: the worker is ended and replaced: a new runner in-process, a new thread, a new
process; its running shards are attempted again), a worker process that dies (the OOM killer, a
crash in a native decoder: replaced the same way). A shard that used up its attempts is recorded as
failed (stage ``shard``, no stats: a rerun attempts it again). The Ray engine counts in the same
interface (`workers.gate.GateLedger`).
"""

from __future__ import annotations

import contextlib
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

from resize_pipeline.attempts import AttemptLedger, ForwardingLedger
from resize_pipeline.devices import Placement, gpu_count, gpu_memory_mib, parse_device, place_workers
from resize_pipeline.errors import DeviceFault, JobStopped, OutputError, ResizePipelineError
from resize_pipeline.shards import ShardResult, ShardTask, TaskStream
from resize_pipeline.urls import is_in_process_url

log = logging.getLogger(__name__)

#: shards queued to a worker at once: one converting, one ready to stream in behind it
WINDOW = 2
#: worker processes in a row that die before reporting anything, after which the job stops
UNBORN_LIMIT = 3


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _exit_with_parent(driver: int) -> None:
    # A SIGKILLed job leaves its workers blocked on their queues forever: follow the driver. A worker
    # process's parent is the driver (spawn) or the fork server, which ends with the driver
    # (forkserver): exit when the parent changes or the driver is gone. An unfinished shard leaves
    # nothing visible (parts are spooled locally), a temp file at worst.
    parent = os.getppid()
    while os.getppid() == parent:
        try:
            os.kill(driver, 0)
        except ProcessLookupError:
            break
        except PermissionError:  # alive, another user's (a reused pid is not ours to judge)
            pass
        time.sleep(0.5)
    os._exit(1)


def worker_main(wid: int, config, resolved, placement: Placement, threads: int, inbox, outbox,
                parent: int | None = None, ledger=None) -> None:
    """A worker: build a `ShardRunner`, stream the tasks that arrive in `inbox` (None ends), report
    ``(kind, wid, payload)`` messages to `outbox`: ready (built), result, started/failed (a worker
    process's shard attempts, for the driver's ledger), fatal (job-level error), error (could not
    start), device (a device fault ended it), crash (a bug), exit.

    `parent` is set in a worker process (which then reports its attempts to the driver); a thread
    worker shares the driver's `ledger`. A device fault ends a worker process for good (``os._exit``:
    a sticky CUDA error leaves nothing in it worth saving)."""
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()
        os.environ.update(placement.env)  # before anything imports CUDA
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        ledger = ForwardingLedger(lambda kind, payload: outbox.put((kind, wid, payload)))
    from resize_pipeline.runner import ShardRunner, TaskQueue

    try:
        runner = ShardRunner(config, resolved, placement, threads, ledger=ledger)
    except BaseException as exc:  # noqa: BLE001 - reported to the driver
        outbox.put(("error", wid, _one_line(exc)))
        return
    outbox.put(("ready", wid, None))
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
    except DeviceFault as exc:
        outbox.put(("device", wid, _one_line(exc)))
        if parent is not None:
            os._exit(3)  # the process is done for (its CUDA context may be poisoned); the driver replaces it
        return
    except BaseException:  # noqa: BLE001 - a bug: the driver treats it like a dead worker
        outbox.put(("crash", wid, traceback.format_exc()))
        return
    outbox.put(("exit", wid, None))


#: what every CPU worker imports (none imports torch, DALI or CUDA): the fork server imports them once
WORKER_MODULES = (
    "resize_pipeline.runner",
    "resize_pipeline.pipeline",
    "resize_pipeline.decode.pillow",
    "resize_pipeline.resize.classical",
    "resize_pipeline.encode",
    "resize_pipeline.sinks.webdataset",
    "resize_pipeline.sinks.parquet",
    "pyarrow.parquet",
)


def _mp_context():
    """Worker processes start from a clean process, never as a fork of the driver: the driver has
    threads of its own by then (the planner in pyarrow, the DEST lock's heartbeat, the progress bar),
    and a fork inherits every lock they hold at that instant, held forever in the child (a worker hung
    in Arrow's static initialisation on CI). ``forkserver`` on Linux: one clean, single-threaded server
    process, started once with the worker's modules imported, forks each worker (fast starts);
    ``spawn`` elsewhere, and where torch, DALI or another CUDA/OpenMP library is already imported (a
    server started from such a process could have imported them too: a fresh interpreter is safest)."""
    heavy = ("torch", "nvidia.dali", "jax", "tensorflow")
    if sys.platform == "linux" and not any(m in sys.modules for m in heavy):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(WORKER_MODULES))
        return ctx
    return mp.get_context("spawn")


@contextlib.contextmanager
def _caller_main_hidden() -> Iterator[None]:
    """While a worker process is started: `__main__` without its file and module name, so that the
    worker does not run the caller's script again (what ``spawn`` and ``forkserver`` do by default, to
    rebuild objects defined there). A worker runs our code only, on arguments of our types; a script
    that calls `convert` without an ``if __name__ == "__main__":`` guard would otherwise convert again
    in every worker (and stop there, on multiprocessing's bootstrapping error)."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def start_early(config) -> None:
    """Start the fork server now, at the start of a job that will likely want worker processes: the
    server imports the worker's modules while this process lists SOURCE and takes DEST (a fresh
    interpreter's imports: ~0.25 s of a short job otherwise waited for at the first worker's start)."""
    if config.parallelism != "process" or config.num_workers < 2:
        return
    if is_in_process_url(config.source) or is_in_process_url(config.dest):
        return
    if _mp_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


#: on a GPU job, one worker process per this many CPU cores of each GPU's share: one process's host
#: side (read, probe, encode, write) is capped by its GIL near 3k img/s on the 2-core sandbox (1 -> 2
#: threads: 0.84x; 1 -> 2 processes: 1.83x, docs/benchmarks.md), far below what one GPU decodes, so a
#: GPU is fed by several processes (each its own CUDA context, DALI pipeline and CNN), as many as its
#: memory holds (`processes_per_gpu`)
CORES_PER_GPU_WORKER = 4
#: share of a GPU's memory the worker processes on it may plan to use together
GPU_MEMORY_SHARE = 0.8
#: the parts of one worker process's GPU memory (MiB) that do not scale with the batch. ESTIMATES, not
#: measured: the first GPU run (`benchmarks/gpu_suite.py`, rows "convert ..., N processes per GPU":
#: peak device memory per process) settles them
CUDA_CONTEXT_MIB = 600  # the CUDA context with torch's and DALI's kernels loaded
CUDNN_WORKSPACE_MIB = 256
DALI_FIXED_MIB = 256  # nvJPEG handles and padding (16 MiB per buffer), DALI's pools' slack
#: decoded pixels per image DALI holds (full-size decode, ~1 MP ImageNet-like inputs, RGB), and the
#: learned resizer's live activations per input pixel (16 channels fp16, ~3 live tensors, the float
#: input): bytes
DALI_DECODED_BYTES = 1_500_000 * 3
CNN_BYTES_PER_INPUT_PIXEL = 16 * 2 * 3 + 3 * 4


def estimate_worker_gpu_mib(config, resolved) -> dict[str, int]:
    """An estimate of one worker process's GPU memory (MiB), by part; see the constants above."""
    b = config.batch_size
    parts = {"cuda_context": CUDA_CONTEXT_MIB}
    if resolved.decoder == "dali-mixed":
        out_w, out_h = config.size
        scale = float(resolved.resizer.get("input_scale", 1.0)) if resolved.precision is not None else 1.0
        resized = out_w * out_h * scale * scale * 3
        # one run in flight + the batch handed to torch (decode outputs and the resized copy)
        parts["dali"] = DALI_FIXED_MIB + int(2 * b * (DALI_DECODED_BYTES + resized) / 2**20)
    if resolved.precision is not None:
        out_w, out_h = config.size
        scale = float(resolved.resizer.get("input_scale", 2.0))
        pixels = out_w * out_h * scale * scale
        parts["cnn"] = CUDNN_WORKSPACE_MIB + int(b * pixels * CNN_BYTES_PER_INPUT_PIXEL / 2**20)
    parts["total"] = sum(parts.values())
    return parts


def processes_per_gpu(config, resolved, gpus: int) -> int:
    """Worker processes per GPU on a GPU job: one per `CORES_PER_GPU_WORKER` cores of its share, at
    most as many as `GPU_MEMORY_SHARE` of its memory holds by `estimate_worker_gpu_mib` (logged)."""
    by_cores = max(1, (os.cpu_count() or 1) // gpus // CORES_PER_GPU_WORKER)
    total = gpu_memory_mib(0)
    estimate = estimate_worker_gpu_mib(config, resolved)
    if total is None:
        log.info("GPU memory unknown (no nvidia-smi): %d worker process(es) per GPU by cores; estimated %d MiB "
                 "each %s", by_cores, estimate["total"], estimate)
        return by_cores
    by_memory = max(1, int(total * GPU_MEMORY_SHARE // estimate["total"]))
    chosen = min(by_cores, by_memory)
    log.info("GPU memory %d MiB; one worker process estimated at %d MiB %s: %d process(es) fit, %d by cores: "
             "%d per GPU", total, estimate["total"], estimate, by_memory, by_cores, chosen)
    return chosen


def plan_workers(config, resolved, n_tasks: int) -> tuple[int, str]:
    """(worker count, ``process`` | ``thread``): one per CPU core; on a GPU job, for each GPU
    `processes_per_gpu` worker processes (at least one)."""
    workers = config.workers
    if not workers:
        if resolved.uses_gpu:
            _, index = parse_device(resolved.device)
            gpus = 1 if index is not None else max(1, gpu_count())
            workers = gpus * processes_per_gpu(config, resolved, gpus)
        else:
            workers = config.num_workers
    elif resolved.uses_gpu:
        _, index = parse_device(resolved.device)
        gpus = 1 if index is not None else max(1, gpu_count())
        total, est = gpu_memory_mib(0), estimate_worker_gpu_mib(config, resolved)["total"]
        if total is not None and -(-workers // gpus) * est > total * GPU_MEMORY_SHARE:
            log.warning("--workers %d puts %d process(es) on a GPU of %d MiB; each is estimated at %d MiB: "
                        "it may run out of GPU memory", workers, -(-workers // gpus), total, est)
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
        self.heard = False  # it reported something: it started


def run_local(
    config,
    resolved,
    tasks: TaskStream | Sequence[ShardTask],
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[ShardResult]:
    """Convert `tasks` (a stream, or a list), yielding each shard's result as it completes (in
    completion order); each result carries what its worker built."""
    stream = tasks if isinstance(tasks, TaskStream) else TaskStream.of(tasks)
    if not stream.expected:
        for _ in stream:  # nothing to convert (every shard complete); the stream still ends
            pass
        return
    workers, parallelism = plan_workers(config, resolved, stream.expected)
    threads = max(1, (os.cpu_count() or 1) // workers)
    placements = place_workers(resolved.device, workers, isolate=parallelism == "process" and workers > 1)
    log.info("local engine: %d %s worker(s), %d thread(s) each, on %s", workers,
             "in-process" if workers == 1 else parallelism, threads, [p.device for p in placements])
    ledger = AttemptLedger(config.shard_attempts)
    if workers == 1:
        yield from _run_in_process(config, resolved, stream, placements[0], ledger, on_progress)
        return
    yield from _run_pool(config, resolved, stream, workers, parallelism, threads, placements, ledger, on_progress)


def _run_in_process(config, resolved, stream: TaskStream, placement, ledger, on_progress):
    """One runner in this process, fed from `stream` as the planner releases shards. A device fault
    ends the runner: its running shards are charged an attempt, and a new runner (new DALI pipelines,
    a new CNN) takes what is left; if none can be built (the GPU is gone, or its context poisoned),
    the job stops with one line."""
    from resize_pipeline.runner import ShardRunner, TaskQueue

    first = stream.get()  # a runner is built only when there is something to convert
    if first is None:
        return
    lock = threading.Lock()
    outstanding = {first.index: first}  # taken from the stream, no result yet
    state: dict[str, Any] = {"queue": TaskQueue([first]), "ended": False}

    def pump() -> None:
        try:
            for t in stream:
                with lock:
                    outstanding[t.index] = t
                    state["queue"].put(t)
        finally:
            with lock:
                state["ended"] = True
                state["queue"].close()

    runner = ShardRunner(config, resolved, placement, os.cpu_count() or 1, ledger=ledger)
    threading.Thread(target=pump, daemon=True, name="task-pump").start()
    while True:
        try:
            for res in runner.run(state["queue"], on_progress):
                with lock:
                    outstanding.pop(res.index, None)
                yield res
            return
        except DeviceFault as exc:
            why = f"device fault: {_one_line(exc)}"
            with lock:
                running = sorted(outstanding.values(), key=lambda t: t.index)
            for t in running:
                final = ledger.fail(t, why) if ledger.running(t) else None
                if final is not None:
                    with lock:
                        outstanding.pop(t.index, None)
                    if on_progress:
                        on_progress(final.total)
                    yield final
        del runner
        with lock:  # the shards left, for the next runner (the pump adds later ones to its queue)
            state["queue"] = TaskQueue(sorted(outstanding.values(), key=lambda t: t.index), closed=state["ended"])
            left = len(outstanding)
        if not left and state["ended"]:
            return
        log.warning("the worker stopped on a device fault; building a new one for the %d shard(s) left", left)
        try:
            runner = ShardRunner(config, resolved, placement, os.cpu_count() or 1, ledger=ledger)
        except Exception as exc:  # noqa: BLE001 - said in one line: the device cannot be used any more
            raise OutputError(f"after a device fault ({why}) no worker could be built again ({_one_line(exc)}); "
                              "the shards completed so far are kept: rerun the same command to resume") from None


def _run_pool(config, resolved, stream: TaskStream, workers, parallelism, threads, placements, ledger, on_progress):
    """Workers in threads or processes; each gets its shards through its own inbox (two queued).

    Worker processes report through their own pipe (never a shared queue: a process killed while
    writing to a shared queue would leave its lock held and hang the others), and their death is
    seen at once through the process sentinel. Attempts are counted in `ledger` (thread workers use
    it directly; worker processes report ``started``/``failed`` and the driver keeps the count).
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
            with _caller_main_hidden():
                p.start()
            send.close()  # the child holds the write end: EOF here when it dies
            return _Slot(wid, p, inbox, recv)
        inbox = queue.Queue()
        t = threading.Thread(target=worker_main, name=f"convert-{wid}", daemon=True,
                             args=(wid, config, resolved, placements[wid], threads, inbox, shared, None, ledger))
        t.start()
        return _Slot(wid, t, inbox)

    pending: deque[ShardTask] = deque()
    slots = [start(w) for w in range(workers)]
    remaining = 0  # taken from the stream, not finished
    unborn = 0  # worker processes in a row that died before they reported anything

    def refill() -> None:
        """Take what the stream has released (never waits)."""
        nonlocal remaining
        while not stream.ended:
            try:
                t = stream.get(timeout=0)
            except queue.Empty:
                return
            if t is None:
                return
            pending.append(t)
            remaining += 1

    def assign_all() -> None:
        refill()  # shards the planner released since
        for slot in slots:
            while pending and len(slot.tasks) < WINDOW and not slot.exited:
                t = pending.popleft()
                slot.tasks[t.index] = t
                slot.inbox.put(t)

    def recorded(res: ShardResult) -> ShardResult:
        nonlocal remaining
        remaining -= 1
        if on_progress:
            on_progress(res.total)
        return res

    def lost(slot: _Slot, why: str) -> Iterator[ShardResult]:
        """A worker ended (died, crashed, or stopped on a device fault): its running shards are charged
        an attempt and attempted again (or recorded, past the cap), the ones it had not started are
        queued again, and a new worker takes its place. Worker processes that die as they start (a
        native library that crashes on import, a memory limit below what one worker needs) would be
        replaced forever: after `UNBORN_LIMIT` in a row the job stops, in one line."""
        nonlocal unborn
        unborn = 0 if slot.heard else unborn + 1
        if unborn >= UNBORN_LIMIT:
            raise OutputError(
                f"worker processes die as they start ({why}; {unborn} in a row, before converting anything): "
                "see the log above; --workers 1 runs the job in this process. The shards completed so far "
                "are kept: rerun the same command to resume")
        log.warning("%s (worker %d: %s); replacing it; its %d shard(s) are attempted again",
                    "a worker stopped" if why.startswith("device fault") else "a worker process died",
                    slot.wid, why, len(slot.tasks))
        for t in sorted(slot.tasks.values(), key=lambda t: t.index, reverse=True):
            res = ledger.fail(t, f"the worker converting it ended ({why})") if ledger.running(t) else None
            if res is not None:
                yield recorded(res)
            else:
                pending.appendleft(t)
        slot.tasks.clear()
        slot.exited = True
        if slot.conn is not None:
            slot.conn.close()
        slots[slot.wid] = start(slot.wid)
        assign_all()

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

    assign_all()
    try:
        while remaining or not stream.ended:
            assign_all()
            for slot, msg in messages(0.5 if remaining else 0.05):
                if slots[slot.wid] is not slot:
                    continue  # a report of a worker already replaced
                if msg is not None:
                    slot.heard = True
                if msg is None:
                    slot.handle.join(1)  # its pipe closed as it died: reap it, for its exit code
                    yield from lost(slot, f"exit code {slot.handle.exitcode}")
                    continue
                kind, _, payload = msg
                if kind == "result":
                    task = slot.tasks.pop(payload.index, None)
                    if task is not None:
                        ledger.done(task)
                    yield recorded(payload)
                    assign_all()
                elif kind == "started":  # a worker process began an attempt (thread workers count themselves)
                    if payload in slot.tasks:
                        ledger.start(slot.tasks[payload])
                elif kind == "failed":  # a worker process's attempt failed: attempt it again, or record it
                    index, why = payload
                    task = slot.tasks.pop(index, None)
                    if task is not None:
                        res = ledger.fail(task, why)
                        if res is not None:
                            yield recorded(res)
                        else:
                            pending.appendleft(task)
                        assign_all()
                elif kind == "error":
                    raise OutputError(f"a worker could not start: {payload}")
                elif kind == "fatal":
                    raise OutputError(payload)
                elif kind == "device":
                    log.error("worker %d stopped on a device fault: %s", slot.wid, payload)
                    yield from lost(slot, f"device fault: {payload}")
                elif kind == "crash":
                    log.error("worker %d crashed:\n%s", slot.wid, payload)
                    yield from lost(slot, payload.strip().splitlines()[-1])
                elif kind == "exit":
                    slot.exited = True
                # "ready": the worker is built (`slot.heard`, above)
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
    """A worker process's end of its report pipe, with a queue's ``put``; safe from several threads
    (the stream's feed thread reports attempts while the runner's thread reports results)."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"conn": self.conn}

    def __setstate__(self, state: dict) -> None:
        self.conn, self._lock = state["conn"], threading.Lock()

    def put(self, msg) -> None:
        with self._lock:
            self.conn.send(msg)
