"""Exceptions and the per-sample error record."""

from __future__ import annotations

import re

#: a bytes literal inside an exception message (``b'\x89PNG...'``): an error record never echoes file
#: contents, whatever library raised it
_BYTES_REPR = re.compile(r"""\bb(['"])(?:\\.|(?!\1).)*\1""")
MAX_MESSAGE = 1000


class ResizePipelineError(Exception):
    """Base class for errors that stop a whole job (bad arguments, unreadable source)."""


class ConfigError(ResizePipelineError, ValueError):
    """A configuration value is invalid."""


class SourceError(ResizePipelineError):
    """The source cannot be listed or read at all."""


class OutputError(ResizePipelineError):
    """The destination cannot be written or holds incompatible output."""


class JobStopped(ResizePipelineError):
    """The job was stopped from outside (another job took its lock, SIGTERM): its workers are ended at
    once, not drained. `exit_code` is the CLI's exit status."""

    exit_code = 2


class SampleError(Exception):
    """A single sample failed; recorded, never fatal for the job."""


class ImageTooLarge(SampleError):
    """Declared image dimensions exceed the decompression-bomb guard."""


class UnsupportedImage(SampleError):
    """The decoder cannot handle this image (mode, format)."""


class DeviceFault(Exception):
    """The device (GPU, or DALI on it) failed, not a sample: a CUDA error, GPU out of memory, a DALI
    or nvJPEG device failure. Never an error row: the worker that saw it dies, and its shards are
    attempted again elsewhere under the attempt cap (`attempts.AttemptLedger`)."""


#: what a device fault says, in the libraries we run on a GPU (matched in an exception's message or
#: in the messages of its causes): PyTorch's CUDA errors (``CUDA error: ...``, ``CUDA out of memory``,
#: cuDNN/cuBLAS statuses), DALI's (``dali/core/cuda_error.h``: ``CUDA runtime API error``, ``CUDA
#: driver API error``, ``CUDABadAlloc``: ``CUDA allocation failed`` / ``Can't allocate N bytes on
#: device D``) and nvImageCodec's statuses that are not about the bitstream (``nvimgcodec.h``:
#: 5 allocator failure, 6 execution failed, 7 arch mismatch, 8 internal error, 15 extension allocator
#: failure, 17 extension internal error, 20 extension execution failed, 21 extension CUDA call error;
#: 3/4/13/14/19, a bad or unsupported code stream, are sample errors)
_DEVICE_FAULT = re.compile(
    r"CUDA error|CUDA out of memory|CUDA runtime API error|CUDA driver API error|CUDA allocation failed"
    r"|bytes on device|cudaError|CUDNN_STATUS|cuDNN error|CUBLAS_STATUS|device-side assert"
    r"|NVJPEG_STATUS_(?:ALLOCATOR_FAILURE|EXECUTION_FAILED|INTERNAL_ERROR|ARCH_MISMATCH)"
    r"|nvImageCodec failure: '#(?:5|6|7|8|15|17|20|21)'"
)
#: exception types that are device faults whatever they say (``torch.OutOfMemoryError``,
#: ``torch.AcceleratorError``: what PyTorch >= 2.8 raises for CUDA errors)
_DEVICE_TYPES = {("torch", "OutOfMemoryError"), ("torch", "AcceleratorError"), ("torch.cuda", "OutOfMemoryError")}


def is_device_fault(exc: BaseException) -> bool:
    """Whether `exc` (or anything in its cause/context chain) is a device fault: see `DeviceFault`.

    Decided from the exception's type and message without importing torch or DALI, so every stage
    can ask (the typed error policy: a sample error becomes an error row, a device fault ends the
    worker, a `ResizePipelineError` ends the job)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DeviceFault):
            return True
        if isinstance(e, (SampleError, ResizePipelineError)):
            return False
        if (type(e).__module__, type(e).__name__) in _DEVICE_TYPES or _DEVICE_FAULT.search(str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


def error_kind(exc: BaseException) -> str:
    """The typed error policy's three kinds: ``job`` (a `ResizePipelineError`: the job stops with one
    line, exit 2), ``device`` (`is_device_fault`: the worker dies, its shards are attempted again
    elsewhere) or ``sample`` (anything else: one error row, or one failed shard attempt)."""
    if isinstance(exc, ResizePipelineError):
        return "job"
    return "device" if is_device_fault(exc) else "sample"


STAGES = ("list", "read", "decode", "resize", "encode", "write")


def error_record(
    *, key: str, source: str, stage: str, exc: BaseException | str, error_type: str = "Error"
) -> dict[str, str]:
    """One line of `_errors.jsonl` (from an exception, or from its type name and message)."""
    if isinstance(exc, BaseException):
        etype, msg = type(exc).__name__, str(exc) or repr(exc)
    else:
        etype, msg = error_type, exc
    return {"key": key, "path": source, "stage": stage, "error_type": etype, "error": clean_message(msg)}


def clean_message(msg: str) -> str:
    """An exception message fit for ``_errors.jsonl``: bytes literals (file contents) replaced by
    ``b'...'``, at most `MAX_MESSAGE` characters."""
    msg = _BYTES_REPR.sub("b'...'", msg)
    return msg if len(msg) <= MAX_MESSAGE else msg[: MAX_MESSAGE - 3] + "..."
