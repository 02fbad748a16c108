"""Ray engine: the conversion as a Ray Data streaming job, one task per shard (img2dataset's Ray model).

    read_datasource(ShardTasks: one small row per shard) -> map_batches(ShardConverter, batch_size=1,
        actor pool) -> iter_rows

A task row is a descriptor (index, name, row range of a listing part in DEST: ~60 bytes whatever the
shard size), made from the shard's index alone, so the rows stream into Ray Data while the driver's
planner is still reading SOURCE and writing the parts (`resize_pipeline.planning`); an actor waits for
its part at the job's gate (`gate.PartGate`) and reads its rows from it. Each actor builds one
`ShardRunner` and streams the shards it is given (two calls run at once per actor, so the next shard
flows in behind the current one): each shard is written straight into DEST (any fsspec URL) and
committed atomically, its stats file last, and only the small `ShardResult` comes back to the
driver. Ray Data does the scheduling, backpressure and retries: actors are restarted when they die
(``max_restarts``) and their in-flight shard is run again (``max_task_retries``); since a shard's
output is deterministic and only visible once complete, a killed actor (a lost node) costs no sample.
Every attempt of a shard is counted in the gate's ledger, whatever ended the last one (an exception,
retried in the actor; the actor dying, retried by Ray): past `shard_attempts` its inputs are recorded
as failed (stage ``shard``), as on the local engine, and a rerun tries it again. A killed *job*
resumes on rerun from the completed shards (shards whose stats exist are not even sent; the planner
checks them, and any that is not complete after all runs in a second, small pass).

The process that iterates the dataset is Ray Data's driver: this process when it is part of the
cluster (a local cluster, ``--address auto``, a job started by ``ray job submit``). Through Ray Client
(``ray://``) Ray Data cannot drive a dataset, so a small actor on the cluster (`_ClusterDriver`) does,
and this process polls it for finished shards.

Connecting (`connect`): no address (and no ``RAY_ADDRESS``) starts a cluster of this job's own on
this machine (``ray.init(address="local")``: never another user's, never a stale record's) and shuts
it down after the job; ``--address auto`` / ``RAY_ADDRESS`` / ``host:port`` / ``ray://`` join one.
An address that cannot be reached ends the job in one line within `CONNECT_TIMEOUT` seconds.

Knobs (config fields and flags; the environment variables, read on the driver, override them, so
they also work through ``ray job submit``; ``--workers N`` sets the actor count):

- ``ray_gpus_per_actor`` / ``RESIZE_PIPELINE_RAY_GPUS_PER_ACTOR``: GPUs per actor (default, when the
  job uses a GPU: a share of one, one actor per 4 CPUs of the smallest GPU node's CPUs per GPU, e.g.
  0.25 on 16-CPU one-GPU nodes, since one process's host side is GIL-bound; else 0).
- ``ray_cpus_per_actor`` / ``RESIZE_PIPELINE_RAY_CPUS_PER_ACTOR``: CPUs reserved per actor, also its
  decode/torch thread count (default 1 on CPU-only clusters; on GPU clusters the CPUs per GPU of the
  smallest GPU node, at most 8).
- ``ray_max_task_retries`` / ``RESIZE_PIPELINE_RAY_MAX_TASK_RETRIES``: Ray's own cap on the retries of
  a task whose actor died (when set, a task past it fails the whole job: rerun resumes). Unset (the
  default), Ray retries, and the job's attempt ledger records a shard whose actor died
  `shard_attempts` times as failed, so the job finishes.
- ``ray_ship_code`` / ``RESIZE_PIPELINE_RAY_SHIP_CODE``: ``1`` uploads this checkout's
  ``resize_pipeline`` and ``workers`` with the job (``py_modules``); default on for ``ray://`` client
  connections, off otherwise (a job submitted with ``--working-dir`` or an image with the package
  installed already has them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from resize_pipeline.engine.local import CORES_PER_GPU_WORKER
from resize_pipeline.errors import ConfigError, OutputError
from resize_pipeline.shards import ShardResult
from resize_pipeline.urls import is_in_process_url, is_local_url
from workers.actors import ShardConverter, encode_task, result_from_json, task_row

log = logging.getLogger(__name__)

#: seconds to wait for a Ray cluster's address to answer before giving up (one line, exit 2)
CONNECT_TIMEOUT = 5.0
#: shard rows one read task of the task source hands out
ROWS_PER_READ_TASK = 256


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
    """Use the running Ray instance, or connect; returns True when this call started one (then the
    caller shuts it down).

    ``None`` starts a local cluster of this job's own (``ray.init(address="local")``), unless
    ``RAY_ADDRESS`` names one to join (as inside a job started by ``ray job submit``); ``"auto"`` joins
    the cluster of this machine (``ray start``), ``"host:port"`` that cluster, ``"ray://host:10001"``
    connects a Ray Client. An address is probed first: one that does not answer within
    `CONNECT_TIMEOUT` seconds is a `ConfigError` (one line) instead of Ray's retries. Workers find the
    code through `job_runtime_env`: ``PYTHONPATH`` for a cluster on this machine, ``py_modules`` for
    Ray Client; a submitted job brings its ``--working-dir``.
    """
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS") or None
    env = job_runtime_env(target, ship_code)
    if target is None or target == "local":
        ray.init(address="local", runtime_env=env)
        return True
    probe(target, from_env=address is None)
    ray.init(address=target, runtime_env=env)
    return True  # shutting down a connection to a cluster only disconnects


def probe(address: str, from_env: bool = False) -> str:
    """The ``host:port`` a Ray address leads to, checked to accept a connection; `ConfigError` else."""
    said = f"RAY_ADDRESS={address}" if from_env else f"--address {address}"
    hint = ("start one (`ray start --head`) or check the address; leave --address out (and RAY_ADDRESS unset) "
            "to run on a Ray cluster of this job's own")
    if address.startswith("ray://"):
        hostport = address[len("ray://"):].split("/", 1)[0]
    else:
        from ray._private import services

        try:
            hostport = services.canonicalize_bootstrap_address(address) or ""
        except (ConnectionError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(f"{said}: no Ray cluster found ({first}); {hint}") from None
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ConfigError(f"{said}: cannot reach the Ray cluster at {hostport} ({reason}) within "
                          f"{CONNECT_TIMEOUT:.0f} s; {hint}") from None
    return hostport


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


class ShardTasks(ray.data.datasource.Datasource):
    """A Ray Data datasource of shard task rows (`actors.task_row`), one row and one block per shard,
    made from the shard indices alone (`planning.Layout`): read tasks of `ROWS_PER_READ_TASK` shards
    each, run one at a time, yield their blocks as Ray Data asks for them, so the driver holds the
    indices (8 bytes a shard) and Ray Data only the blocks in flight."""

    def __init__(self, indices: np.ndarray, layout: Any) -> None:
        self.indices, self.layout = indices, layout

    def estimate_inmemory_data_size(self) -> int:
        return int(len(self.indices)) * 64

    def get_name(self) -> str:
        return "ShardTasks"

    def get_read_tasks(self, parallelism: int, *args: Any, **kwargs: Any) -> list:
        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        layout = self.layout
        tasks = []
        for a in range(0, len(self.indices), ROWS_PER_READ_TASK):
            chunk = self.indices[a:a + ROWS_PER_READ_TASK]

            def read(chunk: np.ndarray = chunk) -> Iterator[Any]:
                import pyarrow as pa

                from resize_pipeline.sources.parts import part_name

                for i in chunk.tolist():
                    start, stop = layout.rows_of(i)
                    row = task_row(i, layout.name(i), part_name(layout.part_of(i)), start, stop)
                    yield pa.table({k: [v] for k, v in row.items()})

            meta = BlockMetadata(num_rows=len(chunk), size_bytes=len(chunk) * 64, exec_stats=None, input_files=None)
            tasks.append(ReadTask(read, meta))
        return tasks


def build_dataset(config, resolved, indices: Any, layout: Any, plan: ActorPlan, gate: Any, classes: Any = None):
    """The lazy Ray Dataset: one row (and one block) per shard task, mapped by the actor pool.

    `indices`: the shard indices of the listing's `layout` (descriptor rows); or, with `layout`
    None, `shards.ShardTask`s on rows in memory (``--update``'s plan: rows carry their items)."""
    if layout is None:
        rows = [encode_task(t) for t in indices]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    else:
        # one read task at a time: they only do arithmetic, and must not take the actors' CPUs
        ds = ray.data.read_datasource(ShardTasks(indices, layout), concurrency=1, num_cpus=0)
    retries = config.ray_max_task_retries
    extra: dict[str, Any] = {}
    if retries is not None:
        # not a named map_batches parameter (yet): passed through Ray's remote args
        extra = {"max_restarts": -1, "max_task_retries": retries}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ds.map_batches(
            ShardConverter,
            fn_constructor_kwargs={"config": config, "resolved": resolved, "threads": plan.threads, "gate": gate,
                                   "classes": classes},
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


def _results_here(config, resolved, indices: Any, layout: Any, gate: Any, classes: Any = None) -> Iterator[str]:
    """Run the dataset with this process as its driver; yields each shard's result (JSON)."""
    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = bars and not config.quiet
    try:
        check_storage(config, len([n for n in ray.nodes() if n.get("Alive")]))
        plan = plan_actors(config, resolved, len(indices))
        log.info("ray: %d shard(s) on %d actor(s) (%.3g CPU, %.3g GPU each)",
                 len(indices), plan.concurrency, plan.num_cpus, plan.num_gpus)
        for row in build_dataset(config, resolved, indices, layout, plan, gate, classes).iter_rows():
            yield row["result"]
    finally:
        ctx.enable_progress_bars = bars


class _ClusterDriver:
    """Runs `_results_here` inside the cluster, for Ray Client connections.

    Ray Data cannot execute through Ray Client (its streaming executor needs a core worker in the
    driver process; ray-project/ray#48682), so with ``ray://`` the Ray Data driver runs in this actor
    on the cluster and the client polls it for finished shards.
    """

    def __init__(self, config, resolved, indices, layout, gate, classes=None) -> None:
        import threading

        self._lock = threading.Lock()
        self._done: list[str] = []
        self._finished = False
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(config, resolved, indices, layout, gate, classes), daemon=True)
        self._thread.start()

    def _run(self, config, resolved, indices, layout, gate, classes) -> None:
        import traceback

        try:
            for text in _results_here(config, resolved, indices, layout, gate, classes):
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


def _results_via_cluster(config, resolved, indices, layout, gate, classes=None) -> Iterator[str]:
    import time

    actor_cls: Any = ray.remote(num_cpus=0, max_restarts=0)(_ClusterDriver)
    driver = actor_cls.remote(config, resolved, indices, layout, gate, classes)
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


class _GateFeeder:
    """The planner's listener on Ray: opens each part at the gate once it is written (or checked), and
    keeps the shards whose stats exist but turned out incomplete (they were not sent: `repair`)."""

    def __init__(self, gate: Any, done: Any) -> None:
        self.gate, self.done = gate, done
        self.repair: list[int] = []

    def __call__(self, ev: Any) -> None:
        ray.get(self.gate.open.remote(ev.index, ev.rows))
        self.repair += [t.index for t in ev.tasks if self.done.candidate(t.name)]

    def end(self, outcome: Any) -> None:
        ray.get(self.gate.end.remote(len(outcome.parts)))

    def fail(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        try:
            ray.get(self.gate.fail.remote(first))
        except ray.exceptions.RayError:
            pass


def start_gate() -> Any:
    """The job's `gate.PartGate`, on this node (it lives as long as this driver)."""
    from workers.gate import PartGate

    options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 1000, "max_restarts": 0}
    if not ray.util.client.ray.is_connected():
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                        soft=False)
    return ray.remote(PartGate).options(**options).remote()


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


