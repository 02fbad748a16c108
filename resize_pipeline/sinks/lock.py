"""One job per DEST: ``_lock.json`` (host, pid, heartbeat), held by the driver while a job writes.

A second job on the same DEST is refused (`DestLocked`, exit 2, one line) while the first runs. The
holder rewrites the lock's ``heartbeat`` every `HEARTBEAT` seconds and removes it on exit. A lock is
*stale* (taken over, with a warning) when

- it was written on this host and its process is gone (or the pid now belongs to another process:
  the recorded process start time differs), or
- its heartbeat is older than `STALE_AFTER` x `HEARTBEAT` seconds (a job on another host that was
  killed; this compares the other host's clock with ours, so clocks must agree to within that).

On a local disk the lock is created with ``O_EXCL`` (two jobs cannot both create it). Object stores
have no such create: the job writes its lock, waits `SETTLE` seconds and reads it back; if another
job's lock replaced it, this one backs off. Two jobs starting within that window on an object store
can still both see their own lock in rare interleavings (the store's last writer wins, but reads may
lag on stores without read-after-write consistency); the lock narrows the window to about `SETTLE`
seconds, it does not close it. ``memory://`` lives in one process: the same read-back applies.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import secrets
import socket
import threading
import time
from typing import Any

from resize_pipeline.errors import OutputError
from resize_pipeline.layout import LOCK_FILE
from resize_pipeline.version import __version__

log = logging.getLogger(__name__)

HEARTBEAT = 10.0
STALE_AFTER = 6
SETTLE = 1.0


class DestLocked(OutputError):
    """Another job holds DEST's lock."""


def _process_start(pid: int) -> str | None:
    """When process `pid` started (Linux clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


class DestLock:
    """The lock of one DEST (a `sinks.dest.Dest`); a context manager.

    Args:
        dest: the destination.
        heartbeat: seconds between heartbeats.
        stale_after: heartbeats missed before a lock from another host counts as abandoned.
    """

    def __init__(self, dest: Any, heartbeat: float = HEARTBEAT, stale_after: int = STALE_AFTER) -> None:
        self.dest, self.heartbeat, self.stale_after = dest, heartbeat, stale_after
        self.token = secrets.token_hex(8)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    # -- the record ----------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        now = time.time()
        return {"tool": "resize_pipeline", "version": __version__, "host": self.host, "pid": self.pid,
                "process_start": _process_start(self.pid), "token": self.token, "heartbeat": now,
                "heartbeat_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "heartbeat_seconds": self.heartbeat}

    def read(self) -> dict[str, Any] | None:
        """The lock as found (None: no lock; {} : a lock that is not a valid record)."""
        try:
            got = self.dest.read_json(LOCK_FILE)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return got if isinstance(got, dict) else {}

    def stale(self, lock: dict[str, Any]) -> str | None:
        """Why `lock` is abandoned, or None when its job may still run."""
        try:
            beat = float(lock.get("heartbeat", 0))
            every = float(lock.get("heartbeat_seconds", self.heartbeat))
            pid = int(lock.get("pid", -1))
        except (TypeError, ValueError):
            return "the lock file is not a valid lock record"
        if lock.get("host") == self.host and pid > 0:
            start = lock.get("process_start")
            if not _alive(pid, str(start) if start is not None else None):
                return f"process {pid} on this host is gone"
            return None
        age = time.time() - beat
        if age > self.stale_after * every:
            return f"its last heartbeat was {age:.0f} s ago"
        return None

    def describe(self, lock: dict[str, Any]) -> str:
        age = time.time() - float(lock.get("heartbeat", 0) or 0)
        return f"host {lock.get('host', '?')}, pid {lock.get('pid', '?')}, last heartbeat {age:.0f} s ago"

    # -- acquire / release ---------------------------------------------------------------------
    def acquire(self) -> DestLock:
        """Take the lock, or raise `DestLocked` (one line) if a live job holds it."""
        found = self.read()
        if found is not None:
            why = self.stale(found) if found else "the lock file is not a valid lock record"
            if why is None:
                raise self._refusal(found)
            log.warning("taking over the lock of %s: %s", self.dest.url, why)
            self.dest.remove(LOCK_FILE)
        if self.dest.local:
            self._create_exclusive()
        else:
            self.dest.write_json(self.record(), LOCK_FILE)
            time.sleep(SETTLE)
            now = self.read()
            if not now or now.get("token") != self.token:
                raise self._refusal(now or {})
        self.held = True
        self._thread = threading.Thread(target=self._beat, name="dest-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _create_exclusive(self) -> None:
        path = self.dest.path(LOCK_FILE)
        data = json.dumps(self.record(), indent=1, sort_keys=True).encode()

        def create() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

        try:
            self.dest.call(f"creating {LOCK_FILE}", create)
        except FileExistsError:
            raise self._refusal(self.read() or {}) from None

    def _refusal(self, lock: dict[str, Any]) -> DestLocked:
        where = posixpath.join(self.dest.url, LOCK_FILE)
        return DestLocked(f"{self.dest.url} is being written by another job ({self.describe(lock)}); wait for it "
                          f"to finish, or if it is gone, delete {where} (a lock is taken over automatically "
                          f"{self.stale_after * self.heartbeat:.0f} s after its last heartbeat, or at once when "
                          "its process on this host has died)")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                current = self.read()
                if current is not None and current.get("token") not in (None, self.token):
                    log.error("the lock of %s was taken by another job (%s)", self.dest.url, self.describe(current))
                    return
                self.dest.write_json(self.record(), LOCK_FILE)
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is not fatal; the next one retries
                log.warning("could not refresh the lock of %s: %s", self.dest.url, exc)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if not self.held:
            return
        self.held = False
        try:
            current = self.read()
            if current is not None and current.get("token") in (None, self.token):
                self.dest.remove(LOCK_FILE)
        except Exception as exc:  # noqa: BLE001 - the job's own outcome matters more
            log.warning("could not remove the lock of %s: %s", self.dest.url, exc)

    def __enter__(self) -> DestLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
