"""For `bench_ray_nodes.py`: every batch the read stage reads first waits ``RESIZE_PIPELINE_BENCH_SLEEP``
seconds per image (a stage that sleeps instead of using CPU), so that a 2-core machine can show how
the scheduler scales over nodes. Loaded in each Ray worker through ``worker_process_setup_hook``
(benchmark code stays out of the package)."""

from __future__ import annotations

import os
import time


def install() -> None:
    pause = float(os.environ.get("RESIZE_PIPELINE_BENCH_SLEEP", "0") or 0)
    if not pause:
        return
    from resize_pipeline import stages

    if getattr(stages.ReadStage.__call__, "_sleeps", False):
        return
    real = stages.ReadStage.__call__

    def call(self, batch):
        time.sleep(pause * len(batch["key"]))
        return real(self, batch)

    call._sleeps = True  # type: ignore[attr-defined]
    stages.ReadStage.__call__ = call
