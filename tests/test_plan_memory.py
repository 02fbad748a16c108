"""The driver's memory grows with shards, not with inputs (issue 18), metadata columns included
(issue 20: a 60-character caption column made a 10M-row plan 1.35 GiB instead of 736 MiB): the whole
``convert --dry-run`` (list, keys, plan, read every row) of a manifest 5x as large peaks at nearly the
same RSS (within the noise of the allocators: what a release that holds the listing adds is the
manifest itself, ~440 MB more). Captions are long (~1000 characters) so that the manifests are large
(~110 and ~550 MB) while the rows stay few (a test of seconds).

Version-agnostic on purpose (the CLI in a fresh process, its peak RSS from ``wait4``), so that it
runs against any release of the tool."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _manifest(path: Path, rows: int) -> Path:
    with open(path, "w") as fh:
        fh.write("path,label,caption\n")
        for a in range(0, rows, 50_000):
            fh.write("".join(f"train/n{i // 1000:05d}/n{i // 1000:05d}_{i:08d}.JPEG,{i % 1000},"
                             f"a photo of something in a place number {i:012d} okay {'long words ' * 88}\n"
                             for i in range(a, min(rows, a + 50_000))))
    return path


def _peak_mib(man: Path, dest: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    argv = [sys.executable, "-P", "-m", "resize_pipeline.cli", "convert", str(man), str(dest), "--dry-run",
            "--samples-per-shard", "1000"]
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
    _, status, usage = os.wait4(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss / 1024


def test_a_dry_run_of_5x_the_rows_with_captions_peaks_at_about_the_same_memory(tmp_path):
    small = _peak_mib(_manifest(tmp_path / "s.csv", 100_000), tmp_path / "d1")
    (tmp_path / "s.csv").unlink()
    large = _peak_mib(_manifest(tmp_path / "l.csv", 500_000), tmp_path / "d2")
    assert large - small < 150, f"peak RSS {small:.0f} MiB -> {large:.0f} MiB for 5x the rows"
