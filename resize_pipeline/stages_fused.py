"""Decode and resize fused on one device: DALI (nvJPEG + GPU resize) feeding the resizer directly.

With a DALI decoder, decoding, the crop box and the resize to the resizer's input size run inside
DALI; in ``mixed`` mode the result is a CUDA tensor handed to the learned resizer's `resize_tensor`
on the same GPU, so pixels never visit the host between decode and resize (only the final
224x224-sized uint8 output is copied back for encoding). In DALI's CPU-only mode the same graph runs
on the CPU, which is how this path is tested without a GPU.

Classical filters map to DALI's own interpolation (nearest, linear, cubic, lanczos) and the resize
to the output size happens in DALI; ``area`` has no DALI equivalent and keeps the unfused path.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np

from resize_pipeline.geometry import ResizeOp, plan_resize
from resize_pipeline.stages import Batch, _objects, fail, ok_rows, place

log = logging.getLogger(__name__)

#: classical filter -> DALI interpolation; filters not listed cannot be fused
DALI_INTERP = {"nearest": "nearest", "bilinear": "linear", "bicubic": "cubic", "lanczos": "lanczos"}


def can_fuse(config) -> bool:
    """Whether `FusedDecodeResizeStage` serves this config (a DALI decoder and a fusable resizer)."""
    if config.decoder not in ("auto", "dali") or config.resizer == "area":
        return False
    try:
        from resize_pipeline.decode.dali import _import_dali

        _import_dali()
    except ImportError:
        return False
    return True


class FusedDecodeResizeStage:
    """``data`` -> ``image`` (uint8 HWC at the target geometry) via DALI + the resizer, one device."""

    def __init__(self, config, threads: int | None = None) -> None:
        from resize_pipeline.decode.dali import DaliDecoder
        from resize_pipeline.resize import get_resizer

        self.size, self.mode = config.size, config.mode
        learned = config.resizer.startswith("learned")
        self.resizer: Any = get_resizer(config.resizer, device=config.device, batch_size=config.batch_size) if learned else None
        interp = "linear" if learned else DALI_INTERP[config.resizer]
        device = "auto" if config.device in ("auto", "cuda") or config.device.startswith("cuda") else "cpu"
        self.decoder = DaliDecoder(
            config.background, config.max_pixels, config.draft,
            device=device, num_threads=threads, batch_size=config.batch_size, interp=interp,
        )
        self.gpu = self.decoder.mode == "mixed"
        self.pad_color = np.asarray(config.pad_color, dtype=np.uint8)
        self.name = f"dali-{self.decoder.mode}+{config.resizer}"

    def describe(self) -> dict[str, Any]:
        return {"decoder": self.decoder.describe(), "resizer": self.resizer.describe() if self.resizer else self.name}

    def _input_op(self, op: ResizeOp) -> ResizeOp:
        if self.resizer is None:
            return ResizeOp(op.box, op.size)
        return ResizeOp(op.box, self.resizer.input_size(op.size))

    def __call__(self, batch: Batch) -> Batch:
        return self.resize(self.decode(batch))

    def decode(self, batch: Batch) -> Batch:
        """``data`` -> ``image`` at the resizer's input size (CUDA tensors in GPU mode) + ``op``.

        A separate step from `resize` so that an engine can overlap them: DALI decodes batch k+1
        while the CNN resizes batch k; the tensors stay on the GPU in between.
        """
        from resize_pipeline.decode.dali import probe

        n = len(batch["key"])
        images, ops = _objects([None] * n), _objects([None] * n)
        ow, oh = np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32)
        rows = ok_rows(batch)
        blobs = [batch["data"][i] for i in rows]
        probes = [probe(b, self.decoder.max_pixels) for b in blobs]

        def plan(w: int, h: int) -> ResizeOp:
            return self._input_op(plan_resize(w, h, self.size, self.mode))

        run = self.decoder.decode_resize_gpu if self.gpu else self.decoder.decode_resize
        for i, p, got in zip(rows, probes, run(blobs, plan, probes=probes), strict=True):
            if isinstance(got, Exception):
                fail(batch, i, "decode", got)
                continue
            w, h = p.size if p.size else (0, 0)
            ow[i], oh[i] = w, h
            ops[i] = plan_resize(w, h, self.size, self.mode)
            images[i] = got
        batch["image"], batch["op"], batch["orig_width"], batch["orig_height"] = images, ops, ow, oh
        batch.pop("data", None)
        return batch

    def resize(self, batch: Batch) -> Batch:
        """``image`` at input size -> uint8 HWC host arrays at the target geometry (``op`` consumed)."""
        images, ops = batch["image"], batch.pop("op")
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i in ok_rows(batch):
            groups[(ops[i].size, tuple(images[i].shape))].append(i)
        for (size, _), idx in groups.items():
            try:
                outs = self._resize_group([images[i] for i in idx], size)
            except Exception as exc:  # noqa: BLE001 - a failed group fails its rows, not the batch
                for i in idx:
                    images[i] = None
                    fail(batch, i, "resize", exc)
                continue
            for i, out in zip(idx, outs, strict=True):
                try:
                    images[i] = place(out, ops[i], self.pad_color)
                except Exception as exc:  # noqa: BLE001
                    images[i] = None
                    fail(batch, i, "resize", exc)
        return batch

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
