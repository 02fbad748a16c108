"""Decode and resize fused on one device: DALI (nvJPEG + GPU resize) feeding the resizer directly.

With a DALI decoder, decoding, the crop box and the resize to the resizer's input size run inside
DALI; in ``mixed`` mode the result is a CUDA tensor handed to the learned resizer's `resize_tensor`
on the same GPU, so pixels never visit the host between decode and resize (only the final uint8
output is copied back for encoding). In DALI's CPU-only mode the same graph runs on the CPU, which
is how this path is tested without a GPU.

Classical filters map to DALI's own interpolation (nearest, linear, cubic, lanczos) and the resize
to the output size happens in DALI; ``area`` has no DALI equivalent and keeps the unfused path.

Decode is split into `submit` / `finish` so that the engine can keep DALI one batch ahead
(`stream.lagged`): DALI decodes batch k+1 while the CNN resizes batch k. The resize is split the
same way (`resize_submit` / `resize_finish`).

On the GPU every call runs on the worker's `cuda_streams.CudaLane` (its GPU set in the calling
thread, explicit streams): DALI's outputs are handed to torch on the lane's *decode* stream and an
event is recorded there when a batch is handed over (`finish`); the *compute* stream waits for that
event (on the GPU), runs the CNN per group of equal shapes (one group per batch in the fixed-size
modes; a view of DALI's copy re-stacked without a copy, `stack_views`) and copies each group's
uint8 output to pinned host memory once, asynchronously; one blocking event per batch, recorded on
the compute stream, is the only host wait, in `resize_finish`, after the next batch was launched.
The batch's GPU tensors (and DALI's outputs) are released only after that wait.
"""

from __future__ import annotations

import contextlib
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
    from resize_pipeline.decode import decoder_spec

    return decoder_spec(decoder).fuses_resize and (resizer in DALI_INTERP or resizer.startswith("learned"))


