"""`CudaLane`: one GPU as a worker's GPU stages use it: its device set in every thread that touches it,
explicit streams, and events recorded on the stream that did the work.

Why: the current device is per host thread (CUDA runtime, ``cudaSetDevice``: "the device ... for the
calling host thread"; torch's current stream follows it, per thread too), and a new thread starts
on device 0 with its default stream. A worker's GPU stages run in
several threads (the stream's decode step and resize step each have one, `stream.chain`); on
``--device cuda:N`` with N >= 1, anything left to the defaults lands on GPU 0: an event made with
``torch.cuda.Event()`` and ``record()`` is recorded on GPU 0's current stream, so waiting on it does
not wait for the copy that ran on GPU N; ``torch.cuda.graph``'s default capture stream is created on
whatever device was current at its first use. So every GPU call of the fused stage runs inside
`on` (the lane's device, one of its streams), and every wait is on an event recorded on the stream
that did the work (`mark`), made with ``blocking=True`` (``cudaEventBlockingSync``): "If the
cudaEventBlockingSync flag has not been set, then the CPU thread will busy-wait until the event has
been completed" (CUDA runtime, ``cudaEventSynchronize``), on the cores the encoder needs.

Two streams: ``decode`` (DALI's outputs are handed to torch on it: `decode.dali.to_torch`) and
``compute`` (the CNN and the device-to-host copy). The compute stream waits for the decode stream's
event of the same batch (``wait_event``: on the GPU, no host wait), so the CNN of batch k overlaps
DALI's hand-off of batch k+1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class CudaLane:
    """GPU `device` (``cuda:N``, as the worker sees it) with a decode and a compute stream."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"a CUDA lane needs a CUDA device, got {device!r}")
        self.index = self.device.index if self.device.index is not None else 0
        with torch.cuda.device(self.index):
            self.decode = torch.cuda.Stream(device=self.device)
            self.compute = torch.cuda.Stream(device=self.device)

    @contextlib.contextmanager
    def on(self, stream: Any) -> Iterator[None]:
        """This thread's current device is the lane's and its current stream is `stream`, for the
        duration (restored after: the caller's thread may use other devices)."""
        torch = self.torch
        with torch.cuda.device(self.index), torch.cuda.stream(stream):
            yield

    def mark(self, stream: Any) -> Any:
        """A blocking event recorded on `stream` now: what was enqueued there before is done when it is."""
        event = self.torch.cuda.Event(blocking=True)
        event.record(stream)
        return event

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "streams": ["decode", "compute"]}
