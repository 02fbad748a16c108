"""Pipeline stages as callable classes over column batches (``dict[str, np.ndarray]``).

The same classes run in the local engine and as Ray Data ``map_batches`` actors. Heavy state (a
decoder, a CNN) is built once in ``__init__``; ``__call__`` maps one batch. Rows never disappear:
a row that fails gets ``error`` / ``error_stage`` / ``error_type`` set and is passed through, so
every input ends in the sink as written or as failed-with-reason.

Columns: ``key url label label_name meta offset length row`` (from the listing), ``data`` (raw bytes,
after read), ``image`` (uint8 HWC, after decode/resize), ``orig_width orig_height``, ``payload
width height`` (after encode), ``error error_stage error_type``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from resize_pipeline.geometry import ResizeOp, draft_request, plan_resize
from resize_pipeline.sources.base import SourceItem

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
ITEM_COLUMNS = ("key", "url", "label", "label_name", "meta", "offset", "length", "row")
#: refuse outputs with a longer side than this before allocating them (WebP's limit is 16383,
#: JPEG's 65500; a config size is at most 16384)
MAX_OUTPUT_SIDE = 16384


def _objects(values: Sequence[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values) if not isinstance(values, list) else values
    return arr


def items_to_batch(items: Sequence[SourceItem]) -> Batch:
    """Listing rows -> a batch with empty error columns."""
    n = len(items)
    batch: Batch = {
        "key": np.array([it.key for it in items], dtype=object),
        "url": np.array([it.url for it in items], dtype=object),
        "label": np.array([it.label for it in items], dtype=np.int64),
        "label_name": np.array([it.label_name for it in items], dtype=object),
        "meta": np.array([it.meta for it in items], dtype=object),
        "offset": np.array([it.offset for it in items], dtype=np.int64),
        "length": np.array([it.length for it in items], dtype=np.int64),
        "row": np.array([it.row for it in items], dtype=np.int64),
    }
    batch["error"] = np.array([""] * n, dtype=object)
    batch["error_stage"] = np.array([""] * n, dtype=object)
    batch["error_type"] = np.array([""] * n, dtype=object)
    return batch


def batch_to_items(batch: Batch) -> list[SourceItem]:
    return [
        SourceItem(
            key=str(batch["key"][i]),
            url=str(batch["url"][i]),
            label=int(batch["label"][i]),
            label_name=str(batch["label_name"][i]),
            meta=str(batch["meta"][i]),
            offset=int(batch["offset"][i]),
            length=int(batch["length"][i]),
            row=int(batch["row"][i]),
        )
        for i in range(len(batch["key"]))
    ]


def ok_rows(batch: Batch) -> list[int]:
    return [i for i, e in enumerate(batch["error"]) if not e]


def fail(batch: Batch, i: int, stage: str, exc: BaseException) -> None:
    batch["error"][i] = str(exc) or repr(exc)
    batch["error_stage"][i] = stage
    batch["error_type"][i] = type(exc).__name__
    log.debug("%s failed at %s: %s", batch["url"][i], stage, exc)


def place(image: np.ndarray, op: ResizeOp, pad_color: np.ndarray) -> np.ndarray:
    """Check a resizer's output against `op` and, in pad mode, letterbox it onto the canvas."""
    if image.shape[1::-1] != op.size:
        raise RuntimeError(f"resizer returned {image.shape[1]}x{image.shape[0]}, expected {op.size}")
    if op.canvas is None:
        return image
    cw, ch = op.canvas
    canvas = np.empty((ch, cw, 3), dtype=np.uint8)
    canvas[:] = pad_color
    x, y = op.offset
    canvas[y : y + op.size[1], x : x + op.size[0]] = image
    return canvas


class _ThreadChunks:
    """Split a list over a lazily made thread pool (for work that releases the GIL: Pillow's
    decoders, resamplers and encoders), concatenating the results in order."""

    threads: int = 1
    _pool = None

    def _chunked(self, fn: Callable[[list], list], items: list) -> list:
        if self.threads <= 1 or len(items) < 2:
            return fn(items)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=type(self).__name__)
        k = min(self.threads, len(items))
        bounds = [len(items) * j // k for j in range(k + 1)]
        parts = self._pool.map(fn, [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)])
        return [x for part in parts for x in part]

    def __getstate__(self) -> dict:  # pools don't pickle (Ray ships stages to actors)
        return {k: v for k, v in self.__dict__.items() if k != "_pool"}


