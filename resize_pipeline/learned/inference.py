"""Batched inference with the frozen learned resizer: the `Resizer` the pipeline's resize stage uses.

Per image: crop ``op.box`` and resize to ``input_scale x op.size`` with Pillow's antialiased bilinear
(one Pillow call), then the CNN maps that to exactly ``op.size``. Images with the same (input, output)
shapes are batched; a partial batch is padded up to a fixed bucket size (1, 2, 4, ..., batch_size) so
shapes repeat (no recompiles with ``compile=True``, stable cuDNN plans). BN is folded at export,
tensors are channels_last, CUDA (and CPUs with native bf16) run under bf16/fp16 autocast, and the
output is clamped and converted to uint8 exactly once (`resize_tensor`).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resize_pipeline.errors import is_device_fault
from resize_pipeline.geometry import ResizeOp
from resize_pipeline.learned.export import load_resizer_module
from resize_pipeline.learned.precision import PRECISIONS, cpu_has_native_bf16, resolve_precision  # noqa: F401
from resize_pipeline.learned.util import resolve_device
from resize_pipeline.resize.base import Resizer

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "default"


def default_weights_path() -> Path:
    return DEFAULT_WEIGHTS


def batch_buckets(batch_size: int) -> tuple[int, ...]:
    """Powers of two below `batch_size`, then `batch_size` itself."""
    sizes, b = [], 1
    while b < batch_size:
        sizes.append(b)
        b *= 2
    return (*sizes, batch_size)


class LearnedResizer(Resizer):
    """The learned CNN resizer (bundled default, an exported directory, TorchScript or ``.pt2``).

    Args:
        path: exported resizer directory / config.json / .safetensors, a TorchScript file or a
            torch.export ``.pt2`` program; None -> the bundled default checkpoint.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``...
        batch_size: largest batch sent to the CNN (also the largest padding bucket).
        precision: ``auto`` = bf16 (or fp16) autocast on CUDA; on CPU bf16 autocast where the CPU has
            native bf16 (AVX512-BF16 / AMX), else fp32. ``fp32`` for bit-stable output across machines.
        compile: wrap the module in ``torch.compile`` (static shapes thanks to the buckets).
        threads: ``torch.set_num_threads`` for CPU inference (None: leave as is).
        cuda_graphs: on CUDA, run uint8 batches of `graph_shapes` as CUDA graphs captured here, at
            construction (`cuda_runner.BucketRunner`); off: eager.
        graph_shapes: the (w, h) output sizes whose CNN runs as a CUDA graph (the input is
            `input_size` of each); empty: every call eager. The pipeline passes its one output size in
            the fixed-size modes (center-crop, stretch).
        sample_threads: on a CPU, run the CNN one sample at a time with one torch thread, this many
            samples at once in a thread pool (the pipeline's way). torch's CPU kernels split an op
            over its intra-op threads and round differently at the split points (1 grey level on a few
            pixels, bf16 and fp32, measured), so batched multi-threaded output depends on how many
            threads a worker has, i.e. on the worker count; one sample on one thread does not. This
            sets torch's thread count of the process to 1. None: batched, torch's threads as they are.
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        device: str = "auto",
        batch_size: int = 64,
        precision: str = "auto",
        compile: bool = False,
        channels_last: bool = True,
        threads: int | None = None,
        cuda_graphs: bool = True,
        graph_shapes: Sequence[tuple[int, int]] = (),
        sample_threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        self.path = str(path) if path is not None else str(DEFAULT_WEIGHTS)
        module, meta = load_resizer_module(self.path)
        self.meta: dict[str, Any] = meta
        self.device = resolve_device(device)
        self._pool = None
        if sample_threads and self.device.type == "cpu":
            from concurrent.futures import ThreadPoolExecutor

            torch.set_num_threads(1)
            self._pool = ThreadPoolExecutor(int(sample_threads), thread_name_prefix="resizer")
        elif threads:
            torch.set_num_threads(threads)
        self.channels_last = channels_last
        module = module.to(self.device)
        if meta.get("format") != "torch.export":  # exported programs refuse eval(); they are frozen anyway
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.module = torch.compile(module, dynamic=False) if compile else module
        self.name = "learned"
        self.input_scale = float(meta["input_scale"])
        self.sha256 = str(meta.get("sha256", ""))
        self.batch_size = batch_size
        self.buckets = batch_buckets(batch_size)
        self.precision = precision = resolve_precision(precision, self.device.type)
        self._amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        #: on CUDA, uint8 batches go through fixed-shape CUDA graphs (`cuda_runner`)
        self._runner = None
        if self.device.type == "cuda":
            from resize_pipeline.learned.cuda_runner import BucketRunner

            shapes = [((self.input_size(size)[1], self.input_size(size)[0]), (size[1], size[0]))
                      for size in graph_shapes]
            self._runner = BucketRunner(self.module, self.device, self.buckets, amp_dtype=self._amp_dtype,
                                        channels_last=channels_last, graphs=cuda_graphs, graph_shapes=shapes)
        log.info(
            "learned resizer %s on %s (%s, sha256 %s)", self.path, self.device, precision, self.sha256[:12]
        )

    # -- tensor level (GPU pipelines keep data on the device) -----------------------------------------

    def input_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (w, h) the CNN wants as input for an output of `size` (w, h)."""
        return max(1, round(size[0] * self.input_scale)), max(1, round(size[1] * self.input_scale))

    def path_for(self, n: int, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> str:
        """How a `resize_tensor` call of `n` uint8 samples (H, W) -> (h, w) runs: ``cuda-graph``,
        ``cuda-eager`` or ``eager`` (a CPU)."""
        if self._runner is None:
            return "eager"
        return self._runner.path_for(n, in_hw, out_hw)

    def resize_tensor(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, 3, H, W) uint8 (0..255) or float (0..1) on the model's device -> uint8 (B, 3, h, w).

        `size` is (w, h) like ``ResizeOp.size``. H, W should already be ``input_size(size)``.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        w, h = size
        if self._runner is not None and x.dtype == torch.uint8 and x.shape[0] <= self.buckets[-1]:
            y = self._runner(x.to(self.device, non_blocking=True), (h, w))
            if tuple(y.shape) != (x.shape[0], 3, h, w):
                raise ValueError(f"resizer {self.path} returned shape {tuple(y.shape)} for input "
                                 f"{tuple(x.shape)}; expected ({x.shape[0]}, 3, {h}, {w})")
            return y
        if self._pool is not None and x.shape[0] > 1:  # one sample per call: see `sample_threads`
            return torch.cat(list(self._pool.map(lambda k: self.resize_tensor(x[k : k + 1], size), range(x.shape[0]))))
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                if self._amp_dtype is not None:  # autocast is per thread: entered in the calling one
                    with torch.autocast(self.device.type, dtype=self._amp_dtype):
                        y = self.module(x, (h, w))
                else:
                    y = self.module(x, (h, w))
            except (AssertionError, RuntimeError) as e:  # e.g. a .pt2 program exported for other shapes
                if is_device_fault(e):  # the typed error policy: the device's fault, never the input's
                    raise
                raise ValueError(
                    f"resizer {self.path} failed on input {tuple(x.shape)} -> (h, w)={(h, w)}: {e}"
                ) from e
            if tuple(y.shape[-2:]) != (h, w) or y.shape[:2] != x.shape[:2]:
                raise ValueError(
                    f"resizer {self.path} returned shape {tuple(y.shape)} for input {tuple(x.shape)} "
                    f"and size (h, w)={(h, w)}; expected ({x.shape[0]}, 3, {h}, {w})"
                )
            return y.float().clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)

    # -- the Resizer interface --------------------------------------------------------------------------

    def _prepare(self, image: np.ndarray, op: ResizeOp) -> np.ndarray:
        from PIL import Image

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected uint8 HWC RGB, got {image.dtype} {image.shape}")
        pil = Image.fromarray(image)
        return np.asarray(pil.resize(self.input_size(op.size), Image.Resampling.BILINEAR, box=op.box))

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def resize(self, images: Sequence[np.ndarray], ops: Sequence[ResizeOp]) -> list[np.ndarray]:
        if len(images) != len(ops):
            raise ValueError(f"{len(images)} images but {len(ops)} ops")
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        prepared: list[np.ndarray] = []
        for i, (img, op) in enumerate(zip(images, ops, strict=True)):
            prepared.append(self._prepare(img, op))
            groups[(op.size[0], op.size[1])].append(i)
        out: list[np.ndarray | None] = [None] * len(images)
        for size, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                bucket = len(chunk) if self._pool is not None else self._bucket(len(chunk))  # no padding per sample
                batch = np.stack([prepared[i] for i in chunk])
                if bucket > len(chunk):  # zeros: samples are independent (BN folded, eval mode)
                    pad = np.zeros((bucket - len(chunk), *batch.shape[1:]), np.uint8)
                    batch = np.concatenate([batch, pad])
                x = torch.from_numpy(batch).permute(0, 3, 1, 2)  # NHWC memory = channels_last view
                if self.device.type == "cuda":
                    x = x.pin_memory()
                y = self.resize_tensor(x, size).permute(0, 2, 3, 1).cpu().numpy()
                for j, i in enumerate(chunk):
                    out[i] = np.ascontiguousarray(y[j])
        return out  # type: ignore[return-value]

    def __call__(self, images: Sequence[np.ndarray], ops: Sequence[ResizeOp]) -> list[np.ndarray]:
        return self.resize(images, ops)

    def describe(self) -> dict:
        config = {k: v for k, v in self.meta.items() if k not in ("provenance", "path", "sha256")}
        return {
            "name": self.name,
            "path": os.path.abspath(self.path),
            "sha256": self.sha256,
            "input_scale": self.input_scale,
            "device": str(self.device),
            "precision": self.precision,
            **({"runner": self._runner.describe()} if self._runner is not None else {}),
            "config": config,
        }
