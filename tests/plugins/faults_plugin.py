"""Fault injection for the tests, installed into worker processes from outside the package.

The package carries no test hooks: a test puts this folder on the workers' path and names a JSON
file in ``RESIZE_PIPELINE_TEST_FAULTS``; `install()` then wraps the shard writer so that, at every
sample written, the file decides what happens (read each time, so one cluster serves many tests):

- ``{"crash_once": "/path/marker"}``: the first writer that finds no marker creates it and kills its
  own process (``os._exit(1)``) in the middle of a shard, as the OOM killer would;
- ``{"fail_shard": "shard-00001"}``: every write of that shard raises ``OSError``;
- ``{"attempts": {"shard-00001": ["raise", "crash", ...]}, "log": "/path/log"}``: the k-th attempt of
  that shard (counted across processes: a line per attempt in the log file) raises ``OSError``
  ("raise") or kills its process ("crash") at its first sample; past the list, attempts run normally;
- ``{"sleep_per_sample": 0.05}``: every sample written waits that long (a job that takes a while);
- ``{"log": "/path/log"}`` alone: every attempt of every shard adds a line ``shard pid node`` (the Ray
  node it ran on, "-" outside Ray);
- ``{"enospc_after": N, "under": "/dest"}``: local file writes below ``/dest`` (fsspec's
  ``LocalFileOpener``, what every write into a local DEST goes through) raise ``ENOSPC`` once this
  process has written more than N bytes there: a disk that fills up;
- ``{"hold": "/path/marker", "under": "/dest"}``: every such write waits until the marker file exists
  (a job held mid-run, deterministically);
- ``{"unreadable": "/src/sub"}``: ``os.scandir`` of that folder raises ``PermissionError`` (what a
  folder without read permission does, also when the tests run as root);
- ``{"lock_heartbeat": 0.2}``: the DEST lock beats every 0.2 s (instead of 10 s), so that a test sees a
  lost lock or a stale one quickly.
- ``{"script_key": KEY, "script": ["stage", "device", "die", ...], "script_log": "/path/log"}``: each
  time a batch holding sample KEY is decoded (`DecodeStage`), one line is appended to the log and the
  next action of the script runs: ``stage`` raises an ordinary exception (a failed shard attempt),
  ``device`` raises a CUDA error (a device fault), ``die`` kills the process (``os._exit(1)``);
  past the end of the script, nothing happens. The log's line count is the number of attempts.
- ``{"worker_dies_at_start": true}``: a local worker process kills itself (``os._exit(1)``) as it
  builds its runner, before it reports anything (a native library that crashes on import).
- ``{"die_at": "_run.json", "nth": 2, "when": "after"}``: the process kills itself (``os._exit(9)``, as
  SIGKILL would) at the nth rename into place (fsspec's local ``mv``, how every file of a local DEST
  is committed) whose final path contains ``die_at``, just ``before`` or ``after`` it.

Ray workers run `install` through ``runtime_env={"worker_process_setup_hook": "faults_plugin.install"}``;
local worker processes through ``sitecustomize.py`` in this folder.
"""

from __future__ import annotations

import json
import os

FAULTS_ENV = "RESIZE_PIPELINE_TEST_FAULTS"
HERE = os.path.dirname(os.path.abspath(__file__))


def _faults() -> dict:
    path = os.environ.get(FAULTS_ENV)
    if not path:
        return {}
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def install() -> None:
    if not os.environ.get(FAULTS_ENV):
        return
    _install_os_faults()
    try:
        from resize_pipeline.sinks import base
    except ImportError:  # an older layout of the package: only the OS-level faults apply
        return

    beat = _faults().get("lock_heartbeat")
    if beat:
        from resize_pipeline.sinks import lock

        defaults = list(lock.DestLock.__init__.__defaults__ or ())
        lock.DestLock.__init__.__defaults__ = (float(beat), *defaults[1:])
    if getattr(base.RollingShardWriter.write, "_faulty", False):
        return
    real_write = base.RollingShardWriter.write

    def write(self, sample):
        faults = _faults()
        if faults.get("fail_shard") == self.base:
            raise OSError(f"injected write failure in {self.base}")
        action = getattr(self, "_fault_action", None)
        if action is None and faults.get("log"):  # this writer's first sample: a new attempt of the shard
            with open(faults["log"], "a") as fh:
                fh.write(f"{self.base} {os.getpid()} {_node()}\n")
            plan = faults.get("attempts", {}).get(self.base) or []
            with open(faults["log"]) as fh:
                k = sum(1 for line in fh if line.split()[0] == self.base)
            action = self._fault_action = plan[k - 1] if k <= len(plan) else "run"
        if action is not None:
            if action == "raise":
                raise OSError(f"injected failure of an attempt of {self.base}")
            if action == "crash":
                os._exit(1)
        pause = faults.get("sleep_per_sample")
        if pause:
            import time

            time.sleep(float(pause))
        marker = faults.get("crash_once")
        if marker:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, f"{os.getpid()}\n".encode())
                os.close(fd)
                os._exit(1)
        return real_write(self, sample)

    write._faulty = True  # type: ignore[attr-defined]
    base.RollingShardWriter.write = write
    _install_script()
    _install_start_death()


