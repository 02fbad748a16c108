"""`DestLock`: one job per DEST; stale locks (dead process here, old heartbeat elsewhere) taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from resize_pipeline.layout import LOCK_FILE
from resize_pipeline.sinks.dest import Dest
from resize_pipeline.sinks.lock import DestLock, DestLocked


def test_acquire_refuse_release(tmp_path):
    dest = Dest(str(tmp_path))
    with DestLock(dest, heartbeat=0.05) as lock:
        rec = json.loads((tmp_path / LOCK_FILE).read_text())
        assert (rec["pid"], rec["token"]) == (os.getpid(), lock.token)
        with pytest.raises(DestLocked, match="another job"):
            DestLock(dest).acquire()
        first = rec["heartbeat"]
        deadline = time.time() + 10
        while json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.02)
        assert json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"] > first  # the heartbeat runs
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_dead_process_on_this_host_is_stale(tmp_path):
    dest = Dest(str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = DestLock(dest)
    rec = dict(lock.record(), pid=int(dead.stdout), token="0" * 16)
    (tmp_path / LOCK_FILE).write_text(json.dumps(rec))
    assert "gone" in lock.stale(rec)
    with lock:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == lock.token


def test_a_reused_pid_is_stale(tmp_path):
    lock = DestLock(Dest(str(tmp_path)))
    rec = dict(lock.record(), process_start="1")  # this pid, but a process that started at another time
    assert lock.stale(rec) is not None
    assert lock.stale(lock.record()) is None


def test_an_unreadable_lock_is_replaced(tmp_path):
    (tmp_path / LOCK_FILE).write_text("{torn")
    with DestLock(Dest(str(tmp_path))):
        pass
    assert not (tmp_path / LOCK_FILE).exists()


def test_memory_store_uses_write_and_read_back(monkeypatch):
    import resize_pipeline.sinks.lock as lockmod

    monkeypatch.setattr(lockmod, "SETTLE", 0.0)
    dest = Dest("memory://locktest")
    with DestLock(dest) as lock:
        assert dest.read_json(LOCK_FILE)["token"] == lock.token
        with pytest.raises(DestLocked):
            DestLock(dest).acquire()
    assert not dest.exists(LOCK_FILE)
