"""Local engine: shard tasks over a process or thread pool on one machine.

Each worker builds the `ConvertStage` once and converts whole shards (the img2dataset model: one
task per shard, so a shard is the unit of retry and resume). ``workers=1`` runs in-process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    BrokenExecutor,
    Executor,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)

from fsspec.core import url_to_fs

from resize_pipeline.errors import error_record
from resize_pipeline.shards import ShardResult, ShardTask, run_shard
from resize_pipeline.stages import ConvertStage

log = logging.getLogger(__name__)

_worker: dict = {}
_local = threading.local()


def _exit_with_parent(parent: int) -> None:
    # A SIGKILLed job leaves its pool workers blocked on the task queue forever (they hold its write end
    # too, so never see EOF): follow the parent. An unfinished shard leaves only a temp file, which the
    # rerun removes.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_process(config, threads_per_worker: int, parent: int | None = None) -> None:
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_worker))
    if config.resizer.startswith("learned"):  # torch costs ~2 s and ~250 MB per worker: only when used
        try:
            import torch

            torch.set_num_threads(threads_per_worker)
        except ImportError:
            pass
    _worker["config"] = config
    _worker["stage"] = ConvertStage(config, threads=threads_per_worker)
    _worker["fs"], _worker["root"] = url_to_fs(config.dest, **config.storage_options)


def _run_in_process(task: ShardTask) -> ShardResult:
    return run_shard(task, _worker["stage"], _worker["config"], _worker["fs"], _worker["root"])


def _run_in_thread(task: ShardTask, config) -> ShardResult:
    if not hasattr(_local, "stage"):
        _local.stage = ConvertStage(config, threads=1)
        _local.fs, _local.root = url_to_fs(config.dest, **config.storage_options)
    return run_shard(task, _local.stage, config, _local.fs, _local.root)


SHARD_ATTEMPTS = 3


def failed_shard(task: ShardTask, exc: BaseException) -> ShardResult:
    """A shard that kept failing as a whole: every input is recorded as failed with the reason.

    No stats file is written for it, so a rerun tries it again."""
    log.error("shard %s failed %d times, its %d inputs are recorded as failed: %s: %s",
              task.name, SHARD_ATTEMPTS, len(task.items), type(exc).__name__, exc)
    errors = [error_record(key=it.key, source=it.url, stage="shard", exc=exc) for it in task.items]
    return ShardResult(task.index, task.name, len(task.items), 0, len(task.items), [], errors)


def _mp_context():
    """``fork`` where it is safe (Linux, no torch/DALI/CUDA state in this process): workers start ~5%
    faster on short jobs (docs/benchmarks.md); ``spawn`` otherwise (fork after CUDA or OpenMP init
    can hang the children)."""
    import sys

    heavy = ("torch", "nvidia.dali", "jax", "tensorflow")
    if sys.platform == "linux" and not any(m in sys.modules for m in heavy):
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _uses_gpu(config) -> bool:
    if config.device == "cpu" or (config.decoder == "pillow" and not config.resizer.startswith("learned")):
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _in_memory(url: str) -> bool:
    return url.startswith("memory://")


def run_local(
    config,
    tasks: Sequence[ShardTask],
    on_done: Callable[[ShardResult], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[ShardResult]:
    """Convert `tasks`, yielding each shard's result as it completes (in completion order)."""
    workers = min(config.num_workers, max(1, len(tasks)))
    if not config.workers and _uses_gpu(config):
        # one process owns the GPU (one CUDA context, one DALI pipeline, the CNN batched there);
        # its stages overlap in threads. Ask for more with --workers.
        workers = 1
    parallelism = config.parallelism
    if workers > 1 and parallelism == "process" and (_in_memory(config.source) or _in_memory(config.dest)):
        log.info("memory:// lives in one process: using threads instead of processes")
        parallelism = "thread"
    if workers == 1:
        stage = ConvertStage(config, threads=os.cpu_count() or 1)
        fs, root = url_to_fs(config.dest, **config.storage_options)
        for task in tasks:
            for attempt in range(SHARD_ATTEMPTS):
                try:
                    yield run_shard(task, stage, config, fs, root, on_progress)
                    break
                except Exception as exc:  # noqa: BLE001 - shard-level failure: retry, then record
                    if attempt + 1 == SHARD_ATTEMPTS:
                        yield failed_shard(task, exc)
                    else:
                        log.warning("shard %s failed (%s: %s); retrying", task.name, type(exc).__name__, exc)
        return

    def make_pool() -> tuple[Executor, Callable]:
        pool: Executor
        if parallelism == "process":
            threads = max(1, (os.cpu_count() or 1) // workers)
            pool = ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_init_process,
                                       initargs=(config, threads, os.getpid()))
            return pool, lambda t: pool.submit(_run_in_process, t)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="convert")
        return pool, lambda t: pool.submit(_run_in_thread, t, config)

    pool, submit = make_pool()
    # bounded in-flight window: memory stays flat however many shards there are
    queue = list(tasks)[::-1]
    running: dict = {}  # future -> (task, attempt)
    try:
        while queue or running:
            while queue and len(running) < 2 * workers:
                task = queue.pop()
                running[submit(task)] = (task, 1)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                if fut not in running:  # belonged to a pool replaced below
                    continue
                task, attempt = running.pop(fut)
                try:
                    res = fut.result()
                except BrokenExecutor as exc:
                    # a worker process died (OOM killer, a decoder crash): every shard in flight is
                    # lost with it. Start a new pool and run them again; a shard present at
                    # SHARD_ATTEMPTS such deaths is recorded as failed (it may be what kills them).
                    lost = [(task, attempt)] + list(running.values())
                    running.clear()
                    log.warning("a worker process died (%s); restarting the pool and %d shard(s)", exc, len(lost))
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool, submit = make_pool()
                    for t, a in lost:
                        if a < SHARD_ATTEMPTS:
                            running[submit(t)] = (t, a + 1)
                        else:
                            res = failed_shard(t, RuntimeError(f"a worker process died while converting it ({exc})"))
                            if on_progress:
                                on_progress(res.total)
                            yield res
                    break  # the rest of `done` belongs to the old pool
                except Exception as exc:  # noqa: BLE001 - shard-level failure: retry, then record
                    if attempt < SHARD_ATTEMPTS:
                        log.warning("shard %s failed (%s: %s); retrying", task.name, type(exc).__name__, exc)
                        running[submit(task)] = (task, attempt + 1)
                        continue
                    res = failed_shard(task, exc)
                if on_progress:
                    on_progress(res.total)
                yield res
    except BaseException:
        for fut in running:
            fut.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
