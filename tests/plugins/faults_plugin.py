"""Fault injection for the tests, installed into worker processes from outside the package.

The package carries no test hooks: a test puts this folder on the workers' path and names a JSON
file in ``RESIZE_PIPELINE_TEST_FAULTS``; `install()` then wraps the shard writer so that, at every
sample written, the file decides what happens (read each time, so one cluster serves many tests):

- ``{"crash_once": "/path/marker"}``: the first writer that finds no marker creates it and kills its
  own process (``os._exit(1)``) in the middle of a shard, as the OOM killer would;
- ``{"fail_shard": "shard-00001"}``: every write of that shard raises ``OSError``.

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
    from resize_pipeline.sinks import base

    if getattr(base.RollingShardWriter.write, "_faulty", False):
        return
    real_write = base.RollingShardWriter.write

    def write(self, sample):
        faults = _faults()
        if faults.get("fail_shard") == self.base:
            raise OSError(f"injected write failure in {self.base}")
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


def set_faults(path: str, **faults) -> None:
    """Write the faults file (what the next job's workers will do)."""
    with open(path, "w") as fh:
        json.dump(faults, fh)
