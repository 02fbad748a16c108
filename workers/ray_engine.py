"""Ray engine: the conversion as a Ray Data streaming job, one task per shard (img2dataset's Ray model).

    from_items(shard-task rows) -> map_batches(ShardConverter, batch_size=1, actor pool) -> iter_rows

Each actor builds one `ShardRunner` and streams the shards it is given (two calls run at once per
actor, so the next shard flows in behind the current one): each shard is written straight into DEST
(any fsspec URL) and committed atomically, its stats file last, and only the small `ShardResult`
comes back to the driver. Ray Data does the scheduling, backpressure and retries: actors
are restarted when they die (``max_restarts``) and their in-flight shard is run again
(``max_task_retries``); since a shard's output is deterministic and only visible once complete, a
killed actor costs no sample. A shard that *raises* (a write error) is retried in the actor, then its
inputs are recorded as failed, as in the local engine. A killed *job* resumes on rerun from the completed shards
(`resize_pipeline.conversion.convert` filters them before calling `run_ray`).

The process that iterates the dataset is Ray Data's driver: this process when it is part of the
cluster (a local cluster, ``--address auto``, a job started by ``ray job submit``). Through Ray Client
(``ray://``) Ray Data cannot drive a dataset, so a small actor on the cluster (`_ClusterDriver`) does,
and this process polls it for finished shards.

Knobs (config fields and flags; the environment variables, read on the driver, override them, so
they also work through ``ray job submit``; ``--workers N`` sets the actor count):

- ``ray_gpus_per_actor`` / ``RESIZE_PIPELINE_RAY_GPUS_PER_ACTOR``: GPUs per actor (default, when the
  job uses a GPU: a share of one, one actor per 4 CPUs of the smallest GPU node's CPUs per GPU, e.g.
  0.25 on 16-CPU one-GPU nodes, since one process's host side is GIL-bound; else 0).
- ``ray_cpus_per_actor`` / ``RESIZE_PIPELINE_RAY_CPUS_PER_ACTOR``: CPUs reserved per actor, also its
  decode/torch thread count (default 1 on CPU-only clusters; on GPU clusters the CPUs per GPU of the
  smallest GPU node, at most 8).
- ``ray_max_task_retries`` / ``RESIZE_PIPELINE_RAY_MAX_TASK_RETRIES``: cap on the retries of a shard
  whose actor died. Ray Data's default (kept when unset) restarts actors and retries their tasks
  without limit; set a cap (e.g. 3) when an input could crash the decoder process itself, so that
  such a shard fails the job instead of looping (rerun resumes the rest).
- ``ray_ship_code`` / ``RESIZE_PIPELINE_RAY_SHIP_CODE``: ``1`` uploads this checkout's
  ``resize_pipeline`` and ``workers`` with the job (``py_modules``); default on for ``ray://`` client
  connections, off otherwise (a job submitted with ``--working-dir`` or an image with the package
  installed already has them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from resize_pipeline.engine.local import CORES_PER_GPU_WORKER
from resize_pipeline.errors import ConfigError, OutputError
from resize_pipeline.shards import ShardResult, ShardTask
from resize_pipeline.urls import is_in_process_url, is_local_url
from workers.actors import ShardConverter, encode_task, result_from_json

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class ActorPlan:
    """How many actors, and what each one reserves."""

    concurrency: int
    num_cpus: float
    num_gpus: float
    threads: int


def _code_dirs() -> list[str]:
    from resize_pipeline import version
    from workers import actors

    return [os.path.dirname(os.path.abspath(str(m.__file__))) for m in (version, actors)]


def connect(address: str | None, ship_code: bool | None = None) -> bool:
    """Use the running Ray instance, or ``ray.init(address)``; returns True when this call started it.

    ``None`` starts a local cluster (or joins ``RAY_ADDRESS``, as ``ray job submit`` sets it),
    ``"auto"`` joins the cluster of this machine, ``"ray://host:10001"`` connects a Ray Client.
    Workers find the code through `job_runtime_env`: ``PYTHONPATH`` for a cluster on this machine,
    ``py_modules`` for Ray Client; a submitted job brings its ``--working-dir``.
    """
    if ray.is_initialized():
        return False
    ray.init(address=address, runtime_env=job_runtime_env(address, ship_code))
    return True


def job_runtime_env(address: str | None, ship_code: bool | None = None) -> dict[str, Any] | None:
    """How this job's workers find the code: uploaded (``ray://``), or on this machine's paths."""
    client = address is not None and address.startswith("ray://")
    if ship_code or (ship_code is None and client):
        return {"py_modules": _code_dirs(), "excludes": ["__pycache__", "*.pyc"]}
    if ship_code is False or client or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return None  # a submitted job brings its working_dir / the image has the package
    # A cluster on this machine: Ray workers don't inherit the driver's sys.path, so point them at
    # the folders this process imported the code from (a checkout run without `pip install`).
    roots = sorted({os.path.dirname(d) for d in _code_dirs()})
    if os.environ.get("PYTHONPATH"):
        roots.append(os.environ["PYTHONPATH"])
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(roots)}}


def plan_actors(config, resolved, n_tasks: int) -> ActorPlan:
    """Actor count and resources from the cluster (GPUs first) and the overrides."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total_cpus = sum(n["Resources"].get("CPU", 0.0) for n in nodes)
    total_gpus = sum(n["Resources"].get("GPU", 0.0) for n in nodes)
    per_gpu = [n["Resources"].get("CPU", 0.0) / n["Resources"]["GPU"] for n in nodes
               if n["Resources"].get("GPU", 0.0) > 0]
    gpus, cpus = config.ray_gpus_per_actor, config.ray_cpus_per_actor
    if gpus is None:
        gpus = 1.0 if resolved.uses_gpu and total_gpus >= 1 else 0.0
        if gpus and cpus is None and per_gpu:
            # one process's host side is bounded by its GIL: as on the local engine, a GPU is shared
            # by one actor per CORES_PER_GPU_WORKER of its node's CPUs (fractional num_gpus)
            split = max(1, int(min(per_gpu)) // CORES_PER_GPU_WORKER)
            gpus, cpus = 1.0 / split, float(max(1, int(min(per_gpu)) // split))
    if cpus is None:
        if gpus > 0:
            cpus = float(max(1, min(8, int(min(per_gpu) * gpus)))) if per_gpu else 1.0
        else:
            cpus = 1.0
    if config.workers:
        concurrency = config.workers
    elif gpus > 0:
        concurrency = max(1, int(round(total_gpus / gpus, 6)))
    else:
        concurrency = max(1, int(total_cpus // max(cpus, 1e-3)))
    concurrency = max(1, min(concurrency, n_tasks))
    return ActorPlan(concurrency, cpus, gpus, max(1, int(round(cpus))))


def _strategy(size: int):
    """A fixed pool; two calls run at once per actor (each submits its shard to the actor's stream and
    waits), so the next shard streams in behind the current one. Ray < 2.5x lacks those arguments:
    one call at a time then (the stream drains between shards)."""
    try:
        return ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=2,
                                          max_concurrent_calls_per_actor=2, enable_true_multi_threading=True)
    except TypeError:
        return ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=2)


def build_dataset(config, resolved, tasks: Sequence[ShardTask], plan: ActorPlan):
    """The lazy Ray Dataset: one row (and one block) per shard task, mapped by the actor pool."""
    rows = [encode_task(t) for t in tasks]
    # one block per shard: a map task then carries exactly one shard, so shards balance across actors
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    retries = config.ray_max_task_retries
    extra: dict[str, Any] = {}
    if retries is not None:
        # not a named map_batches parameter (yet): passed through Ray's remote args
        extra = {"max_restarts": -1, "max_task_retries": retries}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ds.map_batches(
            ShardConverter,
            fn_constructor_kwargs={"config": config, "resolved": resolved, "threads": plan.threads},
            batch_size=1,
            batch_format="numpy",
            zero_copy_batch=True,
            compute=_strategy(plan.concurrency),
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            **extra,
        )


def check_config(config) -> None:
    """What the Ray engine refuses whatever the cluster: storage actors cannot reach, a GPU index
    (Ray gives each actor its own GPU)."""
    for what, url in (("source", config.source), ("dest", config.dest)):
        if is_in_process_url(url):
            raise ConfigError(f"{what} {url}: memory:// lives in one process and Ray actors run in others; "
                              "use a folder or an object store (s3://, gs://) with --engine ray")
    if config.device.startswith("cuda:"):
        raise ConfigError(f"--device {config.device}: with --engine ray each actor gets its own GPU from Ray; "
                          "use --device cuda (or auto)")


def check_storage(config, nodes: int) -> None:
    """Warn about local paths on a multi-node cluster."""
    for what, url in (("source", config.source), ("dest", config.dest)):
        if nodes > 1 and is_local_url(url):
            log.warning("%s %s is a local path and the cluster has %d nodes: every node must see it "
                        "(shared filesystem), or use an object store URL", what, url, nodes)


def _results_here(config, resolved, tasks: Sequence[ShardTask]) -> Iterator[str]:
    """Run the dataset with this process as its driver; yields each shard's result (JSON)."""
    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = bars and not config.quiet
    try:
        check_storage(config, len([n for n in ray.nodes() if n.get("Alive")]))
        plan = plan_actors(config, resolved, len(tasks))
        log.info("ray: %d shard(s) on %d actor(s) (%.3g CPU, %.3g GPU each)",
                 len(tasks), plan.concurrency, plan.num_cpus, plan.num_gpus)
        for row in build_dataset(config, resolved, tasks, plan).iter_rows():
            yield row["result"]
    finally:
        ctx.enable_progress_bars = bars


class _ClusterDriver:
    """Runs `_results_here` inside the cluster, for Ray Client connections.

    Ray Data cannot execute through Ray Client (its streaming executor needs a core worker in the
    driver process; ray-project/ray#48682), so with ``ray://`` the Ray Data driver runs in this actor
    on the cluster and the client polls it for finished shards.
    """

    def __init__(self, config, resolved, tasks: list[ShardTask]) -> None:
        import threading

        self._lock = threading.Lock()
        self._done: list[str] = []
        self._finished = False
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(config, resolved, tasks), daemon=True)
        self._thread.start()

    def _run(self, config, resolved, tasks) -> None:
        import traceback

        try:
            for text in _results_here(config, resolved, tasks):
                with self._lock:
                    self._done.append(text)
        except BaseException:  # noqa: BLE001 - reported to the client by poll()
            self._error = traceback.format_exc()
        finally:
            self._finished = True

    def poll(self) -> tuple[list[str], bool, str | None]:
        with self._lock:
            done, self._done = self._done, []
        return done, self._finished and not self._done, self._error


def _results_via_cluster(config, resolved, tasks: Sequence[ShardTask]) -> Iterator[str]:
    import time

    actor_cls: Any = ray.remote(num_cpus=0, max_restarts=0)(_ClusterDriver)
    driver = actor_cls.remote(
        config, resolved, list(tasks))
    try:
        while True:
            done, finished, error = ray.get(driver.poll.remote())
            yield from done
            if error:
                raise OutputError(f"the Ray job failed on the cluster:\n{error}")
            if finished:
                return
            time.sleep(0.5)
    finally:
        ray.kill(driver)


def worker_environment(cluster_gpus: int) -> dict[str, bool]:
    """What the actors can import (DALI, OpenCV: `preflight.worker_environment_here`), asked on the
    cluster by a task placed like the actors (on a GPU node when the cluster has GPUs), not in the
    driver's environment: the driver may lack DALI that the workers have, or have it where they do not."""
    from resize_pipeline.preflight import worker_environment_here

    options: dict[str, Any] = {}
    gpu_nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU", 0) > 0]
    if cluster_gpus and gpu_nodes:
        # placed by node, not by a GPU share: a share would hold a GPU until Ray returns the worker's
        # lease, and an actor that wants the whole GPU would wait for it
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(gpu_nodes[0], soft=False)
    probe = ray.remote(num_cpus=0, num_gpus=0, max_retries=1)(worker_environment_here)
    env = ray.get(probe.options(**options).remote())
    log.info("ray workers can import: %s", env)
    return env


@contextlib.contextmanager
def session(config) -> Iterator[int]:
    """Check the config for Ray, connect (``config.address``), and yield the GPUs of the cluster's
    largest GPU node (0 without GPUs), for the driver's device decision; disconnects on exit when
    this call connected. `config` has the ``RESIZE_PIPELINE_RAY_*`` overrides applied
    (`config.ray_knobs_from_env`)."""
    check_config(config)
    started = connect(config.address, config.ray_ship_code)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        yield int(max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0))
    finally:
        if started:
            ray.shutdown()


def run_ray(
    config,
    resolved,
    tasks: Sequence[ShardTask],
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[ShardResult]:
    """Convert `tasks` on Ray (connected by `session`), yielding each shard's result as it completes."""
    if not tasks:
        return
    client = ray.util.client.ray.is_connected()
    stream = (_results_via_cluster if client else _results_here)(config, resolved, tasks)
    try:
        for text in stream:
            res = result_from_json(text)
            if on_progress:
                on_progress(res.total)
            yield res
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise OutputError(f"the Ray job failed ({type(exc).__name__}: {first}); the shards completed so "
                          "far are kept: rerun the same command to resume") from exc
