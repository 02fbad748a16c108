import threading
import time

import pytest

from resize_pipeline.config import ConvertConfig
from resize_pipeline.engine.overlap import overlapped, should_overlap


def test_order_is_kept_and_stages_run_concurrently():
    seen = set()

    def stage(name, delay):
        def fn(x):
            seen.add(threading.current_thread().name)
            time.sleep(delay)
            return x + [name]
        return fn

    out = list(overlapped(([i] for i in range(6)), [stage("a", 0.02), stage("b", 0.001), stage("c", 0.01)]))
    assert out == [[i, "a", "b", "c"] for i in range(6)]
    assert len(seen) == 3  # one thread per stage


def test_stage_error_reaches_the_consumer_and_threads_stop():
    def boom(x):
        if x == 3:
            raise ValueError("bad batch")
        return x

    before = threading.active_count()
    with pytest.raises(ValueError, match="bad batch"):
        list(overlapped(iter(range(10)), [lambda x: x, boom]))
    time.sleep(0.3)
    assert threading.active_count() <= before


def test_source_error_reaches_the_consumer():
    def items():
        yield 1
        raise OSError("listing broke")

    with pytest.raises(OSError, match="listing broke"):
        list(overlapped(items(), [lambda x: x]))


def test_auto_policy():
    assert not should_overlap(ConvertConfig("/data", "/out"))  # CPU-only, local: off (measured slower)
    assert should_overlap(ConvertConfig("s3://bucket/data", "/out"))  # remote reads: on
    assert should_overlap(ConvertConfig("/data", "/out", overlap=True))
    assert not should_overlap(ConvertConfig("s3://b/d", "/out", overlap=False))