def run_ray(config, resolved, plan: Any, on_progress: Callable[[int], None] | None = None) -> Iterator[ShardResult]:
    """Convert the shards of `plan` on Ray (connected by `session`), yielding each shard's result as
    it completes. `plan` is a `planning.PlanThread`, not started (shards already complete come from
    the planner: `PlanThread.take_done`), or a list of `shards.ShardTask`s on rows in memory
    (``--update``'s plan)."""
    if isinstance(plan, (list, tuple)):
        yield from _run_tasks(config, resolved, list(plan), on_progress)
        return
    layout, done = plan.planner.layout, plan.planner.done
    classes = tuple(plan.planner.listing.classes) or None
    indices = np.fromiter((i for i in range(layout.shards) if not done.candidate(layout.name(i))), dtype=np.int64)
    gate = start_gate()
    feeder = _GateFeeder(gate, done)
    plan.listeners.append(feeder)
    plan.queue_tasks = False
    plan.start()
    client = ray.util.client.ray.is_connected()
    run = _results_via_cluster if client else _results_here
    try:
        for batch in (indices, None):
            if batch is None:  # shards whose stats existed but were not complete: a second, small pass
                plan.join()
                batch = np.asarray(sorted(set(feeder.repair)), dtype=np.int64)
                if not len(batch):
                    break
                log.info("ray: %d shard(s) whose records were not complete", len(batch))
            if not len(batch):
                continue
            yield from _results(run(config, resolved, batch, layout, gate, classes), on_progress)
    except ray.exceptions.RayError as exc:
        if plan.error is not None:
            raise plan.error from None
        raise _job_failed(exc) from _released(exc)
    finally:
        _kill(gate)


