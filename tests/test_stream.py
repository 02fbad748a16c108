"""The per-worker stream: order kept, steps concurrent, stage errors fail their shard attempt only,
lagged steps flush on IDLE."""

import threading
import time

import pytest

from resize_pipeline.config import ConvertConfig
from resize_pipeline.preflight import Resolved
from resize_pipeline.runner import should_overlap
from resize_pipeline.stream import IDLE, Attempt, Work, chain, lagged, map_step


def works(n, state=None):
    return [Work("t", 1, i, i == n - 1, {"v": [i]}, state=state) for i in range(n)]


@pytest.mark.parametrize("overlap", [True, False])
def test_order_is_kept_and_steps_run_concurrently(overlap):
    seen = set()

    def stage(name, delay):
        def fn(b):
            seen.add(threading.current_thread().name)
            time.sleep(delay)
            return {"v": b["v"] + [name]}
        return map_step(fn)

    out = list(chain(works(6), [stage("a", 0.02), stage("b", 0.001), stage("c", 0.01)], overlap=overlap))
    assert [w.batch["v"] for w in out] == [[i, "a", "b", "c"] for i in range(6)]
    assert len(seen) == (3 if overlap else 1)  # one thread per step when overlapped


@pytest.mark.parametrize("overlap", [True, False])
def test_a_stage_error_fails_the_work_not_the_stream(overlap):
    calls = []

    def boom(b):
        if b["v"] == [3]:
            raise ValueError("bad batch")
        return b

    def after(b):
        calls.append(b["v"][0])
        return b

    out = list(chain(works(6), [map_step(boom), map_step(after)], overlap=overlap))
    assert [w.seq for w in out] == list(range(6))
    assert isinstance(out[3].error, ValueError) and all(w.error is None for w in out if w.seq != 3)
    assert calls == [0, 1, 2, 4, 5]  # the failed work skipped the later step


def test_failed_attempt_skips_its_remaining_works():
    state = Attempt()
    ran = []

    def step(b):
        ran.append(b["v"][0])
        if b["v"][0] == 1:
            state.failed = True  # what the runner does when the shard fails
        return b

    list(chain(works(5, state), [map_step(step)]))
    assert ran == [0, 1]


def test_lagged_keeps_one_in_flight_and_flushes_on_idle():
    log = []

    def submit(b):
        log.append(("submit", b["v"][0]))
        return b

    def finish(b):
        log.append(("finish", b["v"][0]))
        return b

    items = works(2) + [IDLE] + works(1)
    out = list(lagged(submit, finish)(iter(items)))
    assert log == [("submit", 0), ("submit", 1), ("finish", 0), ("finish", 1), ("submit", 0), ("finish", 0)]
    assert [o if o is IDLE else o.seq for o in out] == [0, 1, IDLE, 0]


def test_source_error_reaches_the_consumer():
    def items():
        yield works(1)[0]
        raise OSError("listing broke")

    with pytest.raises(OSError, match="listing broke"):
        list(chain(items(), [map_step(lambda b: b)], overlap=True))


def test_auto_policy():
    cpu = Resolved("cpu", "pillow", False)
    gpu = Resolved("cuda", "dali-mixed", True)
    assert not should_overlap(ConvertConfig("/data", "/out"), cpu)  # CPU-only, local: off (measured slower)
    assert should_overlap(ConvertConfig("/data", "/out"), gpu)
    assert should_overlap(ConvertConfig("s3://bucket/data", "/out"), cpu)  # remote reads: on
    assert should_overlap(ConvertConfig("/data", "/out", overlap=True), cpu)
    assert not should_overlap(ConvertConfig("s3://b/d", "/out", overlap=False), cpu)
