"""`--engine ray` as a new user meets it: without an address it starts a cluster of its own (never a
stale record's, never another user's) and shuts it down; an address that cannot be reached ends in
one line within a bounded time (exit 2), instead of Ray retrying for minutes.

Each test runs the CLI in its own process with ``RAY_TMPDIR`` in a fresh folder, where a stale
cluster record (``ray/ray_current_cluster``: a head that is gone) is planted.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from helpers_ray import PER_SHARD, SIZE  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def stale():
    """A Ray temp folder (short: Ray's socket paths have a length cap) holding a stale cluster record."""
    tmp = tempfile.mkdtemp(prefix="rp-stale-", dir="/tmp")
    (Path(tmp) / "ray").mkdir()
    (Path(tmp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_closed_port()}")
    yield tmp
    for pid in _pids_using(tmp):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(tmp, ignore_errors=True)


def _pids_using(marker: str) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            pids.append(int(d))
    return pids


def _cli(stale: str, corpus: Path, dest: Path, *extra: str, env_extra: dict | None = None, timeout: float = 120):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(RAY_TMPDIR=stale, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", **(env_extra or {}))
    cmd = [sys.executable, "-m", "resize_pipeline.cli", "convert", str(corpus), str(dest), "--engine", "ray",
           "--size", str(SIZE), "--samples-per-shard", str(PER_SHARD), "--batch-size", "4", "-q", *extra]
    t0 = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - t0


def test_address_auto_with_a_stale_record_is_one_line(stale, corpus, tmp_path):
    port = (Path(stale) / "ray" / "ray_current_cluster").read_text().rsplit(":", 1)[1]
    out, _ = _cli(stale, corpus, tmp_path / "out", "--address", "auto", timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--address auto: cannot reach the Ray cluster at" in lines[0], out.stderr[-2000:]
    assert f":{port} " in lines[0]
    assert not (tmp_path / "out").exists()


def test_an_unreachable_ray_address_is_one_line(stale, corpus, tmp_path):
    out, _ = _cli(stale, corpus, tmp_path / "out", env_extra={"RAY_ADDRESS": f"127.0.0.1:{_closed_port()}"},
                  timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].count("RAY_ADDRESS=127.0.0.1:") == 1 and "cannot reach" in lines[0]


def test_no_address_starts_its_own_cluster_and_shuts_it_down(stale, corpus, tmp_path):
    """A stale record in Ray's temp folder is not joined: the job starts a local cluster (its files
    under that same temp folder), converts, and leaves no Ray process behind."""
    out, _ = _cli(stale, corpus, tmp_path / "out", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "out" / "_manifest.json").exists()
    sessions = [p for p in (Path(stale) / "ray").iterdir() if p.name.startswith("session_")]
    assert sessions, "the job did not start a cluster of its own"
    deadline = time.monotonic() + 20
    while _pids_using(stale) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _pids_using(stale), "Ray processes of the job's own cluster are still running"
