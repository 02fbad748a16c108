"""NVIDIA DALI decoder: nvJPEG on the GPU (``mixed``) or DALI CPU-only (``cpu``), Pillow for the rest.

- ``"mixed"``: ``fn.decoders.image(device="mixed")`` — nvJPEG with the A100/H100/H200 hardware JPEG
  decoder taking ``hw_decoder_load`` of the work (default 0.65, DALI's), the rest on nvJPEG's hybrid
  path, on GPU ``device_id``.
- ``"cpu"``: the same graph with ``device="cpu"`` (libjpeg-turbo, libpng) in a ``device_id=None``
  pipeline (DALI refuses any mixed/GPU operator in that mode, so it is a separately built graph).

Which mode a job uses is decided once, in the driver (`resize_pipeline.preflight`); a worker builds
exactly that mode or fails. Bytes come from our sources (fsspec), never from DALI readers: they are
fed with ``fn.external_source``. Which file goes to DALI and which to Pillow is decided by the
header pre-screen (`decode.probe`), usually computed by the read stage.

DALI fails a whole batch when one member is corrupt. A failed batch is narrowed down with
`batch.isolate` (the pipeline's one failure policy); a sample that fails on its own is retried
through Pillow, and only then returned as an exception. Output is uint8 HWC RGB, like every
`Decoder`.

Fused decode + crop + resize (`submit` / `finish`, used by `stages_fused`): decoding, the crop box
and the antialiased resize (``fn.resize``) run in DALI; in mixed mode the result is copied
device-to-device into torch memory on torch's current stream (no host round trip). Up to
``prefetch`` DALI runs are scheduled ahead (``feed_input`` + ``schedule_run``) before the oldest one
is collected, so DALI decodes batch k+1 while the caller works on batch k.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resize_pipeline.batch import isolate
from resize_pipeline.decode.base import Decoder, SizeRequest
from resize_pipeline.decode.pillow import DEFAULT_MAX_PIXELS, PillowDecoder
from resize_pipeline.decode.probe import Probe, probe
from resize_pipeline.errors import SampleError
from resize_pipeline.geometry import ResizeOp

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "NVIDIA DALI is not installed: pip install 'resize-pipeline[dali]' (CUDA 13 wheels, "
    "nvidia-dali-cuda130) or 'resize-pipeline[dali-cuda120]' (CUDA 12, nvidia-dali-cuda120); "
    "CPU-only mode works with either"
)
MODES = ("cpu", "mixed")
INTERPOLATIONS = ("linear", "cubic", "lanczos", "triangular", "nearest")

#: resize target per sample: a (w, h) size, a ResizeOp (size + crop box), or a plan from the
#: oriented (w, h) of the image to a ResizeOp (e.g. ``lambda w, h: plan_resize(w, h, t, mode)``)
SizeSpec = tuple[int, int] | ResizeOp
Plan = Callable[[int, int], ResizeOp]


def import_dali():
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import Pipeline
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return Pipeline, fn, types


def dali_installed() -> bool:
    """Whether DALI can be imported, without importing it (importing it is slow and forks badly)."""
    import importlib.util

    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


@dataclass
class Pending:
    """A batch handed to `DaliDecoder.submit`, until `finish` returns its results."""

    results: list[Any]
    probes: list[Probe]
    ops: dict[int, ResizeOp]
    specs: list[Any]
    to_pillow: list[int]
    blobs: Sequence[bytes]
    gpu: bool
    runs: int = 0  # DALI runs scheduled for it and not collected yet
    failed: list[list[tuple[int, dict[str, np.ndarray]]]] = field(default_factory=list)


class DaliDecoder(Decoder):
    """Decode batches with NVIDIA DALI; per-sample fallback to Pillow.

    Args:
        background: colour that alpha is composited over (Pillow-routed images; DALI gets no alpha).
        max_pixels: refuse images whose declared size exceeds this, before decoding.
        draft: passed to the Pillow fallback (DALI always decodes at full size).
        device: ``"mixed"`` (GPU) or ``"cpu"``.
        device_id: GPU ordinal for mixed mode (default 0).
        num_threads: DALI CPU threads (default: CPU count, at most 8).
        batch_size: largest batch one DALI run takes; bigger inputs are split.
        hw_decoder_load: share of JPEGs sent to the hardware decoder (mixed mode only).
        jpeg_fancy_upsampling: make nvJPEG upsample chroma like libjpeg-turbo/Pillow (mixed only).
        interp: ``fn.resize`` filter for the fused resize paths (antialiased when downscaling).
        prefetch: DALI runs in flight in the fused path (``submit``/``finish``).
    """

    def __init__(
        self,
        background: tuple[int, int, int] = (255, 255, 255),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft: bool = True,
        *,
        device: str = "cpu",
        device_id: int | None = None,
        num_threads: int | None = None,
        batch_size: int = 64,
        hw_decoder_load: float = 0.65,
        jpeg_fancy_upsampling: bool = True,
        interp: str = "linear",
        prefetch: int = 2,
    ) -> None:
        if device not in MODES:
            raise ValueError(f"unknown DALI device {device!r}; expected one of {', '.join(MODES)}")
        if interp not in INTERPOLATIONS:
            raise ValueError(f"unknown interp {interp!r}; expected one of {', '.join(INTERPOLATIONS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= hw_decoder_load <= 1.0:
            raise ValueError(f"hw_decoder_load must be in [0, 1], got {hw_decoder_load}")
        self._Pipeline, self._fn, self._types = import_dali()
        self.mode = device
        self.name = f"dali-{device}"
        self.device_id = (device_id if device_id is not None else 0) if device == "mixed" else None
        self.num_threads = int(num_threads or max(1, min(8, os.cpu_count() or 1)))
        self.batch_size = int(batch_size)
        self.hw_decoder_load = float(hw_decoder_load)
        self.jpeg_fancy_upsampling = jpeg_fancy_upsampling
        self.interp = interp
        self.prefetch = max(1, int(prefetch))
        self.background = tuple(background)
        self.max_pixels = int(max_pixels)
        self.pillow = PillowDecoder(background=background, max_pixels=max_pixels, draft=draft)
        #: counts: dali (decoded by DALI), pillow_routed, pillow_fallback, failed, batch_errors
        self.stats: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._pipes: dict[str, Any] = {}
        self._pid = os.getpid()
        self._inflight: deque[tuple[Pending, list[tuple[int, dict[str, np.ndarray]]]]] = deque()
        self._pipe("decode")  # built once here (fails now, not mid-job); fused graphs on first use

    # -- pipelines ---------------------------------------------------------------------------
    def _build(self, kind: str):
        fn, types = self._fn, self._types
        pipe = self._Pipeline(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=self.device_id,
            # one queue slot; up to `prefetch` runs are scheduled ahead with feed_input+schedule_run
            # (a deeper queue expects every input fed `depth` iterations ahead)
            prefetch_queue_depth=1,
        )
        dec_kw: dict[str, Any] = {"device": self.mode, "output_type": types.RGB, "adjust_orientation": True}
        if self.mode == "mixed":
            dec_kw.update(
                hw_decoder_load=self.hw_decoder_load, jpeg_fancy_upsampling=self.jpeg_fancy_upsampling
            )
        with pipe:
            if kind == "resize":  # host-decoded (Pillow-routed) images through the same resize
                img = fn.external_source(name="images", dtype=types.UINT8, ndim=3, layout="HWC")
                if self.mode == "mixed":
                    img = img.gpu()
            else:
                blobs = fn.external_source(name="blobs", dtype=types.UINT8, ndim=1)
                img = fn.decoders.image(blobs, **dec_kw)
            if kind in ("resize", "decode_resize"):
                size = fn.external_source(name="size", dtype=types.FLOAT, ndim=1)
                roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
                roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
                interp = {
                    "linear": types.INTERP_LINEAR,
                    "cubic": types.INTERP_CUBIC,
                    "lanczos": types.INTERP_LANCZOS3,
                    "triangular": types.INTERP_TRIANGULAR,
                    "nearest": types.INTERP_NN,
                }[self.interp]
                img = fn.resize(
                    img,
                    device="gpu" if self.mode == "mixed" else "cpu",
                    size=size,
                    roi_start=roi_start,
                    roi_end=roi_end,
                    interp_type=interp,
                    antialias=self.interp != "nearest",
                )
            pipe.set_outputs(img)
        pipe.build()
        return pipe

    def _pipe(self, kind: str):
        if self._pid != os.getpid():  # forked: the parent's DALI worker threads did not come along
            self._pipes, self._pid = {}, os.getpid()
            self._inflight.clear()
        if kind not in self._pipes:
            self._pipes[kind] = self._build(kind)
        return self._pipes[kind]

    def _schedule(self, kind: str, feeds: dict[str, list[np.ndarray]]) -> None:
        pipe = self._pipe(kind)
        for name, data in feeds.items():
            pipe.feed_input(name, data)
        pipe.schedule_run()

    def _outputs(self, kind: str):
        try:
            (out,) = self._pipe(kind).outputs()
            return out
        except Exception as exc:
            self.stats["batch_errors"] += 1
            # DALI's dynamic executor survives a bad sample; when it says the pipeline is gone
            # (CUDA errors...), build a fresh one for the next run
            if "no longer valid" in str(exc):
                log.debug("rebuilding the DALI %s pipeline after: %s", kind, exc)
                self._pipes.pop(kind, None)
                self.stats["rebuilds"] += 1
            raise

    def _run_isolated(self, kind: str, items: list[tuple[int, dict[str, np.ndarray]]],
                      collect: Callable[[Any, list[int]], None]) -> dict[int, Exception]:
        """Run `items` (position, per-input arrays) synchronously in batches; `collect(out, positions)`
        takes each successful run; a batch that fails is narrowed down (`isolate`). Returns the
        positions that failed on their own. Needs no run of `kind` in flight."""
        failed: dict[int, Exception] = {}

        def run(chunk: list[tuple[int, dict[str, np.ndarray]]]) -> list[None]:
            self._schedule(kind, {name: [it[1][name] for it in chunk] for name in chunk[0][1]})
            collect(self._outputs(kind), [it[0] for it in chunk])
            return [None] * len(chunk)

        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            for (pos, _), res in zip(chunk, isolate(run, chunk), strict=True):
                if isinstance(res, Exception):
                    failed[pos] = res
        return failed

    # -- the pre-screen ----------------------------------------------------------------------
    def _screen(self, blobs: Sequence[bytes], probes: Sequence[Probe | None] | None = None):
        """(probes, results with errors filled, dali positions, pillow positions)."""
        if probes is None:
            probes = [None] * len(blobs)
        elif len(probes) != len(blobs):
            raise ValueError(f"got {len(probes)} probes for {len(blobs)} blobs")
        probes = [p if p is not None else probe(b, self.max_pixels) for p, b in zip(probes, blobs, strict=True)]
        results: list[Any] = [None] * len(blobs)
        to_dali, to_pillow = [], []
        for i, p in enumerate(probes):
            if p.route == "error":
                results[i] = p.error
                self.stats["failed"] += 1
            elif p.route == "pillow":
                log.debug("sample %d to Pillow: %s", i, p.reason)
                to_pillow.append(i)
                self.stats["pillow_routed"] += 1
            else:
                to_dali.append(i)
        return probes, results, to_dali, to_pillow

    def _pillow_decode(self, blob: bytes, size_request: SizeRequest | None, dali_exc: Exception | None):
        try:
            return self.pillow.decode_one(blob, size_request)
        except Exception as exc:  # noqa: BLE001 - per-sample policy
            self.stats["failed"] += 1
            if dali_exc is not None:
                log.debug("DALI also failed: %s", dali_exc)
            return exc

    # -- decode (host output) --------------------------------------------------------------------
    def decode(
        self,
        blobs: Sequence[bytes],
        size_request: SizeRequest | None = None,
        *,
        probes: Sequence[Probe | None] | None = None,
    ) -> list[np.ndarray | Exception]:
        """Decode each blob to uint8 HWC RGB, or return its exception in place.

        `size_request` is only used by the Pillow fallback (JPEG draft); DALI decodes full size.
        """
        with self._lock:
            _, results, to_dali, to_pillow = self._screen(blobs, probes)

            def collect(out, positions):
                host = out.as_cpu() if self.mode == "mixed" else out
                self.stats["dali"] += len(positions)
                for k, pos in enumerate(positions):
                    results[pos] = np.array(host[k], copy=True)

            items = [(i, {"blobs": np.frombuffer(blobs[i], np.uint8)}) for i in to_dali]
            failed = self._run_isolated("decode", items, collect)
            for i in to_pillow + list(failed):
                if i in failed:
                    self.stats["pillow_fallback"] += 1
                results[i] = self._pillow_decode(blobs[i], size_request, failed.get(i))
            return results

    # -- fused decode + resize ---------------------------------------------------------------
    @staticmethod
    def _resolve(spec: SizeSpec | Plan, size: tuple[int, int] | None) -> ResizeOp:
        if callable(spec) and not isinstance(spec, ResizeOp):
            if size is None:
                raise SampleError("cannot plan a resize without the image size")
            return spec(*size)
        if isinstance(spec, ResizeOp):
            return spec
        w, h = spec
        if size is None:
            raise SampleError("cannot resize without the image size")
        return ResizeOp((0.0, 0.0, float(size[0]), float(size[1])), (int(w), int(h)))

    @staticmethod
    def _resize_feeds(op: ResizeOp) -> dict[str, np.ndarray]:
        left, top, right, bottom = op.box
        return {
            "size": np.array([op.size[1], op.size[0]], np.float32),  # DALI: (h, w)
            "roi_start": np.array([top, left], np.float32),
            "roi_end": np.array([bottom, right], np.float32),
        }

    def _collector(self, pending: Pending) -> Callable[[Any, list[int]], None]:
        """How a DALI output becomes results: host arrays, or (3, h, w) CUDA tensors (GPU mode)."""
        results = pending.results
        if not pending.gpu:
            def collect_host(out, positions):
                host = out.as_cpu() if self.mode == "mixed" else out
                for k, pos in enumerate(positions):
                    results[pos] = np.array(host[k], copy=True)

            return collect_host
        import torch

        stream = torch.cuda.current_stream(self.device_id)
        device = torch.device("cuda", self.device_id)
        raw_stream = self._types._raw_cuda_stream_ptr  # what DALI's own feed_ndarray uses

        def collect_gpu(out, positions):
            shapes = [tuple(s) for s in out.shape()]
            total = sum(int(np.prod(s)) for s in shapes)
            flat = torch.empty(total, dtype=torch.uint8, device=device)
            # one device-to-device copy of the whole (ragged) batch, samples back to back, on
            # torch's stream; blocking so DALI may reuse its buffers right after (outputs() returned
            # host-synchronised outputs, so the copy needs no extra stream wait)
            out.copy_to_external(ctypes.c_void_p(flat.data_ptr()), raw_stream(stream), non_blocking=False)
            offset = 0
            for shape, pos in zip(shapes, positions, strict=True):
                size = int(np.prod(shape))
                results[pos] = flat[offset : offset + size].view(shape).permute(2, 0, 1)
                offset += size

        return collect_gpu

    def submit(
        self,
        blobs: Sequence[bytes],
        sizes: SizeSpec | Plan | Sequence[SizeSpec],
        *,
        probes: Sequence[Probe | None] | None = None,
        gpu: bool = False,
    ) -> Pending:
        """Start decoding + resizing a batch: DALI runs are scheduled now, results come from `finish`.

        Args:
            blobs: encoded images.
            sizes: one target for all or one per blob: a (w, h) size (stretch), a `ResizeOp` (crop box
                in oriented source pixels + size), or a plan ``(w, h) -> ResizeOp`` called with each
                image's declared, orientation-corrected size. The output is ``op.size`` (a pad op's
                canvas is left to the caller).
            probes: pre-screen results (None entries are probed here).
            gpu: results as (3, h, w) uint8 CUDA tensors (mixed mode) instead of host HWC arrays.

        `finish` must be called for every `Pending`, in submission order.
        """
        if gpu and self.mode != "mixed":
            raise RuntimeError("GPU output needs DaliDecoder(device='mixed') and a CUDA GPU")
        with self._lock:
            specs = _per_sample(sizes, len(blobs))
            probes, results, to_dali, to_pillow = self._screen(blobs, probes)
            pending = Pending(results, list(probes), {}, specs, to_pillow, blobs, gpu)
            for i in to_dali + to_pillow:
                try:
                    pending.ops[i] = self._resolve(specs[i], probes[i].size)
                except Exception as exc:  # noqa: BLE001
                    results[i] = exc
                    self.stats["failed"] += 1
            items = [(i, {"blobs": np.frombuffer(blobs[i], np.uint8), **self._resize_feeds(pending.ops[i])})
                     for i in to_dali if i in pending.ops]
            for start in range(0, len(items), self.batch_size):
                while len(self._inflight) >= self.prefetch:
                    self._collect_oldest()
                chunk = items[start : start + self.batch_size]
                self._schedule("decode_resize", {name: [it[1][name] for it in chunk] for name in chunk[0][1]})
                self._inflight.append((pending, chunk))
                pending.runs += 1
            return pending

    def _collect_oldest(self) -> None:
        pending, chunk = self._inflight.popleft()
        pending.runs -= 1
        try:
            out = self._outputs("decode_resize")
        except Exception:  # noqa: BLE001 - narrowed down in finish()
            pending.failed.append(chunk)
            if "decode_resize" not in self._pipes:  # rebuilt: the runs still in flight are gone too
                while self._inflight:
                    later, lost = self._inflight.popleft()
                    later.runs -= 1
                    later.failed.append(lost)
            return
        self.stats["dali"] += len(chunk)
        self._collector(pending)(out, [it[0] for it in chunk])

    def finish(self, pending: Pending) -> list[Any]:
        """The results of a submitted batch (arrays/tensors, or exceptions in place), in input order."""
        with self._lock:
            if self._pid != os.getpid():
                raise RuntimeError("a DALI batch submitted before fork cannot be finished after it")
            while pending.runs:
                if not self._inflight:  # the pipeline was rebuilt after a fatal DALI error
                    raise RuntimeError("the DALI pipeline failed and was rebuilt; the batch must be redone")
                self._collect_oldest()
            if pending.failed:
                while self._inflight:  # later batches' runs first: isolate() runs synchronously
                    self._collect_oldest()
            collect = self._collector(pending)
            failed: dict[int, Exception] = {}
            for chunk in pending.failed:
                failed.update(self._run_isolated("decode_resize", chunk, collect))
            pending.failed = []
            # Pillow: decode on the host, then the same fn.resize (on the GPU in mixed mode)
            results, probes, specs = pending.results, pending.probes, pending.specs
            host: list[tuple[int, dict[str, np.ndarray]]] = []
            for i in [j for j in pending.to_pillow if j in pending.ops] + list(failed):
                if i in failed:
                    self.stats["pillow_fallback"] += 1
                img = self._pillow_decode(pending.blobs[i], None, failed.get(i))
                if isinstance(img, Exception):
                    results[i] = img
                    continue
                op = pending.ops[i]
                if (img.shape[1], img.shape[0]) != probes[i].size:  # header lied: re-plan on the real size
                    try:
                        op = self._resolve(specs[i], (img.shape[1], img.shape[0]))
                    except Exception as exc:  # noqa: BLE001
                        results[i] = exc
                        continue
                host.append((i, {"images": img, **self._resize_feeds(op)}))
            for i, err in self._run_isolated("resize", host, collect).items():
                results[i] = err
                self.stats["failed"] += 1
            return results

    def decode_resize(
        self,
        blobs: Sequence[bytes],
        sizes: SizeSpec | Plan | Sequence[SizeSpec],
        *,
        probes: Sequence[Probe | None] | None = None,
        gpu: bool = False,
    ) -> list[Any]:
        """`submit` + `finish` in one call: decode, crop and resize; see `submit`."""
        with self._lock:
            return self.finish(self.submit(blobs, sizes, probes=probes, gpu=gpu))

    def __getstate__(self) -> dict:
        """Pickle without the pipelines (Ray actors, spawn workers); they are rebuilt on arrival."""
        state = self.__dict__.copy()
        for key in ("_pipes", "_lock", "_Pipeline", "_fn", "_types", "_inflight"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._Pipeline, self._fn, self._types = import_dali()
        self._lock = threading.RLock()
        self._pipes, self._pid, self._inflight = {}, os.getpid(), deque()

    def describe(self) -> dict:
        """What goes into the manifest about this decoder."""
        return {
            "name": self.name,
            "mode": self.mode,
            "device_id": self.device_id,
            "batch_size": self.batch_size,
            "num_threads": self.num_threads,
            "hw_decoder_load": self.hw_decoder_load if self.mode == "mixed" else None,
        }


def _per_sample(sizes, n: int) -> list:
    """Broadcast one size spec (pair, ResizeOp, plan) to `n` samples, or check a per-sample list."""
    if callable(sizes) or isinstance(sizes, ResizeOp):
        return [sizes] * n
    sizes = list(sizes)
    if len(sizes) == 2 and all(isinstance(v, int | float | np.number) for v in sizes):
        return [tuple(sizes)] * n
    if len(sizes) != n:
        raise ValueError(f"got {len(sizes)} sizes for {n} images")
    return sizes


__all__ = ["DaliDecoder", "Pending", "import_dali", "dali_installed", "INSTALL_HINT", "MODES"]
