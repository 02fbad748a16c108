"""Pipeline stages as callable classes over column batches (see `resize_pipeline.batch`).

Heavy state (a decoder, a CNN) is built once in ``__init__``; ``__call__`` maps one batch. A row that
fails gets its error columns set and flows on (`batch.fail`); batched work that fails without naming
a culprit is narrowed down by `batch.isolate`, the one failure policy of every batched step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from resize_pipeline.batch import Batch, batch_to_items, fail, isolate, objects, ok_rows
from resize_pipeline.geometry import ResizeOp, draft_request, plan_resize

log = logging.getLogger(__name__)

#: refuse outputs with a longer side than this before allocating them (WebP's limit is 16383,
#: JPEG's 65500; a config size is at most 16384)
MAX_OUTPUT_SIDE = 16384


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


def plan_output(w: int, h: int, size: tuple[int, int], mode: str) -> ResizeOp:
    """`plan_resize`, refusing outputs the encoders cannot hold (e.g. shorter-side on a 1x4000 strip)."""
    op = plan_resize(w, h, size, mode)
    ow, oh = op.output_size
    if max(ow, oh) > MAX_OUTPUT_SIDE:
        raise ValueError(f"output would be {ow}x{oh} (input {w}x{h}); over the {MAX_OUTPUT_SIDE} px "
                         "side limit of the encoders")
    return op


class ThreadChunks:
    """Split a list over a lazily made thread pool (for work that releases the GIL: file reads,
    Pillow's decoders and resamplers), concatenating the results in order."""

    threads: int = 1
    _pool = None

    def chunked(self, fn: Callable[[list], list], items: list) -> list:
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
    """Fetch raw bytes for each row (``data``); with `probe`, also pre-screen each file's header
    (``probe``: declared size, orientation, and whether DALI can take it) in the same threads.

    Every input is read on its own thread of a `sources.reader.ReadPool` (local reads release the
    GIL; object stores wait on the network), and given up after `timeout` seconds (a ``read`` error
    row, `ReadTimeout`): a slow input never holds the rest of its batch. An input larger than
    `max_bytes` (``--max-bytes``) is a ``read`` error row, never read into memory. Rows of one Parquet
    file are read together (their row group is read once). With `digest` (``--dedup sha256``) each
    input's sha256 is computed where its bytes are read (``sha256``: 32 bytes, None when the read
    failed): the shard's input record keeps it.
    """

    #: reads in flight at once for object stores / http (each waits on the network)
    REMOTE_THREADS = 32

    def __init__(self, storage_options: dict[str, Any] | None = None, *, threads: int = 1,
                 probe_max_pixels: int | None = None, timeout: float | None = None,
                 max_bytes: int | None = None, digest: bool = False) -> None:
        self.storage_options = dict(storage_options or {})
        self.threads = max(1, int(threads))
        self.probe_max_pixels = probe_max_pixels
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.digest = digest
        self._pools: dict[bool, Any] = {}

    def __getstate__(self) -> dict:  # thread pools don't pickle (Ray ships stages to actors)
        return {k: v for k, v in self.__dict__.items() if k != "_pools"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pools = {}

    def _pool(self, remote: bool):
        from resize_pipeline.sources.reader import ReadPool

        if remote not in self._pools:
            self._pools[remote] = ReadPool(max(self.threads, self.REMOTE_THREADS) if remote else self.threads)
        return self._pools[remote]

    def _read(self, items: list) -> list:
        from resize_pipeline.sources.reader import read_items, read_one

        so, cap = self.storage_options, self.max_bytes
        got = [read_one(items[0], so, cap)] if len(items) == 1 else read_items(items, so, max_bytes=cap)
        digests: list[bytes | None] = [None] * len(got)
        if self.digest:  # in the reading thread (hashlib releases the GIL on large inputs)
            import hashlib

            digests = [None if isinstance(g, Exception) else hashlib.sha256(g).digest() for g in got]
        if self.probe_max_pixels is None:
            return [(g, None, d) for g, d in zip(got, digests, strict=True)]
        from resize_pipeline.decode.probe import probe

        return [(g, None if isinstance(g, Exception) else probe(bytes(g), self.probe_max_pixels), d)
                for g, d in zip(got, digests, strict=True)]

    def __call__(self, batch: Batch) -> Batch:
        from functools import partial

        from resize_pipeline.urls import is_remote_url

        rows = ok_rows(batch)
        items = batch_to_items(batch, rows)
        n = len(batch["key"])
        data, probes = objects([b""] * n), objects([None] * n)
        digests = objects([None] * n)
        units: list[list[int]] = []  # positions in `items`: one input each, or one Parquet file's rows
        parquet: dict[str, list[int]] = {}
        for j, it in enumerate(items):
            if it.row >= 0:
                if it.url not in parquet:
                    parquet[it.url] = []
                    units.append(parquet[it.url])
                parquet[it.url].append(j)
            else:
                units.append([j])
        remote = bool(items) and is_remote_url(items[0].url)
        outs = self._pool(remote).map([partial(self._read, [items[j] for j in u]) for u in units], self.timeout)
        for unit, out in zip(units, outs, strict=True):
            got = [(out, None, None)] * len(unit) if isinstance(out, Exception) else out
            for j, (value, pr, digest) in zip(unit, got, strict=True):
                i = rows[j]
                if isinstance(value, Exception):
                    fail(batch, i, "read", value)
                else:
                    data[i], probes[i], digests[i] = bytes(value), pr, digest
        batch["data"] = data
        if self.digest:
            batch["sha256"] = digests
        if self.probe_max_pixels is not None:
            batch["probe"] = probes
        return batch


def take(batch: Batch, rows: list[int]) -> Batch:
    """The sub-batch of `rows` (every column, in that order)."""
    idx = np.asarray(rows, dtype=np.intp)
    return {k: v[idx] for k, v in batch.items()}


#: JPEG start-of-frame markers (C4 DHT, C8 JPG and CC DAC are not frames)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _declared_size(blob: bytes) -> tuple[tuple[int, int], bool] | None:
    """((width, height), is JPEG) as the header declares it, or None. PNG and JPEG are read here (a few
    microseconds: this runs for every input); other formats are opened lazily by Pillow."""
    import struct

    if blob[:8] == b"\x89PNG\r\n\x1a\n" and blob[12:16] == b"IHDR":
        w, h = struct.unpack(">II", blob[16:24])
        return (w, h), False
    if blob[:2] == b"\xff\xd8":
        i, n = 2, len(blob)
        while i + 4 <= n and blob[i] == 0xFF:
            marker = blob[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # no length
                i += 2
                continue
            (length,) = struct.unpack(">H", blob[i + 2:i + 4])
            if marker in _SOF and i + 9 <= n:
                h, w = struct.unpack(">HH", blob[i + 5:i + 9])
                return (w, h), True
            i += 2 + length
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(blob))
            return img.size, img.format == "JPEG"
    except Exception:  # noqa: BLE001 - not an image this budget can size: its decode says why
        return None


class PixelBudget:
    """Cut a batch whose images would decode to more than `max_pixels` pixels at once into consecutive
    smaller batches (``--max-batch-pixels``): a worker holds at most that many decoded pixels per batch
    (3 bytes each, RGB), whatever the batch size. One image above the budget goes alone.

    Each image's decoded size is read from its header (declared size; for a JPEG the decoder's draft
    downscale is counted, as `decode_size` gives it), before anything is decoded. The rows and their
    order are unchanged, so the bytes written are the same; a file whose header cannot be read counts
    as nothing (its decode fails anyway).

    Args:
        max_pixels: the budget.
        draft_request: for JPEG draft decoding, the (w, h) -> requested size of the decode stage
            (`DecodeStage.size_request`); None when the decoder decodes at full size.
        refused_above: images declaring more pixels are refused by the decoder (``--max-pixels``):
            they count as nothing.
    """

    def __init__(self, max_pixels: int, draft_request: Callable[[int, int], tuple[int, int]] | None = None,
                 refused_above: int | None = None) -> None:
        self.max_pixels = max(1, int(max_pixels))
        self.draft_request = draft_request
        self.refused_above = refused_above

    def decoded_pixels(self, blob: bytes) -> int:
        """The pixels `blob` decodes to (0 when its header cannot be read)."""
        size = _declared_size(blob)
        if size is None:
            return 0
        (w, h), jpeg = size
        if self.refused_above is not None and w * h > self.refused_above:
            return 0
        if jpeg and self.draft_request is not None:
            rw, rh = self.draft_request(w, h)
            for s in (8, 4, 2):  # Pillow's draft: the largest DCT scale keeping at least the request
                if -(-w // s) >= rw and -(-h // s) >= rh:
                    return -(-w // s) * -(-h // s)
        return w * h

    def __call__(self, batch: Batch) -> list[Batch] | None:
        rows = ok_rows(batch)
        data = batch.get("data")
        if data is None or len(rows) < 2:
            return None
        sizes = {i: self.decoded_pixels(data[i]) for i in rows}
        if sum(sizes.values()) <= self.max_pixels:
            return None
        groups: list[list[int]] = [[]]
        held = 0
        for i in range(len(batch["key"])):
            px = sizes.get(i, 0)
            if groups[-1] and px and held + px > self.max_pixels:
                groups.append([])
                held = 0
            groups[-1].append(i)
            held += px
        return [take(batch, g) for g in groups] if len(groups) > 1 else None


class DecodeStage(ThreadChunks):
    """Decode ``data`` to ``image`` (uint8 HWC RGB); records ``orig_width``/``orig_height``."""

    def __init__(self, decoder, *, size: tuple[int, int] = (224, 224), mode: str = "center-crop",
                 input_scale: float = 2.0, threads: int = 1, as_image: bool = False) -> None:
        """`decoder`: a built `Decoder` (see `decode.get_decoder`); `as_image`: hand a Pillow decoder's
        PIL images on as they are (the next stage is a Pillow resizer: no numpy round trip)."""
        from resize_pipeline.decode import PillowDecoder

        self.decoder = decoder
        self.as_image = as_image and isinstance(decoder, PillowDecoder)
        self.size, self.mode, self.input_scale = size, mode, input_scale
        from resize_pipeline.decode import decoder_spec

        # DALI runs its own thread pool; Pillow decodes are spread over ours
        self.threads = 1 if decoder_spec(decoder.name).own_threads else max(1, int(threads))

    def size_request(self, w: int, h: int) -> tuple[int, int]:
        return draft_request(w, h, plan_resize(w, h, self.size, self.mode), self.input_scale)

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["key"])
        rows = ok_rows(batch)
        images = objects([None] * n)
        ow = np.zeros(n, dtype=np.int32)
        oh = np.zeros(n, dtype=np.int32)
        blobs = [batch["data"][i] for i in rows]
        if "probe" in batch:  # DALI: the read stage pre-screened the headers
            probes = [batch["probe"][i] for i in rows]
            paths: list = []
            decoded = [r if isinstance(r, Exception) else (r, (r.shape[1], r.shape[0]))
                       for r in self.decoder.decode(blobs, self.size_request, probes=probes, paths=paths)]
            batch["decoded_by"] = objects([""] * n)
            for i, path in zip(rows, paths, strict=True):
                batch["decoded_by"][i] = path or ""
        elif self.as_image:
            decoded = self.chunked(lambda part: self.decoder.decode_sized(part, self.size_request, as_image=True),
                                   blobs)
        else:
            decoded = self.chunked(lambda part: self.decoder.decode_sized(part, self.size_request), blobs)
        for i, got in zip(rows, decoded, strict=True):
            if isinstance(got, Exception):
                fail(batch, i, "decode", got)
            else:
                images[i], (ow[i], oh[i]) = got
        batch["image"], batch["orig_width"], batch["orig_height"] = images, ow, oh
        batch.pop("data", None)  # free the encoded input as soon as it is decoded
        batch.pop("probe", None)
        return batch


class ResizeStage(ThreadChunks):
    """Resize ``image`` to the target geometry (crop/pad by mode) with a built `Resizer`."""

    def __init__(self, resizer, *, size: tuple[int, int] = (224, 224), mode: str = "center-crop",
                 pad_color: tuple[int, int, int] = (0, 0, 0), threads: int = 1) -> None:
        from resize_pipeline.resize import ClassicalResizer

        self.resizer = resizer
        # Pillow resamplers release the GIL: spread them; a CNN batches (and threads) on its own
        self.threads = max(1, int(threads)) if isinstance(resizer, ClassicalResizer) else 1
        self.size, self.mode, self.pad_color = size, mode, np.asarray(pad_color, dtype=np.uint8)

    def _resize(self, pairs: list[tuple[np.ndarray, ResizeOp]]) -> list:
        return self.resizer.resize([p[0] for p in pairs], [p[1] for p in pairs])

    def __call__(self, batch: Batch) -> Batch:
        images = batch["image"]
        pairs, valid = [], []
        for i in ok_rows(batch):
            try:
                img = images[i]
                w, h = img.size if hasattr(img, "getbbox") else img.shape[1::-1]
                pairs.append((images[i], plan_output(w, h, self.size, self.mode)))
                valid.append(i)
            except Exception as exc:  # noqa: BLE001
                fail(batch, i, "resize", exc)
        outs = self.chunked(lambda part: isolate(self._resize, part), pairs)
        for i, (_, op), out in zip(valid, pairs, outs, strict=True):
            try:
                if isinstance(out, Exception):
                    raise out
                images[i] = place(out, op, self.pad_color)
            except Exception as exc:  # noqa: BLE001
                images[i] = None
                fail(batch, i, "resize", exc)
        return batch


class EncodeStage(ThreadChunks):
    """Encode ``image`` to ``payload`` bytes; records output ``width``/``height``.

    Images are spread over the thread pool; with OpenCV's JPEG codec (`encode.Encoder`, same bytes
    as Pillow's) the encodes run in parallel without the GIL."""

    def __init__(self, encode: str = "jpg", quality: int = 95, threads: int = 1, *,
                 jpeg_backend: str = "auto") -> None:
        from resize_pipeline.encode import Encoder

        self.encoder = Encoder(encode, quality, jpeg_backend)
        # OpenCV's JPEG encode releases the GIL: threads scale; Pillow's holds it (no gain, no harm)
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
        payload = objects([b""] * n)
        width = np.zeros(n, dtype=np.int32)
        height = np.zeros(n, dtype=np.int32)
        rows = ok_rows(batch)
        for i, out in zip(rows, self.chunked(self._encode, [batch["image"][i] for i in rows]), strict=True):
            if isinstance(out, Exception):
                fail(batch, i, "encode", out)
                continue
            payload[i] = out
            height[i], width[i] = batch["image"][i].shape[:2]
        batch["payload"], batch["width"], batch["height"] = payload, width, height
        batch.pop("image", None)
        return batch
