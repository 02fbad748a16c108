"""`batch.isolate`, the one failure policy of batched work, and the typed error policy it follows
(`errors.error_kind`): sample errors are narrowed down to their culprits, device faults and job
errors are never bisected."""

from __future__ import annotations

import pytest

from resize_pipeline.batch import isolate
from resize_pipeline.errors import (
    ConfigError,
    DeviceFault,
    OutputError,
    SampleError,
    error_kind,
    is_device_fault,
)

torch = pytest.importorskip("torch")


def _batched(bad: set[int], calls: list[list[int]], exc=ValueError):
    """A batched call that fails (naming no culprit) whenever a bad item is in its batch."""

    def fn(chunk: list[int]) -> list[int]:
        calls.append(list(chunk))
        if bad & set(chunk):
            raise exc(f"batch of {len(chunk)} failed")
        return [x * 10 for x in chunk]

    return fn


def test_sample_errors_are_narrowed_down_to_the_items_that_fail_alone():
    calls: list[list[int]] = []
    out = isolate(_batched({3, 6}, calls), list(range(8)))
    assert [o if not isinstance(o, Exception) else "E" for o in out] == [0, 10, 20, "E", 40, 50, "E", 70]
    assert all(isinstance(out[i], ValueError) for i in (3, 6))
    assert calls[0] == list(range(8))  # one batched call first
    assert [3] in calls and [6] in calls  # each culprit ends alone
    assert len(calls) <= 1 + 2 * 2 * 3  # ~2 log2(n) calls per culprit


def test_a_clean_batch_is_one_call_and_an_empty_one_none():
    calls: list[list[int]] = []
    assert isolate(_batched(set(), calls), [1, 2, 3]) == [10, 20, 30] and calls == [[1, 2, 3]]
    assert isolate(_batched(set(), calls), []) == [] and len(calls) == 1


def test_a_wrong_result_count_is_narrowed_down_like_a_failure():
    out = isolate(lambda chunk: [0] * (len(chunk) - 1) if 2 in chunk else [1] * len(chunk), [1, 2, 3])
    assert out[0] == 1 and out[2] == 1 and isinstance(out[1], RuntimeError)


@pytest.mark.parametrize("fault", [
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("Critical error in pipeline:\nCUDA runtime API error cudaErrorIllegalAddress (700)"),
    MemoryError("Can't allocate 1073741824 bytes on device 0."),
    RuntimeError("Error in MIXED operator decoders.image: nvImageCodec failure: '#6'"),
    DeviceFault("already typed"),
])
def test_a_device_fault_is_raised_at_once_never_bisected(fault):
    calls: list[list[int]] = []

    def fn(chunk):
        calls.append(list(chunk))
        raise fault

    with pytest.raises(DeviceFault) as info:
        isolate(fn, list(range(8)))
    assert calls == [list(range(8))]  # no bisection: a sticky CUDA error would fail every half again
    assert is_device_fault(info.value)


@pytest.mark.parametrize("exc", [OutputError("no space left on the destination"), ConfigError("bad")])
def test_a_job_error_is_raised_as_it_is(exc):
    calls: list[list[int]] = []

    def fn(chunk):
        calls.append(chunk)
        raise exc

    with pytest.raises(type(exc)):
        isolate(fn, [1, 2, 3, 4])
    assert len(calls) == 1


def test_error_kinds():
    assert error_kind(OutputError("x")) == "job"
    assert error_kind(SampleError("truncated JPEG")) == "sample"
    assert error_kind(OSError("image file is truncated")) == "sample"
    # a bad code stream is the sample's fault; an allocator failure is the device's
    assert error_kind(RuntimeError("nvImageCodec failure: '#3'\nCurrent pipeline object is no longer valid.")) == "sample"
    assert error_kind(RuntimeError("nvImageCodec failure: '#5'")) == "device"
    wrapped = ValueError("resizer failed on input (8, 3, 448, 448)")
    wrapped.__cause__ = torch.OutOfMemoryError("CUDA out of memory")
    assert error_kind(wrapped) == "device"  # found through the cause chain
    assert error_kind(SampleError("CUDA error in the file name, not the device")) == "sample"
