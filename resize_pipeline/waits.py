"""Calls that wait on an object store: each gets a deadline, and what is being waited on is said.

An S3 endpoint that accepts connections but never answers leaves a call blocked for as long as the
client library's own retries multiply its timeouts (botocore x s3fs: tens of minutes). `within`
runs one call on a daemon thread and gives up on it after its deadline with `NoAnswer` (a
`TimeoutError`: the caller retries it or ends the job). A call given up on keeps its thread until the
library returns; it cannot be interrupted, only abandoned.

While a call waits longer than `SHOW_AFTER` seconds (or half its deadline, when that is shorter) it is
listed by `waiting()` (the progress bar shows the longest wait) and logged at INFO (``-v``), as is
giving up on it (the caller retries, or ends the job with one line).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: a call is shown as "waiting" (progress bar, -v) once it has waited this long
SHOW_AFTER = 5.0
#: and logged again every this many seconds while it still waits
LOG_EVERY = 30.0

_lock = threading.Lock()
_waiting: dict[int, tuple[str, float]] = {}


class NoAnswer(TimeoutError):
    """A call to an object store that got no answer within its deadline."""


def waiting() -> list[tuple[str, float]]:
    """(what, seconds waited so far) of every call of this process that waits long enough to be shown,
    longest first."""
    now = time.monotonic()
    with _lock:
        got = [(what, now - t0) for what, t0 in _waiting.values()]
    return sorted(got, key=lambda w: -w[1])


def describe_waits() -> str:
    """The longest wait in words (``waiting on writing s3://b/x (12 s)``), or ""."""
    got = waiting()
    if not got:
        return ""
    what, seconds = got[0]
    more = f" (+{len(got) - 1} more)" if len(got) > 1 else ""
    return f"waiting on {what} ({seconds:.0f} s){more}"


def within(seconds: float | None, fn: Callable[[], T], what: str) -> T:
    """``fn()``, or `NoAnswer` when it has not returned after `seconds` (None: wait as long as it takes,
    still shown as waiting)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            done.set()

    t0 = time.monotonic()
    key = id(box)
    thread = threading.Thread(target=run, name=f"store-call {what[:40]}", daemon=True)
    thread.start()
    shown = False
    show_after = SHOW_AFTER if seconds is None else min(SHOW_AFTER, seconds / 2)
    next_log = t0 + show_after
    try:
        while True:
            now = time.monotonic()
            left = None if seconds is None else t0 + seconds - now
            if done.wait(min(0.25, max(0.0, left)) if left is not None else 0.25):
                break
            now = time.monotonic()
            if not shown and now - t0 >= show_after:
                shown = True
                with _lock:
                    _waiting[key] = (what, t0)
            if now >= next_log:
                limit = f", giving up at {round(seconds, 1):g} s" if seconds is not None else ""
                log.info("waiting on %s: no answer for %.0f s%s", what, now - t0, limit)
                next_log = now + LOG_EVERY
            if seconds is not None and now - t0 >= seconds:
                log.info("no answer from %s within %g s: giving up on it", what, round(seconds, 1))
                raise NoAnswer(f"no answer within {round(seconds, 1):g} s ({what})")
    finally:
        if shown:
            with _lock:
                _waiting.pop(key, None)
    if "error" in box:
        raise box["error"]
    return box["value"]
