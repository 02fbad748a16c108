"""One job per DEST: ``_lock.json`` (host, pid, heartbeat), held by the driver while a job writes.

A second job on the same DEST is refused (`DestLocked`, exit 2, one line) while the first runs. The
holder rewrites the lock's ``heartbeat`` every `HEARTBEAT` seconds and removes it on exit (also on
errors, Ctrl-C and SIGTERM). A lock is *stale* (taken over, with a warning) when

- its process is provably ours to check and gone: the lock was written under this very kernel boot
  (``/proc/sys/kernel/random/boot_id``) *and* in this PID namespace (``/proc/self/ns/pid``), and that
  pid is not running (or now belongs to a process that started at another time). A host name proves
  nothing: a container with host networking, a ``hostNetwork`` pod or a cloned VM share it while their
  pids mean nothing here;
- otherwise, only when its heartbeat is older than `STALE_AFTER` x `HEARTBEAT` seconds (a job
  elsewhere that was killed; this compares the other machine's clock with ours, so clocks must agree
  to within that).

Taking a stale lock over is atomic on a local disk: the stale file is *renamed* aside (of two jobs,
only one can move it), the mover checks that what it moved is the very lock it judged stale (else it
puts it back and backs off), then creates its own with ``O_EXCL``. Object stores have neither rename
nor exclusive create: a job writes its lock, waits `SETTLE` seconds and reads it back, and backs off if
another job's lock replaced it; two jobs starting within that window can still both see their own
lock in rare interleavings (the lock narrows the race, it does not close it). ``memory://`` lives in
one process: the same read-back applies. After every takeover the lock is read back after `SETTLE`
seconds (the previous holder's last heartbeat may land just after the takeover).

A job that finds its lock taken by another job (its heartbeat reads another job's token) stops at
once: `LockLost` (exit 2, one line) is raised in the job's main thread, it deletes nothing (no temp
file clean-up, no manifest) and leaves the lock to its new holder. SIGTERM while the lock is held
raises `Terminated` in the main thread: the job unwinds, removes its lock and exits with 143.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import secrets
import signal
import socket
import threading
import time
from typing import Any

from resize_pipeline.errors import JobStopped, OutputError
from resize_pipeline.layout import LOCK_FILE
from resize_pipeline.version import __version__

log = logging.getLogger(__name__)

HEARTBEAT = 10.0
STALE_AFTER = 6
SETTLE = 1.0


class DestLocked(OutputError):
    """Another job holds DEST's lock."""


class LockLost(JobStopped, OutputError):
    """Another job took this job's lock over: this job stops at once and deletes nothing."""


class Terminated(JobStopped):
    """SIGTERM: the job unwinds, releasing its lock."""

    exit_code = 128 + signal.SIGTERM


