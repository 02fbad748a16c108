"""The frozen resizer CNN as fixed-shape batches: one CUDA graph per (batch bucket, input size, output size).

`BucketRunner` takes uint8 (B, 3, H, W) batches already on the model's device (from DALI, or from the
host) and returns uint8 (B, 3, h, w). The whole step — uint8 -> float in [0, 1], channels_last, the
CNN under fp16/bf16 autocast, clamp, x255, round, -> uint8 — is one function of fixed shapes, so:

- on CUDA it is captured once per shape as a CUDA graph (`torch.cuda.CUDAGraph`, warmed up on a side
  stream with ``cudnn.benchmark`` choosing the convolution algorithms, all graphs sharing one memory
  pool, captured in ``thread_local`` mode so the worker's other threads may use CUDA meanwhile) and
  each batch is one ``copy_`` into the graph's static input plus one ``replay()``: no per-layer
  launch overhead (~2 GFLOP/img at 16 channels is many small kernels), no host synchronisation;
- a partial batch is padded up to the next bucket (1, 2, 4, ..., batch_size), so the set of shapes
  stays small (the samples are independent: BN is folded, the model is in eval mode);
- on a CPU (and wherever graphs are off) the same function runs eagerly, bucket-padded the same way:
  that is how its logic is tested without a GPU.

It works with any module of the resizer contract (ours, TorchScript, ``torch.compile``-wrapped).
Autocast runs with ``cache_enabled=False``: a graph must not keep weight casts from a cache that is
cleared when the autocast region exits (PyTorch CUDA-graph notes).

The output of a graph replay is a view of the graph's static output, valid until the next call with
the same shape: callers copy it out (the fused stage's one device-to-host copy, on the same stream,
is enqueued before the next replay) or pass ``clone=True``.

Next step, not done here: a fused Triton kernel for the full-resolution head (7x7 conv 3->16, 1x1
16->16, leaky ReLU, then the bilinear downscale) would cut the head's memory traffic (its 16-channel
activation at 448x448 is written and read back in fp16: ~6.4 MB per image). Whether that is the
limit has to be read off a GPU profile first (``benchmarks/gpu_suite.py`` measures the CNN alone).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

Key = tuple[int, int, int, int, int]  # bucket, H, W, h, w


class BucketRunner:
    """Run a resizer module on fixed-shape, bucket-padded batches; CUDA graphs on CUDA devices.

    Args:
        module: the resizer (``module(x, (h, w))``, x float in [0, 1], (B, 3, H, W)).
        device: where the module and the inputs live.
        buckets: the batch sizes, ascending (`inference.batch_buckets`).
        amp_dtype: autocast dtype (``torch.float16`` / ``torch.bfloat16``) or None for fp32.
        channels_last: feed the module channels_last inputs (the fast layout for fp16 convolutions).
        graphs: capture CUDA graphs (only on CUDA devices).
        max_graphs: shapes captured at most; further shapes run eagerly (shorter-side/longer-side modes
            with many aspect ratios would otherwise capture without end).
    """

    def __init__(self, module: Callable[..., torch.Tensor], device: torch.device, buckets: tuple[int, ...], *,
                 amp_dtype: torch.dtype | None = None, channels_last: bool = True, graphs: bool = True,
                 max_graphs: int = 32, warmup: int = 2) -> None:
        if not buckets or list(buckets) != sorted(buckets) or buckets[0] < 1:
            raise ValueError(f"buckets must be ascending positive sizes, got {buckets}")
        self.module, self.device, self.buckets = module, torch.device(device), tuple(buckets)
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        self.graphs = bool(graphs) and self.device.type == "cuda"
        if self.graphs:
            # shapes are fixed per bucket: let cuDNN time its algorithms once per shape (in the warm-up
            # before each capture) instead of using its heuristics
            torch.backends.cudnn.benchmark = True
        self.max_graphs, self.warmup = max_graphs, warmup
        self._graphs: dict[Key, tuple[Any, torch.Tensor, torch.Tensor] | None] = {}  # None: capture failed
        self._pool = None
        self.stats = {"replays": 0, "eager": 0, "captures": 0, "padded": 0}

    def bucket(self, n: int) -> int:
        """The smallest bucket holding `n` samples (`n` must be at most the largest bucket)."""
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"batch of {n} is larger than the largest bucket ({self.buckets[-1]})")

    # -- the fixed-shape step -----------------------------------------------------------------------
    def step(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> uint8 (B, 3, h, w); `size` is (h, w). Pure function of its input."""
        y = x.float().div_(255.0)
        if self.channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False):
                y = self.module(y, size)
        else:
            y = self.module(y, size)
        return y.float().clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)

    def _capture(self, key: Key) -> tuple[Any, torch.Tensor, torch.Tensor]:
        b, hh, ww, h, w = key
        static_in = torch.zeros((b, 3, hh, ww), dtype=torch.uint8, device=self.device)
        if self.channels_last:
            static_in = static_in.contiguous(memory_format=torch.channels_last)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up outside the graph: cuDNN plans, lazy init, allocations
            for _ in range(self.warmup):
                self.step(static_in, (h, w))
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the worker's other threads (DALI's device copies, the reader) keep using CUDA
        # while this thread captures; only this thread's calls must be capture-safe
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            static_out = self.step(static_in, (h, w))
        self.stats["captures"] += 1
        log.info("captured a CUDA graph for batch %d, %dx%d -> %dx%d", b, ww, hh, w, h)
        return graph, static_in, static_out

    def __call__(self, x: torch.Tensor, size: tuple[int, int], *, clone: bool = False) -> torch.Tensor:
        """uint8 (n, 3, H, W) on `device` -> uint8 (n, 3, h, w); `size` is (h, w). `n` up to the largest
        bucket. See the module docstring for how long a graph's output stays valid."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            raise ValueError(f"expected uint8 input, got {x.dtype}")
        with torch.inference_mode():
            return self._run(x, size, clone)

    def _run(self, x: torch.Tensor, size: tuple[int, int], clone: bool) -> torch.Tensor:
        n, (hh, ww), (h, w) = x.shape[0], x.shape[2:], size
        b = self.bucket(n)
        key = (b, int(hh), int(ww), int(h), int(w))
        if b > n:
            self.stats["padded"] += b - n
        if self.graphs and key not in self._graphs and len(self._graphs) < self.max_graphs:
            try:
                self._graphs[key] = self._capture(key)
            except Exception as exc:  # noqa: BLE001 - the eager run below raises the module's own error
                log.warning("no CUDA graph for batch %d, %dx%d -> %dx%d (%s: %s); running it eagerly",
                            b, ww, hh, w, h, type(exc).__name__, exc)
                self._graphs[key] = None
        captured = self._graphs.get(key) if self.graphs else None
        if captured is not None:
            graph, static_in, static_out = captured
            static_in[:n].copy_(x, non_blocking=True)  # rows n.. keep old data: independent samples
            graph.replay()
            self.stats["replays"] += 1
            out = static_out[:n]
            return out.clone() if clone else out
        self.stats["eager"] += 1
        if b > n:
            x = torch.cat([x, x.new_zeros((b - n, *x.shape[1:]))])
        return self.step(x, (h, w))[:n]

    def describe(self) -> dict[str, Any]:
        return {"cuda_graphs": self.graphs, "buckets": list(self.buckets), "channels_last": self.channels_last,
                "amp": None if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", "")}
