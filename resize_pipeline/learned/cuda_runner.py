"""The frozen resizer CNN as fixed-shape batches: CUDA graphs captured at start-up, one per shape.

`BucketRunner` takes uint8 (B, 3, H, W) batches already on the model's device (from DALI, or from the
host) and returns uint8 (B, 3, h, w). The whole step - uint8 -> float in [0, 1], channels_last, the
CNN under fp16/bf16 autocast, clamp, x255, round, -> uint8 - is one function of fixed shapes, so:

- on CUDA, for each (input size, output size) in ``graph_shapes`` (a bounded set the pipeline knows
  before the first batch: one shape in the fixed-size modes center-crop and stretch, none in the
  modes whose shapes depend on each image's aspect ratio), the step is captured at start-up, at the
  full batch size, with ``torch.cuda.make_graphed_callables`` (PyTorch's maintained capture: warm-up
  on a side stream, capture, static inputs and outputs; "CUDA Graphs" in the PyTorch docs). Nothing
  is captured mid-stream: each batch is one copy into the graph's static input plus one replay, no
  per-layer launch overhead and no host synchronisation. A partial batch is padded up to the full
  batch (the samples are independent: BN is folded, the model is in eval mode), so a shape has one
  graph;
- every graph has **its own memory pool** (``make_graphed_callables`` with ``pool=None`` creates one
  per call): a replay of one shape never writes into memory another shape's graph uses, whatever the
  order in which the data calls them. The output of a replay is the graph's static output tensor:
  it stays valid until the next call **with the same shape** (callers copy it out first: the fused
  stage enqueues its device-to-host copy on the same stream before the next replay), or pass
  ``clone=True``;
- shapes outside ``graph_shapes`` (and everything with graphs off, ``--no-cuda-graphs``, or on a CPU)
  run the same step eagerly, padded to the next bucket (1, 2, 4, ..., batch_size): how its logic is
  tested without a GPU. `path_for` says which way a call goes; `stats` counts replays and eager runs.

Determinism (the bytes of a resume, or of 1 vs 2 workers, must not depend on timing): cuDNN's
``benchmark`` mode times candidate algorithms in each process and may pick different ones, whose
fp16 rounding differs; on CUDA the runner turns it off and asks for deterministic algorithms
(``torch.backends.cudnn.benchmark = False``, ``deterministic = True``): the choice is then a function of
the GPU, the library versions and the shape. The GPU suite measures what this costs.

It works with any module of the resizer contract (ours, TorchScript, ``torch.compile``-wrapped).
Autocast runs with ``cache_enabled=False``: ``make_graphed_callables`` refuses the autocast cache (a
graph must not keep weight casts from a cache that is cleared when the region exits).

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

Shape = tuple[tuple[int, int], tuple[int, int]]  # ((H, W) in, (h, w) out)


def deterministic_cudnn() -> None:
    """cuDNN picks its convolution algorithms by heuristics (no timing) and deterministic ones only:
    the same algorithms in every worker process and every rerun (see the module docstring)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


