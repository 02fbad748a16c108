"""Decode and resize fused on one device: DALI (nvJPEG + GPU resize) feeding the resizer directly.

With a DALI decoder, decoding, the crop box and the resize to the resizer's input size run inside
DALI; in ``mixed`` mode the result is a CUDA tensor handed to the learned resizer's `resize_tensor`
on the same GPU, so pixels never visit the host between decode and resize (only the final uint8
output is copied back for encoding). In DALI's CPU-only mode the same graph runs on the CPU, which
is how this path is tested without a GPU.

Classical filters map to DALI's own interpolation (nearest, linear, cubic, lanczos) and the resize
to the output size happens in DALI; ``area`` has no DALI equivalent and keeps the unfused path.

Decode is split into `submit` / `finish` so that the engine can keep DALI one batch ahead
(`stream.lagged`): DALI decodes batch k+1 while the CNN resizes batch k.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np

from resize_pipeline.batch import Batch, fail, isolate, objects, ok_rows
from resize_pipeline.geometry import ResizeOp
from resize_pipeline.stages import place, plan_output

log = logging.getLogger(__name__)

#: classical filter -> DALI interpolation; filters not listed cannot be fused
DALI_INTERP = {"nearest": "nearest", "bilinear": "linear", "bicubic": "cubic", "lanczos": "lanczos"}


def can_fuse(decoder: str, resizer: str) -> bool:
    """Whether `FusedDecodeResizeStage` serves a resolved decoder and a resizer spec."""
    return decoder.startswith("dali") and (resizer in DALI_INTERP or resizer.startswith("learned"))


class FusedDecodeResizeStage:
    """``data`` -> ``image`` (uint8 HWC at the target geometry) via DALI + the resizer, one device.

    Args:
        decoder: a built `DaliDecoder` (its ``interp`` matches the resizer: ``DALI_INTERP`` for a
            classical filter, linear in front of a learned resizer).
        resizer: a built `LearnedResizer` on the decoder's device, or None for a classical filter.
        size, mode, pad_color: the target geometry.
    """

    def __init__(self, decoder, resizer, *, size: tuple[int, int], mode: str,
                 pad_color: tuple[int, int, int]) -> None:
        self.decoder, self.resizer = decoder, resizer
        self.size, self.mode = size, mode
        self.gpu = decoder.mode == "mixed"
        self.pad_color = np.asarray(pad_color, dtype=np.uint8)

    def describe(self) -> dict[str, Any]:
        return {"decoder": self.decoder.describe(),
                "resizer": self.resizer.describe() if self.resizer else {"name": f"dali-{self.decoder.interp}"}}

    def _plan(self, w: int, h: int) -> ResizeOp:
        op = plan_output(w, h, self.size, self.mode)
        if self.resizer is None:
            return ResizeOp(op.box, op.size)
        return ResizeOp(op.box, self.resizer.input_size(op.size))

    def submit(self, batch: Batch):
        """Start decoding ``data`` (crop + resize to the resizer's input size) in DALI."""
        rows = ok_rows(batch)
        probes = [batch["probe"][i] for i in rows] if "probe" in batch else None
        pending = self.decoder.submit([batch["data"][i] for i in rows], self._plan, probes=probes, gpu=self.gpu)
        return batch, rows, pending

    def finish(self, token) -> Batch:
        """``image`` at the resizer's input size (CUDA tensors in GPU mode), ``op``, original sizes."""
        batch, rows, pending = token
        results = self.decoder.finish(pending)
        n = len(batch["key"])
        images, ops = objects([None] * n), objects([None] * n)
        ow, oh = np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32)
        for i, pr, got in zip(rows, pending.probes, results, strict=True):
            if isinstance(got, Exception):
                fail(batch, i, "decode", got)
                continue
            w, h = pr.size if pr.size else (0, 0)
            ow[i], oh[i] = w, h
            ops[i] = plan_output(w, h, self.size, self.mode)
            images[i] = got
        batch["image"], batch["op"], batch["orig_width"], batch["orig_height"] = images, ops, ow, oh
        batch.pop("data", None)
        batch.pop("probe", None)
        return batch

    def decode(self, batch: Batch) -> Batch:
        return self.finish(self.submit(batch))

    def resize(self, batch: Batch) -> Batch:
        """``image`` at input size -> uint8 HWC host arrays at the target geometry (``op`` consumed)."""
        images, ops = batch["image"], batch.pop("op")
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i in ok_rows(batch):
            groups[(ops[i].size, tuple(images[i].shape))].append(i)
        for (size, _), idx in groups.items():
            outs = isolate(lambda part, size=size: self._resize_group([images[i] for i in part], size), idx)
            for i, out in zip(idx, outs, strict=True):
                try:
                    if isinstance(out, Exception):
                        raise out
                    images[i] = place(out, ops[i], self.pad_color)
                except Exception as exc:  # noqa: BLE001
                    images[i] = None
                    fail(batch, i, "resize", exc)
        return batch

    def __call__(self, batch: Batch) -> Batch:
        return self.resize(self.decode(batch))

    def _resize_group(self, items: list, size: tuple[int, int]) -> list[np.ndarray]:
        """Equal-shape items: HWC host arrays (CPU mode) or (3, h, w) CUDA tensors (GPU mode)."""
        if self.resizer is None:  # DALI already produced the output size
            if self.gpu:
                import torch

                return list(torch.stack(items).permute(0, 2, 3, 1).contiguous().cpu().numpy())
            return [np.ascontiguousarray(a) for a in items]
        import torch

        if self.gpu:
            t = torch.stack(items)  # (B, 3, H, W) uint8 on the GPU
        else:
            t = torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2)
        y = self.resizer.resize_tensor(t, size)  # (B, 3, h, w) uint8
        return list(y.permute(0, 2, 3, 1).contiguous().cpu().numpy())
