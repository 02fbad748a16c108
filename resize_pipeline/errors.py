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