def _install_start_death() -> None:
    import multiprocessing

    from resize_pipeline import runner

    real_init = runner.ShardRunner.__init__

    def init(self, *args, **kwargs):
        if _faults().get("worker_dies_at_start") and multiprocessing.parent_process() is not None:
            os._exit(1)
        real_init(self, *args, **kwargs)

    runner.ShardRunner.__init__ = init


def script_step(batch) -> None:
    """The `script` fault (see the module docstring), for a batch about to be decoded."""
    faults = _faults()
    key = faults.get("script_key")
    if not key or key not in [str(k) for k in batch["key"]]:
        return
    log = faults["script_log"]
    try:
        with open(log) as fh:
            done = len(fh.read().splitlines())
    except FileNotFoundError:
        done = 0
    script = faults.get("script", [])
    action = script[done] if done < len(script) else "pass"
    fd = os.open(log, os.O_CREAT | os.O_APPEND | os.O_WRONLY)
    os.write(fd, f"{os.getpid()} {action}\n".encode())
    os.close(fd)
    if action == "stage":
        raise RuntimeError("injected: the stage failed")
    if action == "device":
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
    if action == "die":
        os._exit(1)


def _install_script() -> None:
    try:
        from resize_pipeline import stages
    except ImportError:
        return
    if getattr(stages.DecodeStage.__call__, "_faulty", False):
        return
    real = stages.DecodeStage.__call__

    def call(self, batch):
        script_step(batch)
        return real(self, batch)

    call._faulty = True  # type: ignore[attr-defined]
    stages.DecodeStage.__call__ = call


def _node() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "-"
    except Exception:  # noqa: BLE001 - outside Ray
        return "-"


def _install_os_faults() -> None:
    """Faults below the package (the filesystem as the OS shows it): they apply to any version."""
    import errno
    import time

    from fsspec.implementations.local import LocalFileOpener

    if getattr(LocalFileOpener, "_faulty", False):
        return
    written = [0]

    def write(self, data):
        faults = _faults()
        under = faults.get("under")
        if under and str(self.path).startswith(under):
            hold = faults.get("hold")
            while hold and not os.path.exists(hold):
                time.sleep(0.05)
            budget = faults.get("enospc_after")
            if budget is not None:
                if written[0] + len(data) > budget:
                    raise OSError(errno.ENOSPC, "No space left on device (injected)")
                written[0] += len(data)
        return self.f.write(data)

    LocalFileOpener.write = write
    LocalFileOpener._faulty = True
    from fsspec.implementations.local import LocalFileSystem

    real_mv = LocalFileSystem.mv
    renames = [0]

    def mv(self, path1, path2, *args, **kwargs):
        faults = _faults()
        target = faults.get("die_at")
        hit = bool(target) and target in str(path2)
        if hit:
            renames[0] += 1
            hit = renames[0] == int(faults.get("nth", 1))
        if hit and faults.get("when", "after") == "before":
            os._exit(9)
        out = real_mv(self, path1, path2, *args, **kwargs)
        if hit:
            os._exit(9)
        return out

    LocalFileSystem.mv = mv
    real_scandir = os.scandir

    def scandir(path="."):
        target = _faults().get("unreadable")
        if target and not isinstance(path, int) and os.path.abspath(os.fspath(path)) == os.path.abspath(target):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    os.scandir = scandir


def set_faults(path: str, **faults) -> None:
    """Write the faults file (what the next job's workers will do)."""
    with open(path, "w") as fh:
        json.dump(faults, fh)
