"""What a training run watches while it runs: bad inputs, divergence, cost.

- `SkipLedger`: the inputs that could not be listed, read or decoded, each counted once, written to
  ``OUT_DIR/_skipped.jsonl``; above ``--max-bad-fraction`` of the inputs the run stops with one line
  (`TrainingDataError`).
- `check_finite`: a non-finite loss, weight or BN statistic stops the run with one line naming the
  step (`TrainingDiverged`), so a diverged model is never checkpointed as good or exported.
- `CostMeter`: after the first few steps, the measured seconds per step, the estimated total time and
  the peak memory, said once.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from resize_pipeline.errors import ResizePipelineError, SourceError
from resize_pipeline.learned.distributed import gather_lists
from resize_pipeline.learned.util import describe_nonfinite, nonfinite

log = logging.getLogger(__name__)

SKIPPED_FILE = "_skipped.jsonl"


class TrainingDataError(SourceError):
    """Too many training inputs could not be read or decoded (above ``--max-bad-fraction``)."""


class TrainingDiverged(ResizePipelineError):
    """The loss or the weights stopped being finite numbers."""


class SkipLedger:
    """Bad inputs of a run, each counted once (by path and key), with the error that skipped it.

    Args:
        total: inputs the run's data lists (the denominator of the fraction), bad ones included.
        max_fraction: above this fraction of `total` the run stops (`check`).
        listed: error records of what the listing itself could not list or label.
    """

    def __init__(self, total: int, max_fraction: float, listed: Iterable[dict[str, str]] = ()) -> None:
        self.total, self.max_fraction = max(1, int(total)), float(max_fraction)
        self.records: dict[tuple[str, str], dict[str, str]] = {}
        self.add(listed)

    def add(self, records: Iterable[dict[str, str]]) -> int:
        """Record these; returns how many were new."""
        new = 0
        for r in records:
            k = (r.get("path", ""), r.get("key", ""))
            if k not in self.records:
                self.records[k] = r
                new += 1
                log.info("skipped training input %s (%s: %s: %s)", r.get("path"), r.get("stage"),
                            r.get("error_type"), r.get("error"))
        return new

    @property
    def count(self) -> int:
        return len(self.records)

    def over(self, count: int | None = None) -> bool:
        n = self.count if count is None else count
        return n > self.max_fraction * self.total

    def refusal(self, count: int | None = None, where: str = "") -> str:
        n = self.count if count is None else count
        listed = f"; listed in {where}" if where else ""
        return (f"training data: {n} of {self.total} inputs ({100 * n / self.total:.1f}%) could not be read or "
                f"decoded, above --max-bad-fraction {self.max_fraction:g}{listed}; fix or remove them, or raise "
                "--max-bad-fraction")

    def summary(self) -> str:
        if not self.count:
            return ""
        first = next(iter(self.records.values()))
        return (f"skipped {self.count} bad input(s) of {self.total} (e.g. {first.get('path')}: "
                f"{first.get('error_type')}: {first.get('error')})")

    def write(self, out_dir: str) -> str:
        """Write ``OUT_DIR/_skipped.jsonl`` (one error record per line, atomically); returns its path."""
        from resize_pipeline import jsontext

        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, SKIPPED_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in self.records.values():
                fh.write(jsontext.dumps(r, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path


class RunLedger(SkipLedger):
    """A `SkipLedger` that knows the process count and where it is written.

    With one process a ledger above its limit stops the run as soon as the bad input is met; with
    several, every process stops together at the end of the epoch (`sync`)."""

    def __init__(self, *args: Any, world: int, out_dir: str | None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.world, self.out_dir = world, out_dir
        self.shared = 0  # records already exchanged between processes

    def met(self, records: list[dict[str, str]]) -> None:
        self.add(records)
        if self.world == 1 and self.over():
            raise TrainingDataError(self.refusal(where=self.write(self.out_dir) if self.out_dir else ""))

    def sync(self, device: torch.device) -> None:
        """Share new records between processes (every process ends with the same list), then stop every
        process together when the list is above the limit."""
        if self.world > 1:
            new = list(self.records.values())[self.shared:]
            self.add(gather_lists(new, self.world))
            self.shared = self.count
        if self.over():
            raise TrainingDataError(self.refusal(where=self.write(self.out_dir) if self.out_dir else ""))


def check_finite(step: int, phase: str, loss: float | None = None, modules: Iterable[nn.Module] = ()) -> None:
    """`TrainingDiverged` (one line naming the step) when the loss or any weight / BN statistic is
    not finite."""
    hint = "lower --lr / --resizer-lr, or check the data"
    if loss is not None and not math.isfinite(loss):
        raise TrainingDiverged(f"training diverged at step {step} ({phase}): the loss is {loss}; {hint}")
    for m in modules:
        state = m.state_dict()
        bad = nonfinite(state)
        if bad:
            raise TrainingDiverged(f"training diverged at step {step} ({phase}): "
                                   f"{describe_nonfinite(bad, len(state))}; {hint}")


def peak_memory(device: torch.device) -> str:
    """The process's peak resident memory (and, on CUDA, the peak allocated on the GPU)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    text = f"{rss / 2**30:.1f} GiB (process RSS)"
    if device.type == "cuda":
        text += f", {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB on {device}"
    return text


def duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class CostMeter:
    """Says once, after `warmup` + `measured` steps, what a step costs and what the run will.

    The first `warmup` steps (DataLoader start-up, allocator growth) are not timed."""

    def __init__(self, total_steps: int, notify: Callable[[str], None], device: torch.device, what: str,
                 warmup: int = 1, measured: int = 3) -> None:
        self.total, self.notify, self.device, self.what = total_steps, notify, device, what
        self.warmup, self.measured = warmup, measured
        self.start = time.perf_counter()
        self.t0: float | None = None
        self.said = False

    def step(self, step: int) -> None:
        """Call after each step (`step` counted from 1 over the whole run). A run shorter than
        `warmup` + `measured` steps is measured over what it has, at its last step."""
        if self.said:
            return
        now = time.perf_counter()
        if step == self.warmup:
            self.t0 = now
        last = min(self.total, self.warmup + self.measured)
        if step < last:
            return
        since, first = (self.t0, self.warmup + 1) if self.t0 is not None and step > self.warmup else (self.start, 1)
        per = (now - since) / max(1, step - first + 1)
        left = max(0, self.total - step) * per
        self.notify(f"{per:.2f} s/step (measured over steps {first}-{step}; {self.what}); "
                    f"{self.total} steps: about {duration(now - self.start + left)} in all, "
                    f"{duration(left)} left; peak memory {peak_memory(self.device)}")
        self.said = True