class BucketRunner:
    """Run a resizer module on fixed-shape, bucket-padded batches; CUDA graphs for `graph_shapes`.

    Args:
        module: the resizer (``module(x, (h, w))``, x float in [0, 1], (B, 3, H, W)).
        device: where the module and the inputs live.
        buckets: the batch sizes, ascending (`inference.batch_buckets`); the largest is the graphs' batch.
        amp_dtype: autocast dtype (``torch.float16`` / ``torch.bfloat16``) or None for fp32.
        channels_last: feed the module channels_last inputs (the fast layout for fp16 convolutions).
        graphs: capture CUDA graphs (only on CUDA devices).
        graph_shapes: the ((H, W), (h, w)) pairs captured at construction (a bounded set).
        warmup: warm-up iterations before each capture.
    """

    def __init__(self, module: Callable[..., torch.Tensor], device: torch.device, buckets: tuple[int, ...], *,
                 amp_dtype: torch.dtype | None = None, channels_last: bool = True, graphs: bool = True,
                 graph_shapes: tuple[Shape, ...] | list[Shape] = (), warmup: int = 3) -> None:
        if not buckets or list(buckets) != sorted(buckets) or buckets[0] < 1:
            raise ValueError(f"buckets must be ascending positive sizes, got {buckets}")
        self.module, self.device, self.buckets = module, torch.device(device), tuple(buckets)
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        self.graphs = bool(graphs) and self.device.type == "cuda"
        self.warmup = warmup
        self.graph_shapes = tuple((tuple(i), tuple(o)) for i, o in graph_shapes) if self.graphs else ()
        #: (H, W, h, w) -> the graphed step at the full batch (`make_graphed_callables`)
        self._graphed: dict[tuple[int, int, int, int], Callable[[torch.Tensor], torch.Tensor]] = {}
        self.stats = {"replays": 0, "eager": 0, "captures": 0, "padded": 0, "graph_images": 0, "eager_images": 0}
        if self.device.type == "cuda":
            deterministic_cudnn()
        for (hh, ww), (h, w) in self.graph_shapes:
            self._graphed[(hh, ww, h, w)] = self._capture(hh, ww, h, w)

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

    def _capture(self, hh: int, ww: int, h: int, w: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The step for (B, 3, hh, ww) -> (h, w) as a graphed callable (its own memory pool), captured
        on this runner's device: `make_graphed_callables` warms up on a new side stream of the
        current device and captures on ``torch.cuda.graph``'s default capture stream, which is made on
        the device current at its first use: both must be ours (finding: `cuda_streams`)."""
        b = self.buckets[-1]
        sample = torch.zeros((b, 3, hh, ww), dtype=torch.uint8, device=self.device)
        if self.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        with torch.cuda.device(self.device), torch.no_grad():
            capture = getattr(torch.cuda.graph, "default_capture_stream", None)
            if capture is not None and capture.device != self.device:
                torch.cuda.graph.default_capture_stream = torch.cuda.Stream(device=self.device)
            graphed: Any = torch.cuda.make_graphed_callables(lambda x: self.step(x, (h, w)), (sample,),
                                                             num_warmup_iters=self.warmup)
        self.stats["captures"] += 1
        log.info("captured a CUDA graph for batch %d, %dx%d -> %dx%d", b, ww, hh, w, h)
        return graphed

    def path_for(self, n: int, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> str:
        """``cuda-graph`` when a call with `n` samples of `in_hw` -> `out_hw` replays a graph, else
        ``cuda-eager`` (``eager`` on a CPU)."""
        if self.device.type != "cuda":
            return "eager"
        key = (int(in_hw[0]), int(in_hw[1]), int(out_hw[0]), int(out_hw[1]))
        return "cuda-graph" if key in self._graphed and n <= self.buckets[-1] else "cuda-eager"

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
        graphed = self._graphed.get((int(hh), int(ww), int(h), int(w)))
        if graphed is not None:
            b = self.buckets[-1]
            if n > b:
                raise ValueError(f"batch of {n} is larger than the largest bucket ({b})")
            if b > n:
                self.stats["padded"] += b - n
                x = torch.cat([x, x.new_zeros((b - n, *x.shape[1:]))])
            out = graphed(x)[:n]  # copies x into the graph's static input, replays
            self.stats["replays"] += 1
            self.stats["graph_images"] += n
            return out.clone() if clone else out
        b = self.bucket(n)
        if b > n:
            self.stats["padded"] += b - n
            x = torch.cat([x, x.new_zeros((b - n, *x.shape[1:]))])
        self.stats["eager"] += 1
        self.stats["eager_images"] += n
        return self.step(x, (h, w))[:n]

    def describe(self) -> dict[str, Any]:
        return {"cuda_graphs": self.graphs, "graph_shapes": [list(map(list, s)) for s in self.graph_shapes],
                "graph_batch": self.buckets[-1] if self._graphed else None, "buckets": list(self.buckets),
                "channels_last": self.channels_last, "captures": self.stats["captures"],
                "memory_pools": "one per graph" if self._graphed else None,
                "cudnn": "deterministic" if self.device.type == "cuda" else None,
                "amp": None if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", "")}
