"""Issue 20, finding 1: two jobs can never write one DEST at once.

- A lock written in another PID namespace under the same host name (a container with host networking,
  a ``hostNetwork`` pod, a cloned VM) is judged by its heartbeat, never by a pid that means nothing here.
- Taking over a stale lock is atomic: of two jobs restarting at the same instant, exactly one wins.
- A job whose lock was taken over stops at once (exit 2, one line) and deletes nothing.
- SIGTERM releases the lock (exit 143, one line).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from resize_pipeline.cli import main
from resize_pipeline.layout import LOCK_FILE
from resize_pipeline.sinks.dest import Dest
from resize_pipeline.sinks.lock import DestLock, DestLocked

from .helpers import cli_cmd, cli_env, fault_env, one_line_error, run_cli, write_jpegs

ARGS = ("--size", "16", "--samples-per-shard", "4", "-q")


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lock") / "src"
    write_jpegs(root, 10, seed=3)
    return root


def _dead_pid() -> int:
    p = subprocess.run(["python3", "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def _wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        assert proc is None or proc.poll() is None, proc.communicate()
        time.sleep(0.05)


# --------------------------------------------------------------------------------- same host name
def test_a_fresh_lock_from_another_pid_namespace_on_this_host_is_not_taken_over(src, tmp_path, capsys):
    """Same host name, a pid that is dead *here*, a heartbeat seconds old: another job's, alive."""
    dest = tmp_path / "dst"
    dest.mkdir()
    mine = DestLock(Dest(str(dest))).record()
    lock = dict(mine, pid=_dead_pid(), pid_ns="pid:[4026530000]", token="c" * 16, heartbeat=time.time() - 5)
    assert lock["host"] == socket.gethostname()
    (dest / LOCK_FILE).write_text(json.dumps(lock))
    assert main(["convert", str(src), str(dest), *ARGS, "--workers", "1"]) == 2
    assert "another job" in one_line_error(capsys.readouterr().err)
    assert json.loads((dest / LOCK_FILE).read_text()) == lock
    # the same pid namespace and kernel boot: the pid can be checked, and it is gone
    (dest / LOCK_FILE).write_text(json.dumps(dict(lock, pid_ns=mine["pid_ns"])))
    assert main(["convert", str(src), str(dest), *ARGS, "--workers", "1"]) == 0
    assert "taking over the lock" in capsys.readouterr().err


def _can_unshare() -> bool:
    try:
        r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare --pid (root or user namespaces)")
def test_a_job_in_another_pid_namespace_keeps_its_lock(src, tmp_path):
    """A real second PID namespace on this host: its job's pid (1 or 2 there) means nothing here."""
    dest, release = tmp_path / "dst", tmp_path / "release"
    env = {**cli_env(), **fault_env(tmp_path, hold=str(release), under=str(dest))}
    first = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", *cli_cmd(str(src), str(dest), *ARGS,
                                                                                     "--workers", "1")],
                             env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(dest / LOCK_FILE, first)
        held = json.loads((dest / LOCK_FILE).read_text())
        assert held["host"] == socket.gethostname() and held["pid"] < 10  # a pid of its own namespace
        second = run_cli(str(src), str(dest), *ARGS, "--workers", "1")
        assert second.returncode == 2, second.stderr
        assert "another job" in one_line_error(second.stderr)
        assert json.loads((dest / LOCK_FILE).read_text())["token"] == held["token"]
    finally:
        release.touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert json.loads((dest / "_manifest.json").read_text())["counts"]["written"] == 10


# ------------------------------------------------------------------------------------ the race
def _stale_lock(dest: Path) -> None:
    (dest / LOCK_FILE).write_text(json.dumps({"host": "gone-host", "pid": 1, "token": "0" * 16,
                                              "heartbeat": time.time() - 3600, "heartbeat_seconds": 10}))