def _read_text(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """When process `pid` started (Linux clock ticks since boot), to tell a reused pid apart."""
    text = _read_text(f"/proc/{pid}/stat")
    try:
        return text.rsplit(")", 1)[1].split()[19] if text else None
    except IndexError:
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
        stale_after: heartbeats missed before a lock whose process cannot be checked counts as abandoned.
    """

    def __init__(self, dest: Any, heartbeat: float = HEARTBEAT, stale_after: int = STALE_AFTER) -> None:
        self.dest, self.heartbeat, self.stale_after = dest, heartbeat, stale_after
        self.token = secrets.token_hex(8)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.boot_id = _read_text("/proc/sys/kernel/random/boot_id")
        self.pid_ns = _pid_namespace()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_handler: Any = None
        self._main: int | None = None
        self.held = False
        #: set when another job took the lock over (why, in words)
        self.lost: str | None = None

    # -- the record ----------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        now = time.time()
        return {"tool": "resize_pipeline", "version": __version__, "host": self.host, "pid": self.pid,
                "process_start": _process_start(self.pid), "boot_id": self.boot_id, "pid_ns": self.pid_ns,
                "token": self.token, "heartbeat": now,
                "heartbeat_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "heartbeat_seconds": self.heartbeat}

    def _raw(self) -> bytes | None:
        """The lock file's bytes (None: no lock)."""
        try:
            with self.dest.fs.open(self.dest.path(LOCK_FILE), "rb") as fh:
                return bytes(fh.read(1 << 20))
        except FileNotFoundError:
            return None

    @staticmethod
    def _parse(raw: bytes | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            got = json.loads(raw.decode("utf-8"))
        except ValueError:
            return {}
        return got if isinstance(got, dict) else {}

    def read(self) -> dict[str, Any] | None:
        """The lock as found (None: no lock; {} : a lock that is not a valid record)."""
        try:
            return self._parse(self.dest.call(f"reading {LOCK_FILE}", self._raw))
        except OutputError:
            raise
        except (OSError, ValueError):
            return {}

    def provably_ours(self, lock: dict[str, Any]) -> bool:
        """Whether `lock`'s pid can be checked here: same kernel boot and same PID namespace."""
        return (self.boot_id is not None and self.pid_ns is not None
                and lock.get("boot_id") == self.boot_id and lock.get("pid_ns") == self.pid_ns)

    def stale(self, lock: dict[str, Any]) -> str | None:
        """Why `lock` is abandoned, or None when its job may still run."""
        try:
            beat = float(lock.get("heartbeat", 0))
            every = float(lock.get("heartbeat_seconds", self.heartbeat))
            pid = int(lock.get("pid", -1))
        except (TypeError, ValueError, OverflowError):
            return "the lock file is not a valid lock record"
        if self.provably_ours(lock) and pid > 0:
            start = lock.get("process_start")
            if not _alive(pid, str(start) if start is not None else None):
                return f"process {pid} on this host is gone"
            return None
        age = time.time() - beat
        if not every > 0 or age > self.stale_after * every:  # (NaN: not a heartbeat this tool wrote)
            return f"its last heartbeat was {age:.0f} s ago"
        return None

    def describe(self, lock: dict[str, Any]) -> str:
        try:
            age = f"{time.time() - float(lock.get('heartbeat', 0) or 0):.0f} s ago"
        except (TypeError, ValueError, OverflowError):
            age = "unknown"
        return f"host {str(lock.get('host', '?'))[:100]}, pid {str(lock.get('pid', '?'))[:20]}, last heartbeat {age}"

    # -- acquire / release ---------------------------------------------------------------------
    def acquire(self) -> DestLock:
        """Take the lock, or raise `DestLocked` (one line) if a live job holds it."""
        raw = self.dest.call(f"reading {LOCK_FILE}", self._raw)
        found = self._parse(raw)
        if found is None:
            self._create()
        else:
            why = self.stale(found) if found else "the lock file is not a valid lock record"
            if why is None:
                raise self._refusal(found)
            log.warning("taking over the lock of %s: %s", self.dest.url, why)
            self._take_over(raw or b"", found)
            time.sleep(SETTLE)  # the previous holder's last heartbeat may land just after the takeover
            now = self.read()
            if not now or now.get("token") != self.token:
                raise self._refusal(now or {})
        self.held = True
        self._install_signal_handler()
        self._thread = threading.Thread(target=self._beat, name="dest-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _create(self) -> None:
        if self.dest.local:
            self._create_exclusive()
            return
        self.dest.write_json(self.record(), LOCK_FILE)
        time.sleep(SETTLE)
        now = self.read()
        if not now or now.get("token") != self.token:
            raise self._refusal(now or {})

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

    def _take_over(self, judged: bytes, found: dict[str, Any]) -> None:
        """Replace the stale lock whose bytes were `judged`, atomically on a local disk."""
        if not self.dest.local:
            if self.dest.call(f"reading {LOCK_FILE}", self._raw) != judged:  # changed since: not stale
                raise self._refusal(self.read() or {})
            self.dest.write_json(self.record(), LOCK_FILE)
            return
        from resize_pipeline.sinks.dest import temp_name

        path = self.dest.path(LOCK_FILE)
        aside = posixpath.join(posixpath.dirname(path), temp_name(LOCK_FILE))
        try:
            os.rename(path, aside)  # of two jobs taking it over, exactly one moves this file
        except FileNotFoundError:  # moved (or released) by another job meanwhile: create, or be refused
            self._create_exclusive()
            return
        try:
            with open(aside, "rb") as fh:
                moved = fh.read(1 << 20)
        except OSError:
            moved = b""
        if moved != judged:  # another job's lock, written since we judged: put it back untouched
            try:
                os.link(aside, path)  # never over a lock created meanwhile
            except FileExistsError:
                pass
            finally:
                os.unlink(aside)
            raise self._refusal(self._parse(moved) or found)
        os.unlink(aside)
        self._create_exclusive()

    def _refusal(self, lock: dict[str, Any]) -> DestLocked:
        where = posixpath.join(self.dest.url, LOCK_FILE)
        return DestLocked(f"{self.dest.url} is being written by another job ({self.describe(lock)}); wait for it "
                          f"to finish, or if it is gone, delete {where} (a lock is taken over automatically "
                          f"{self.stale_after * self.heartbeat:.0f} s after its last heartbeat, or at once when "
                          "its process on this host has died)")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                # a read that fails is retried at the next beat; a lock that reads as another job's
                # (or as garbage: our own writes are whole) is lost
                current = self._parse(self.dest.call(f"reading {LOCK_FILE}", self._raw))
                if current is not None and current.get("token") != self.token:
                    self._lose(current)
                    return
                if current is None:
                    log.warning("the lock of %s was removed while this job holds it; writing it again", self.dest.url)
                self.dest.write_json(self.record(), LOCK_FILE)
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is not fatal; the next one retries
                log.warning("could not refresh the lock of %s: %s", self.dest.url, exc)

    def _lose(self, current: dict[str, Any]) -> None:
        """Another job took the lock over: stop this job at once (see `check`)."""
        holder = self.describe(current) if current else "a lock file that is not a valid record"
        self.lost = (f"the lock of {self.dest.url} was taken over by another job ({holder}): this job stopped at "
                     "once and deleted nothing; make sure only one job writes this destination, then rerun")
        log.info("%s", self.lost)  # the job's one line says it (LockLost)
        if self._main is not None:  # our handler is installed in the main thread: interrupt it now
            signal.pthread_kill(self._main, signal.SIGTERM)

    def check(self) -> None:
        """Raise `LockLost` if another job took the lock over (the driver calls this between steps)."""
        if self.lost:
            raise LockLost(self.lost)

    # -- SIGTERM -------------------------------------------------------------------------------
    def _install_signal_handler(self) -> None:
        """While the lock is held, SIGTERM (and a lost lock) raise in the main thread, so the job
        unwinds through its ``finally`` blocks (releasing the lock). Only from the main thread, and
        only over the default disposition (an application's own handler is left alone)."""
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_signal)
        except (ValueError, OSError):  # not the main interpreter
            return
        self._main = threading.main_thread().ident

    def _restore_signal_handler(self) -> None:
        if self._main is None:
            return
        self._main = None
        try:
            if signal.getsignal(signal.SIGTERM) == self._on_signal:
                signal.signal(signal.SIGTERM, self._previous_handler)
        except (ValueError, OSError):
            pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a forked worker inherited the handler: die as SIGTERM says
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.lost:
            raise LockLost(self.lost)
        raise Terminated("terminated (SIGTERM); the lock of DEST is released: rerun the same command to resume")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (never after it was lost)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._restore_signal_handler()
        if not self.held:
            return
        self.held = False
        if self.lost:
            return
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
