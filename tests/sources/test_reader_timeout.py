"""`ReadPool`: each read bounded by a timeout; a stuck read fails alone and its thread is replaced."""

from __future__ import annotations

import threading
import time

from resize_pipeline.sources.reader import ReadPool, ReadTimeout


def test_a_stuck_read_fails_alone_and_the_pool_keeps_its_size():
    pool = ReadPool(2)
    release = threading.Event()

    def stuck():
        release.wait(30)
        return b"late"

    try:
        out = pool.map([lambda: b"a", stuck, lambda: b"b", stuck, lambda: b"c"], timeout=0.3)
        assert out[0::2] == [b"a", b"b", b"c"]
        assert all(isinstance(x, ReadTimeout) for x in out[1::2])
        assert pool.stuck == 2
        assert pool.map([lambda: b"d"] * 4, timeout=5) == [b"d"] * 4  # replacements serve the next batch
    finally:
        release.set()
    deadline = time.time() + 5
    while pool.stuck and time.time() < deadline:
        time.sleep(0.01)
    assert pool.stuck == 0


def test_exceptions_come_back_in_place_and_no_timeout_waits():
    pool = ReadPool(3)

    def boom():
        raise FileNotFoundError("gone")

    out = pool.map([lambda: 1, boom, lambda: 3], timeout=None)
    assert out[0] == 1 and isinstance(out[1], FileNotFoundError) and out[2] == 3