def test_two_jobs_taking_over_a_stale_lock_at_once_one_wins(tmp_path, monkeypatch):
    """Both judge the lock stale; the second acts just after the first took it over (the interleaving
    that let both proceed: it removed the first's brand-new lock)."""
    import resize_pipeline.sinks.lock as lockmod

    monkeypatch.setattr(lockmod, "SETTLE", 1.0)
    real = DestLock.stale

    for trial in range(3):
        dest = tmp_path / f"d{trial}"
        dest.mkdir()
        _stale_lock(dest)
        barrier = threading.Barrier(2)

        def stale(self, lock, barrier=barrier):
            why = real(self, lock)
            barrier.wait(timeout=10)
            if threading.current_thread().name == "late":
                time.sleep(0.5)  # the first has taken the lock over by now (it then settles for 1 s)
            return why

        monkeypatch.setattr(DestLock, "stale", stale)
        outcome: dict[str, object] = {}

        def take(name: str, dest=dest, outcome=outcome) -> None:
            lock = DestLock(Dest(str(dest)), heartbeat=60)
            try:
                lock.acquire()
                outcome[name] = lock
            except DestLocked as exc:
                outcome[name] = exc

        threads = [threading.Thread(target=take, args=(n,), name=n) for n in ("early", "late")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        held = [v for v in outcome.values() if isinstance(v, DestLock)]
        assert len(held) == 1, outcome  # main: both, the late one having removed the early one's lock
        assert json.loads((dest / LOCK_FILE).read_text())["token"] == held[0].token
        held[0].release()
        assert not list(dest.iterdir())  # no takeover leftovers


def _contend(dest: str, barrier, results) -> None:
    lock = DestLock(Dest(dest), heartbeat=60)
    barrier.wait(timeout=30)
    try:
        lock.acquire()
    except DestLocked:
        results.put("refused")
        os._exit(0)
    results.put(lock.token)
    time.sleep(0.2)  # hold it while the other one decides
    lock.release()
    os._exit(0)


def test_restarts_at_the_same_instant_never_both_hold_the_lock(tmp_path, monkeypatch):
    import resize_pipeline.sinks.lock as lockmod

    monkeypatch.setattr(lockmod, "SETTLE", 0.05)
    ctx = mp.get_context("fork")
    for trial in range(12):
        dest = tmp_path / f"t{trial}"
        dest.mkdir()
        _stale_lock(dest)
        barrier, results = ctx.Barrier(2), ctx.SimpleQueue()
        procs = [ctx.Process(target=_contend, args=(str(dest), barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        got = sorted(results.get() for _ in range(2))
        assert got.count("refused") == 1, (trial, got)


# --------------------------------------------------------------------------------- the loser stops
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_job_whose_lock_was_taken_over_stops_at_once_and_deletes_nothing(src, tmp_path, workers):
    dest, release = tmp_path / "dst", tmp_path / "release"
    # shard writes wait for `release` (the lock and the job's documents do not)
    env = {**cli_env(), **fault_env(tmp_path, hold=str(release), under=str(dest / ".shard-"), lock_heartbeat=0.2)}
    first = subprocess.Popen(cli_cmd(str(src), str(dest), *ARGS, "--workers", workers), env=env,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(dest / "_run.json", first)
        other = {"host": "other-host", "pid": 4242, "token": "b" * 16, "heartbeat": time.time(),
                 "heartbeat_seconds": 10}
        (dest / LOCK_FILE).write_text(json.dumps(other))  # another job took DEST over
        theirs = dest / ".shard-00001.tar.partial-4242-0badc0de"  # ...and is writing a shard
        theirs.write_bytes(b"the other job's temp file")
        t0 = time.time()
        try:
            first.wait(timeout=15)  # it stops while its own shard writes are still held (generous: loaded CI)
        except subprocess.TimeoutExpired:
            pass
        stopped = first.poll() is not None
    finally:
        release.touch()
    _, err = first.communicate(timeout=60)
    assert stopped and first.returncode == 2, err  # main: logs an error, goes on, exit 0
    assert time.time() - t0 < 30
    line = one_line_error(err)
    assert "taken over by another job" in line and "deleted nothing" in line
    assert theirs.read_bytes() == b"the other job's temp file"
    assert json.loads((dest / LOCK_FILE).read_text()) == other
    assert not (dest / "_manifest.json").exists()


def test_sigterm_releases_the_lock(src, tmp_path):
    dest, release = tmp_path / "dst", tmp_path / "release"
    env = {**cli_env(), **fault_env(tmp_path, hold=str(release), under=str(dest / ".shard-"))}
    first = subprocess.Popen(cli_cmd(str(src), str(dest), *ARGS, "--workers", "2"), env=env,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(dest / "_run.json", first)
        time.sleep(0.3)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        release.touch()
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143, err
    assert "terminated (SIGTERM)" in one_line_error(err)
    assert not (dest / LOCK_FILE).exists()  # released: another job may start at once
    r = run_cli(str(src), str(dest), *ARGS, "--workers", "1")
    assert r.returncode == 0 and "taking over" not in r.stderr, r.stderr
    assert json.loads((dest / "_manifest.json").read_text())["counts"]["written"] == 10