def _run_tasks(config, resolved, tasks: list, on_progress: Callable[[int], None] | None) -> Iterator[ShardResult]:
    """Tasks on rows in memory (each row carries its items), counted in a gate like any others."""
    if not tasks:
        return
    gate = start_gate()
    run = _results_via_cluster if ray.util.client.ray.is_connected() else _results_here
    try:
        yield from _results(run(config, resolved, tasks, None, gate), on_progress)
    except ray.exceptions.RayError as exc:
        raise _job_failed(exc) from _released(exc)
    finally:
        _kill(gate)


def _results(texts: Iterator[str], on_progress: Callable[[int], None] | None) -> Iterator[ShardResult]:
    """The actors' answers as results (an answer for a task past the listing's end is none)."""
    for text in texts:
        res = result_from_json(text)
        if res is None:
            continue
        if on_progress:
            on_progress(res.total)
        yield res


def _job_failed(exc: BaseException) -> OutputError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return OutputError(f"the Ray job failed ({type(exc).__name__}: {first}); the shards completed so "
                       "far are kept: rerun the same command to resume")


def _released(exc: BaseException) -> BaseException:
    """`exc` (and what it was raised from) without tracebacks, and the failed dataset's executor
    collected now: its frames and its own reference cycles hold the job's actor pool (Ray Data drops
    its actors by reference counting), so until a garbage collection happens to run, and for as long
    as a caller keeps the error (to log it, in a retry loop), the actors keep their CPUs/GPUs and the
    next job on the cluster waits for actors that cannot start."""
    import gc

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    gc.collect()
    return exc


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor)
    except Exception:  # noqa: BLE001 - the cluster may be gone already
        pass
