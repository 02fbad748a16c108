"""NVIDIA DALI decoder: feeding the graphs of `dali_graph` (nvJPEG on the GPU, or DALI CPU-only), Pillow
for the rest.

Which mode a job uses is decided once, in the driver (`resize_pipeline.preflight`); a worker builds
exactly that mode or fails. Bytes come from our sources (fsspec), never from DALI readers: they are
fed with ``feed_input``. Which file goes to DALI and which to Pillow is decided by the header
pre-screen (`decode.probe`), usually computed by the read stage.

Feeding (`dali_graph` has the DALI contract): each pipeline has **one run in flight** at most.
`submit` collects the run in flight (the previous batch's) before it schedules the next, so while
DALI decodes batch k+1 (asynchronously) the caller works on batch k (`finish`, then the next stage
in its own thread). On a GPU, outputs are taken with ``outputs(cuda_stream=<torch's current
stream>)`` and copied into torch memory on that stream (`dali_torch.to_torch`, DALI's PyTorch
plugin); nothing waits for the GPU here. The DALI output is kept with its `Pending` until the caller
is done with the batch (its copy may still be in flight).

Failures follow the typed error policy (`errors.error_kind`). DALI fails a whole batch when one
member is corrupt: a failed batch is narrowed down with `batch.isolate`, and a sample that fails on
its own is retried through Pillow (recorded per sample as ``pillow-fallback``: `Pending.paths`), and
only then returned as an exception. A device fault (CUDA error, GPU out of memory, an nvImageCodec
allocator/execution failure) is raised as `errors.DeviceFault` at once: never bisected, never
handed to Pillow, never an error row (the worker ends, its shards are attempted again elsewhere).
Output is uint8 HWC RGB, like every `Decoder` (or (3, h, w) CUDA tensors with ``gpu=True``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resize_pipeline.batch import isolate
from resize_pipeline.decode.base import Decoder, SizeRequest
from resize_pipeline.decode.dali_graph import (
    INSTALL_HINT,
    INTERPOLATIONS,
    MODES,
    Plan,
    SizeSpec,
    build_pipeline,
    dali_installed,
    import_dali,
    per_sample,
    resize_feeds,
    resolve_op,
)
from resize_pipeline.decode.pillow import DEFAULT_MAX_PIXELS, PillowDecoder
from resize_pipeline.decode.probe import Probe, probe
from resize_pipeline.errors import DeviceFault, error_kind
from resize_pipeline.geometry import ResizeOp

log = logging.getLogger(__name__)

Chunk = list[tuple[int, dict[str, np.ndarray]]]

#: how a sample was decoded (`Pending.paths`, the ``decoded_by`` column): DALI (the decoder's name),
#: routed to Pillow by the pre-screen, or failed in DALI alone and rescued by Pillow
PILLOW, FALLBACK = "pillow", "pillow-fallback"


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
    failed: list[Chunk] = field(default_factory=list)
    #: per input: how it was decoded (`PILLOW`, `FALLBACK`, the decoder's name) or None (failed)
    paths: list[str | None] = field(default_factory=list)
    #: DALI outputs whose device memory the results were copied from: kept until the batch is done
    outputs: list[Any] = field(default_factory=list)


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
        jpeg_fancy_upsampling: make nvJPEG upsample chroma like libjpeg-turbo/Pillow (mixed only;
            DALI's own default is off).
        interp: ``fn.resize`` filter for the fused resize paths (antialiased when downscaling).
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
    ) -> None:
        if device not in MODES:
            raise ValueError(f"unknown DALI device {device!r}; expected one of {', '.join(MODES)}")
        if interp not in INTERPOLATIONS:
            raise ValueError(f"unknown interp {interp!r}; expected one of {', '.join(INTERPOLATIONS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= hw_decoder_load <= 1.0:
            raise ValueError(f"hw_decoder_load must be in [0, 1], got {hw_decoder_load}")
        self._dali = import_dali()
        self.mode = device
        self.name = f"dali-{device}"
        self.device_id = (device_id if device_id is not None else 0) if device == "mixed" else None
        self.num_threads = int(num_threads or max(1, min(8, os.cpu_count() or 1)))
        self.batch_size = int(batch_size)
        self.hw_decoder_load = float(hw_decoder_load)
        self.jpeg_fancy_upsampling = bool(jpeg_fancy_upsampling)
        self.interp = interp
        self.background = tuple(background)
        self.max_pixels = int(max_pixels)
        self.pillow = PillowDecoder(background=background, max_pixels=max_pixels, draft=draft)
        #: counts: dali (decoded by DALI), pillow_routed, pillow_fallback, failed, batch_errors, rebuilds
        self.stats: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._pipes: dict[str, Any] = {}
        self._pid = os.getpid()
        #: per pipeline kind, its one run in flight: (pending or None, chunk)
        self._inflight: dict[str, tuple[Pending, Chunk]] = {}
        self._pipe("decode")  # built once here (fails now, not mid-job); fused graphs on first use

    # -- pipelines ---------------------------------------------------------------------------
    def _build(self, kind: str):
        return build_pipeline(self._dali, kind, mode=self.mode, batch_size=self.batch_size,
                              num_threads=self.num_threads, device_id=self.device_id,
                              hw_decoder_load=self.hw_decoder_load,
                              jpeg_fancy_upsampling=self.jpeg_fancy_upsampling, interp=self.interp)

    def _pipe(self, kind: str):
        if self._pid != os.getpid():  # forked: the parent's DALI worker threads did not come along
            self._pipes, self._pid = {}, os.getpid()
            self._inflight.clear()
        if kind not in self._pipes:
            self._pipes[kind] = self._build(kind)
        return self._pipes[kind]

    def _schedule(self, kind: str, chunk: Chunk) -> None:
        """Feed `chunk` and schedule one run of `kind`; the caller made sure none is in flight."""
        pipe = self._pipe(kind)
        for name in chunk[0][1]:
            pipe.feed_input(name, [item[1][name] for item in chunk])
        pipe.schedule_run()

    def _outputs(self, kind: str, stream: Any = None):
        """The run's output (bound to CUDA `stream` when given); a device fault is raised as
        `DeviceFault`, anything else as it is (a sample's: narrowed down by the caller)."""
        try:
            (out,) = self._pipe(kind).outputs(cuda_stream=stream) if stream is not None else self._pipe(kind).outputs()
            return out
        except Exception as exc:
            if error_kind(exc) == "device":
                raise DeviceFault(f"DALI {self.name} ({type(exc).__name__}): {exc}") from exc
            self.stats["batch_errors"] += 1
            # DALI says the pipeline is gone after any failed run (a corrupt sample too): build a
            # fresh one for the next run (milliseconds)
            if "no longer valid" in str(exc):
                log.debug("rebuilding the DALI %s pipeline after: %s", kind, exc)
                self._pipes.pop(kind, None)
                self.stats["rebuilds"] += 1
            raise

    def _drain(self, kind: str) -> None:
        """Collect the run of `kind` in flight, if any, into its `Pending`."""
        held = self._inflight.pop(kind, None)
        if held is None:
            return
        pending, chunk = held
        pending.runs -= 1
        try:
            out = self._outputs(kind, self._stream(pending.gpu))
        except DeviceFault:
            raise
        except Exception:  # noqa: BLE001 - a sample's fault: narrowed down in finish()
            pending.failed.append(chunk)
            return
        self.stats["dali"] += len(chunk)
        self._collector(pending)(out, [it[0] for it in chunk])

    def _run_isolated(self, kind: str, items: Chunk, collect: Callable[[Any, list[int]], None],
                      gpu: bool = False) -> dict[int, Exception]:
        """Run `items` (position, per-input arrays) synchronously in batches; `collect(out, positions)`
        takes each successful run; a batch that fails is narrowed down (`isolate`). Returns the
        positions that failed on their own."""
        failed: dict[int, Exception] = {}

        def run(chunk: Chunk) -> list[None]:
            self._drain(kind)  # one run in flight per pipeline
            self._schedule(kind, chunk)
            collect(self._outputs(kind, self._stream(gpu)), [it[0] for it in chunk])
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
        except Exception as exc:  # noqa: BLE001 - per-sample policy (Pillow runs on the host: no device faults)
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
        paths: list[str | None] | None = None,
    ) -> list[np.ndarray | Exception]:
        """Decode each blob to uint8 HWC RGB, or return its exception in place.

        `size_request` is only used by the Pillow fallback (JPEG draft); DALI decodes full size.
        `paths`, when given, receives how each blob was decoded (see `Pending.paths`).
        """
        with self._lock:
            _, results, to_dali, to_pillow = self._screen(blobs, probes)
            how: list[str | None] = [None] * len(blobs)

            def collect(out, positions):
                host = out.as_cpu() if self.mode == "mixed" else out
                self.stats["dali"] += len(positions)
                for k, pos in enumerate(positions):
                    results[pos] = np.array(host[k], copy=True)
                    how[pos] = self.name

            items = [(i, {"blobs": np.frombuffer(blobs[i], np.uint8)}) for i in to_dali]
            failed = self._run_isolated("decode", items, collect)
            for i in to_pillow + list(failed):
                if i in failed:
                    self.stats["pillow_fallback"] += 1
                results[i] = self._pillow_decode(blobs[i], size_request, failed.get(i))
                if not isinstance(results[i], Exception):
                    how[i] = FALLBACK if i in failed else PILLOW
            if paths is not None:
                paths[:] = how
            return results

    # -- fused decode + resize ---------------------------------------------------------------
    def _stream(self, gpu: bool):
        """torch's current stream on our GPU (where GPU outputs are handed over), or None (host)."""
        if not gpu:
            return None
        import torch

        return torch.cuda.current_stream(self.device_id)

    def _collector(self, pending: Pending) -> Callable[[Any, list[int]], None]:
        """How a DALI output becomes results: host arrays, or (3, h, w) CUDA tensors (GPU mode)."""
        results, paths = pending.results, pending.paths
        if not pending.gpu:
            def collect_host(out, positions):
                host = out.as_cpu() if self.mode == "mixed" else out
                for k, pos in enumerate(positions):
                    results[pos] = np.array(host[k], copy=True)
                    if paths[pos] is None:
                        paths[pos] = self.name

            return collect_host

        from resize_pipeline.decode.dali_torch import to_torch

        def collect_gpu(out, positions):
            for pos, tensor in zip(positions, to_torch(out, self.device_id), strict=True):
                results[pos] = tensor
                if paths[pos] is None:
                    paths[pos] = self.name
            pending.outputs.append(out)  # its device memory may still be read by the copy in flight

        return collect_gpu

    def submit(
        self,
        blobs: Sequence[bytes],
        sizes: SizeSpec | Plan | Sequence[SizeSpec],
        *,
        probes: Sequence[Probe | None] | None = None,
        gpu: bool = False,
    ) -> Pending:
        """Start decoding + resizing a batch: its DALI runs are scheduled now (the previous batch's run
        is collected first: one run in flight), results come from `finish`.

        Args:
            blobs: encoded images.
            sizes: one target for all or one per blob: a (w, h) size (stretch), a `ResizeOp` (crop box
                in oriented source pixels + size), or a plan ``(w, h) -> ResizeOp`` called with each
                image's declared, orientation-corrected size. The output is ``op.size`` (a pad op's
                canvas is left to the caller).
            probes: pre-screen results (None entries are probed here).
            gpu: results as (3, h, w) uint8 CUDA tensors (mixed mode) on torch's current stream of the
                calling thread (call `submit` and `finish` with the same current device and stream)
                instead of host HWC arrays.

        `finish` must be called for every `Pending`, in submission order.
        """
        if gpu and self.mode != "mixed":
            raise RuntimeError("GPU output needs DaliDecoder(device='mixed') and a CUDA GPU")
        with self._lock:
            specs = per_sample(sizes, len(blobs))
            probes, results, to_dali, to_pillow = self._screen(blobs, probes)
            pending = Pending(results, list(probes), {}, specs, to_pillow, blobs, gpu, paths=[None] * len(blobs))
            for i in to_dali + to_pillow:
                try:
                    pending.ops[i] = resolve_op(specs[i], probes[i].size)
                except Exception as exc:  # noqa: BLE001
                    results[i] = exc
                    self.stats["failed"] += 1
            items = [(i, {"blobs": np.frombuffer(blobs[i], np.uint8), **resize_feeds(pending.ops[i])})
                     for i in to_dali if i in pending.ops]
            for start in range(0, len(items), self.batch_size):
                self._drain("decode_resize")  # one run in flight: the previous one is collected first
                chunk = items[start : start + self.batch_size]
                self._schedule("decode_resize", chunk)
                self._inflight["decode_resize"] = (pending, chunk)
                pending.runs += 1
            return pending

    def finish(self, pending: Pending) -> list[Any]:
        """The results of a submitted batch (arrays/tensors, or exceptions in place), in input order.
        `pending.paths` then says how each input was decoded."""
        with self._lock:
            if self._pid != os.getpid():
                raise RuntimeError("a DALI batch submitted before fork cannot be finished after it")
            if pending.runs:
                held = self._inflight.get("decode_resize")
                if held is None or held[0] is not pending:
                    raise RuntimeError("a DALI batch's run was lost; finish batches in submission order")
                self._drain("decode_resize")
            collect = self._collector(pending)
            failed: dict[int, Exception] = {}
            for chunk in pending.failed:
                failed.update(self._run_isolated("decode_resize", chunk, collect, pending.gpu))
            pending.failed = []
            # Pillow: decode on the host, then the same fn.resize (on the GPU in mixed mode)
            results, probes, specs = pending.results, pending.probes, pending.specs
            host: Chunk = []
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
                        op = resolve_op(specs[i], (img.shape[1], img.shape[0]))
                    except Exception as exc:  # noqa: BLE001
                        results[i] = exc
                        continue
                pending.paths[i] = FALLBACK if i in failed else PILLOW
                host.append((i, {"images": img, **resize_feeds(op)}))
            for i, err in self._run_isolated("resize", host, collect, pending.gpu).items():
                results[i] = err
                pending.paths[i] = None
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
        for key in ("_pipes", "_lock", "_dali", "_inflight"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._dali = import_dali()
        self._lock = threading.RLock()
        self._pipes, self._pid, self._inflight = {}, os.getpid(), {}

    def describe(self) -> dict:
        """What goes into the manifest about this decoder."""
        mixed = self.mode == "mixed"
        return {
            "name": self.name,
            "mode": self.mode,
            "device_id": self.device_id,
            "batch_size": self.batch_size,
            "num_threads": self.num_threads,
            "hw_decoder_load": self.hw_decoder_load if mixed else None,
            "jpeg_fancy_upsampling": self.jpeg_fancy_upsampling if mixed else None,
            "runs_in_flight": 1,
        }


__all__ = ["DaliDecoder", "Pending", "import_dali", "dali_installed", "INSTALL_HINT", "MODES", "PILLOW", "FALLBACK"]