class FusedDecodeResizeStage:
    """``data`` -> ``image`` (uint8 HWC at the target geometry) via DALI + the resizer, one device.

    Args:
        decoder: a built `DaliDecoder` (its ``interp`` matches the resizer: ``DALI_INTERP`` for a
            classical filter, linear in front of a learned resizer).
        resizer: a built `LearnedResizer` on the decoder's device, or None for a classical filter.
        size, mode, pad_color: the target geometry.

    Rows get ``decoded_by`` (how each input was decoded: DALI, Pillow-routed, Pillow fallback) and, on
    the GPU with a learned resizer, ``resized_by`` (``cuda-graph`` or ``cuda-eager``): the runner
    counts them into the shard's stats and the manifest.
    """

    def __init__(self, decoder, resizer, *, size: tuple[int, int], mode: str,
                 pad_color: tuple[int, int, int]) -> None:
        self.decoder, self.resizer = decoder, resizer
        self.size, self.mode = size, mode
        self.gpu = decoder.mode == "mixed"
        self.pad_color = np.asarray(pad_color, dtype=np.uint8)
        self.lane = None
        if self.gpu:
            from resize_pipeline.cuda_streams import CudaLane

            self.lane = CudaLane(f"cuda:{decoder.device_id}")

    def describe(self) -> dict[str, Any]:
        return {"decoder": self.decoder.describe(),
                "resizer": self.resizer.describe() if self.resizer else {"name": f"dali-{self.decoder.interp}"},
                **({"lane": self.lane.describe()} if self.lane is not None else {})}

    def _on(self, stream_name: str):
        return self.lane.on(getattr(self.lane, stream_name)) if self.lane is not None else contextlib.nullcontext()

    def _plan(self, w: int, h: int) -> ResizeOp:
        op = plan_output(w, h, self.size, self.mode)
        if self.resizer is None:
            return ResizeOp(op.box, op.size)
        return ResizeOp(op.box, self.resizer.input_size(op.size))

    def submit(self, batch: Batch):
        """Start decoding ``data`` (crop + resize to the resizer's input size) in DALI."""
        rows = ok_rows(batch)
        probes = [batch["probe"][i] for i in rows] if "probe" in batch else None
        with self._on("decode"):
            pending = self.decoder.submit([batch["data"][i] for i in rows], self._plan, probes=probes, gpu=self.gpu)
        return batch, rows, pending

    def finish(self, token) -> Batch:
        """``image`` at the resizer's input size (CUDA tensors in GPU mode), ``op``, original sizes,
        ``decoded_by``."""
        batch, rows, pending = token
        with self._on("decode"):
            results = self.decoder.finish(pending)
            handed = self.lane.mark(self.lane.decode) if self.lane is not None else None
        n = len(batch["key"])
        images, ops, how = objects([None] * n), objects([None] * n), objects([""] * n)
        ow, oh = np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32)
        for i, pr, got, path in zip(rows, pending.probes, results, pending.paths, strict=True):
            if isinstance(got, Exception):
                fail(batch, i, "decode", got)
                continue
            w, h = pr.size if pr.size else (0, 0)
            ow[i], oh[i] = w, h
            ops[i] = plan_output(w, h, self.size, self.mode)
            images[i], how[i] = got, path or ""
        batch["image"], batch["op"], batch["orig_width"], batch["orig_height"] = images, ops, ow, oh
        batch["decoded_by"] = how
        if handed is not None:  # the hand-off event, and DALI's outputs kept alive until the batch is done
            batch["_handoff"] = objects([(handed, pending)])
        batch.pop("data", None)
        batch.pop("probe", None)
        return batch

    def decode(self, batch: Batch) -> Batch:
        return self.finish(self.submit(batch))

    def resize_submit(self, batch: Batch):
        """Start resizing ``image`` (at the resizer's input size) to the output size: per group of equal
        shapes, the CNN (or nothing, for a classical filter: DALI resized already) and, in GPU mode,
        one asynchronous copy of the group's uint8 output into pinned host memory, all on the compute
        stream after it waited (on the GPU) for the batch's hand-off; one event recorded there marks
        the end of the batch. Nothing waits on the host here (`resize_finish` does)."""
        images, ops = batch["image"], batch.pop("op")
        handoff = batch.pop("_handoff", None)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i in ok_rows(batch):
            groups[(ops[i].size, tuple(images[i].shape))].append(i)
        launched: list[tuple[list[int], list]] = []
        done = None
        with self._on("compute"):
            if handoff is not None and self.lane is not None:
                self.lane.compute.wait_event(handoff[0][0])
            for (size, _), idx in groups.items():
                outs = isolate(lambda part, size=size: self._launch([images[i] for i in part], size), idx)
                launched.append((idx, outs))
                if self.gpu and self.resizer is not None:
                    how = self.resizer.path_for(len(idx), tuple(images[idx[0]].shape[1:]), (size[1], size[0]))
                    batch.setdefault("resized_by", objects([""] * len(batch["key"])))
                    for i in idx:
                        batch["resized_by"][i] = how
            if self.lane is not None and launched:
                done = self.lane.mark(self.lane.compute)
        return batch, ops, launched, done, handoff

    def resize_finish(self, token) -> Batch:
        """Wait for the batch's copy (GPU mode), then ``image`` = uint8 HWC host arrays at the target
        geometry (views of the batch's host buffer; letterboxed in pad mode)."""
        batch, ops, launched, done, handoff = token
        if done is not None:
            done.synchronize()  # a blocking event: the host sleeps, it does not spin
        images = batch["image"]
        for idx, outs in launched:
            for i, out in zip(idx, outs, strict=True):
                try:
                    if isinstance(out, Exception):
                        raise out
                    host = out[0].numpy()[out[1]] if isinstance(out, tuple) else out
                    images[i] = place(host, ops[i], self.pad_color)
                except Exception as exc:  # noqa: BLE001
                    images[i] = None
                    fail(batch, i, "resize", exc)
        for i in range(len(images)):  # a row that failed here must not keep a GPU tensor alive
            if images[i] is not None and not isinstance(images[i], np.ndarray):
                images[i] = None
        del handoff  # DALI's outputs and the decode-side buffers may be reused from here on
        return batch

    def resize(self, batch: Batch) -> Batch:
        """``image`` at input size -> uint8 HWC host arrays at the target geometry (``op`` consumed)."""
        return self.resize_finish(self.resize_submit(batch))

    def __call__(self, batch: Batch) -> Batch:
        return self.resize(self.decode(batch))

    def _launch(self, items: list, size: tuple[int, int]) -> list:
        """Equal-shape items -> one result per item: in GPU mode ``(pinned host tensor (n, h, w, 3), k)``
        whose copy is in flight on the current (compute) stream; in CPU mode the uint8 HWC array."""
        if not self.gpu:
            if self.resizer is None:  # DALI already produced the output size
                return [np.ascontiguousarray(a) for a in items]
            import torch

            t = torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2)
            y = self.resizer.resize_tensor(t, size)  # (B, 3, h, w) uint8
            return list(y.permute(0, 2, 3, 1).contiguous().numpy())
        import torch

        t = stack_views(items)  # (B, 3, H, W) uint8 on the GPU, usually a view of DALI's output copy
        y = t if self.resizer is None else self.resizer.resize_tensor(t, size)
        nhwc = y.permute(0, 2, 3, 1)  # channels_last memory: already contiguous, one DMA
        host = torch.empty(nhwc.shape, dtype=torch.uint8, pin_memory=True)  # torch's caching host allocator
        host.copy_(nhwc, non_blocking=True)
        return [(host, k) for k in range(len(items))]


def stack_views(items: list):
    """Equal-shape CUDA (or CPU) tensors -> one (n, ...) tensor: without a copy when they are evenly
    spaced views of one buffer (DALI's batch, copied back to back by `DaliDecoder`), else `torch.stack`."""
    import torch

    first = items[0]
    if len(items) > 1:
        step = items[1].storage_offset() - first.storage_offset()
        ptr = first.untyped_storage().data_ptr()
        if step >= first.numel() and all(
            t.shape == first.shape and t.stride() == first.stride()
            and t.untyped_storage().data_ptr() == ptr and t.storage_offset() == first.storage_offset() + k * step
            for k, t in enumerate(items)
        ):
            return first.as_strided((len(items), *first.shape), (step, *first.stride()), first.storage_offset())
    return torch.stack(items)