class ReadStage:
    """Fetch raw bytes for each row (``data`` column)."""

    def __init__(self, storage_options: dict[str, Any] | None = None) -> None:
        self.storage_options = dict(storage_options or {})

    def __call__(self, batch: Batch) -> Batch:
        from resize_pipeline.sources.reader import read_items

        rows = ok_rows(batch)
        items = batch_to_items(batch)
        data = _objects([b""] * len(items))
        for i, got in zip(rows, read_items([items[i] for i in rows], self.storage_options), strict=True):
            if isinstance(got, Exception):
                fail(batch, i, "read", got)
            else:
                data[i] = bytes(got)
        batch["data"] = data
        return batch


class DecodeStage(_ThreadChunks):
    """Decode ``data`` to ``image`` (uint8 HWC RGB); records ``orig_width``/``orig_height``."""

    def __init__(
        self,
        decoder: str = "pillow",
        *,
        size: tuple[int, int] = (224, 224),
        mode: str = "center-crop",
        input_scale: float = 2.0,
        background: tuple[int, int, int] = (255, 255, 255),
        max_pixels: int = 178_956_970,
        draft: bool = True,
        threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        from resize_pipeline.decode import get_decoder

        extra = {"num_threads": threads, "batch_size": batch_size} if decoder in ("auto", "dali") else {}
        self.decoder = get_decoder(decoder, background=background, max_pixels=max_pixels, draft=draft, **extra)
        self.size, self.mode, self.input_scale = size, mode, input_scale
        # DALI runs its own thread pool; Pillow decodes are spread over ours
        self.threads = 1 if extra else max(1, int(threads or 1))

    def size_request(self, w: int, h: int) -> tuple[int, int]:
        return draft_request(w, h, plan_resize(w, h, self.size, self.mode), self.input_scale)

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["key"])
        rows = ok_rows(batch)
        images = _objects([None] * n)
        ow = np.zeros(n, dtype=np.int32)
        oh = np.zeros(n, dtype=np.int32)
        decoded = self._chunked(lambda blobs: self.decoder.decode_sized(blobs, self.size_request),
                                [batch["data"][i] for i in rows])
        for i, got in zip(rows, decoded, strict=True):
            if isinstance(got, Exception):
                fail(batch, i, "decode", got)
            else:
                images[i], (ow[i], oh[i]) = got
        batch["image"], batch["orig_width"], batch["orig_height"] = images, ow, oh
        batch.pop("data", None)  # free the encoded input as soon as it is decoded
        return batch


class ResizeStage(_ThreadChunks):
    """Resize ``image`` to the target geometry (crop/pad by mode) with the configured resizer."""

    def __init__(
        self,
        resizer: str = "bilinear",
        *,
        size: tuple[int, int] = (224, 224),
        mode: str = "center-crop",
        pad_color: tuple[int, int, int] = (0, 0, 0),
        device: str = "auto",
        batch_size: int = 64,
        threads: int = 1,
    ) -> None:
        from resize_pipeline.resize import ClassicalResizer, get_resizer

        self.resizer = get_resizer(resizer, device=device, batch_size=batch_size)
        # Pillow resamplers release the GIL: spread them; a CNN batches (and threads) on its own
        self.threads = max(1, int(threads)) if isinstance(self.resizer, ClassicalResizer) else 1
        self.size, self.mode, self.pad_color = size, mode, np.asarray(pad_color, dtype=np.uint8)

    def finish(self, image: np.ndarray, op: ResizeOp) -> np.ndarray:
        return place(image, op, self.pad_color)

    def __call__(self, batch: Batch) -> Batch:
        rows = ok_rows(batch)
        images = batch["image"]
        ops, valid = [], []
        for i in rows:
            try:
                h, w = images[i].shape[:2]
                op = plan_resize(w, h, self.size, self.mode)
                ow, oh = op.output_size
                if max(ow, oh) > MAX_OUTPUT_SIDE:  # e.g. shorter-side on a 1x4000 strip
                    raise ValueError(f"output would be {ow}x{oh} (input {w}x{h}); over the {MAX_OUTPUT_SIDE} px "
                                     "side limit of the encoders")
                ops.append(op)
                valid.append(i)
            except Exception as exc:  # noqa: BLE001
                fail(batch, i, "resize", exc)
        try:
            pairs = [(images[i], op) for i, op in zip(valid, ops, strict=True)]
            outs: list[np.ndarray | Exception] = self._chunked(
                lambda part: self.resizer.resize([p[0] for p in part], [p[1] for p in part]), pairs
            )
        except Exception:  # noqa: BLE001 - isolate the sample that broke the batch
            outs = []
            for i, op in zip(valid, ops, strict=True):
                try:
                    outs.append(self.resizer.resize([images[i]], [op])[0])
                except Exception as exc:  # noqa: BLE001
                    outs.append(exc)
        for i, op, out in zip(valid, ops, outs, strict=True):
            try:
                if isinstance(out, Exception):
                    raise out
                images[i] = self.finish(out, op)
            except Exception as exc:  # noqa: BLE001
                images[i] = None
                fail(batch, i, "resize", exc)
        return batch


class EncodeStage(_ThreadChunks):
    """Encode ``image`` to ``payload`` bytes; records output ``width``/``height``.

    With ``threads > 1`` images are encoded on a thread pool (Pillow's encoders release the GIL),
    which is what keeps encoding from capping a GPU-fed pipeline.
    """

    def __init__(self, encode: str = "jpg", quality: int = 95, threads: int = 1) -> None:
        from resize_pipeline.encode import Encoder

        self.encoder = Encoder(encode, quality)
        self.threads = max(1, int(threads or 1))

    def _encode(self, images: list) -> list:
        out: list = []
        for img in images:
            try:
                out.append(self.encoder.encode(img))
            except Exception as exc:  # noqa: BLE001 - per-sample policy
                out.append(exc)
        return out

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["key"])
        payload = _objects([b""] * n)
        width = np.zeros(n, dtype=np.int32)
        height = np.zeros(n, dtype=np.int32)
        rows = ok_rows(batch)
        for i, out in zip(rows, self._chunked(self._encode, [batch["image"][i] for i in rows]), strict=True):
            if isinstance(out, Exception):
                fail(batch, i, "encode", out)
                continue
            payload[i] = out
            height[i], width[i] = batch["image"][i].shape[:2]
        batch["payload"], batch["width"], batch["height"] = payload, width, height
        batch.pop("image", None)
        return batch


class ConvertStage:
    """read -> decode -> resize -> encode, built once from a `ConvertConfig`."""

    def __init__(self, config, threads: int | None = None) -> None:
        """`threads`: CPU threads this stage may use (the engine divides the cores among workers)."""
        from resize_pipeline.stages_fused import FusedDecodeResizeStage, can_fuse

        self.read = ReadStage(config.storage_options)
        self.encode = EncodeStage(config.encode, config.quality, threads=threads or 1)
        self.fused: FusedDecodeResizeStage | None = None
        if can_fuse(config):
            # DALI decodes, crops and resizes on one device and feeds the resizer there
            self.fused = FusedDecodeResizeStage(config, threads=threads)
            return
        self.resize = ResizeStage(
            config.resizer,
            size=config.size,
            mode=config.mode,
            pad_color=config.pad_color,
            device=config.device,
            batch_size=config.batch_size,
            threads=threads or 1,
        )
        self.decode = DecodeStage(
            config.decoder,
            size=config.size,
            mode=config.mode,
            input_scale=self.resize.resizer.input_scale,
            background=config.background,
            max_pixels=config.max_pixels,
            draft=config.draft,
            threads=threads,
            batch_size=config.batch_size,
        )

    def describe(self) -> dict[str, Any]:
        if self.fused is not None:
            return self.fused.describe()
        return {"resizer": self.resize.resizer.describe(), "decoder": self.decode.decoder.name}

    @staticmethod
    def describe_config(config) -> dict[str, Any]:
        """What the manifest records about the components, without building a decoder."""
        from resize_pipeline.resize import get_resizer

        resizer = get_resizer(config.resizer, device="cpu", batch_size=1)
        decoder = config.decoder
        if decoder in ("auto", "dali"):
            try:
                from resize_pipeline.decode.dali import _import_dali, cuda_device_count

                _import_dali()
                decoder = "dali-mixed" if cuda_device_count() > 0 else "dali-cpu"
            except ImportError:
                decoder = "pillow"
        return {"resizer": resizer.describe(), "decoder": decoder, "requested_decoder": config.decoder}

    @property
    def steps(self) -> list:
        """The stages in order, for engines that overlap them (`engine.overlap.overlapped`)."""
        if self.fused is not None:  # decode and resize in separate threads: they overlap
            return [self.read, self.fused.decode, self.fused.resize, self.encode]
        return [self.read, self.decode, self.resize, self.encode]

    def __call__(self, batch: Batch) -> Batch:
        for step in self.steps:
            batch = step(batch)
        return batch
