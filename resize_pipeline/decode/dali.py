"""NVIDIA DALI decoder: nvJPEG on the GPU (``mixed``), DALI CPU-only without a GPU, Pillow for the rest.

Modes (attribute ``DaliDecoder.mode``):

- ``"mixed"``: ``fn.decoders.image(device="mixed")`` — nvJPEG with the A100/H100/H200 hardware JPEG
  decoder taking ``hw_decoder_load`` of the work (default 0.65, DALI's; 0.9 was best on an H200 at
  batch 256 in the founders' measurements), the rest on nvJPEG's hybrid path. Used when a GPU is
  visible.
- ``"cpu"``: the same graph with ``device="cpu"`` (libjpeg-turbo, libpng) in a ``device_id=None``
  pipeline. DALI refuses any mixed/GPU operator in that mode, so it is a separately built graph.

``make_dali_decoder("auto")`` picks mixed when a GPU is visible and CPU-only otherwise, and returns a
`PillowDecoder` when DALI is not installed; ``make_dali_decoder("dali")`` requires DALI.

Bytes come from our sources (fsspec), never from DALI readers: they are fed with ``fn.external_source``
in batch mode; the pipeline is built once and takes any batch size up to ``batch_size``.

Which image goes where (the pre-screen, `probe`): every blob is opened lazily with Pillow (header only).

- empty, unidentifiable: the error is returned in place (nothing decodes it);
- declared size above ``max_pixels``: `ImageTooLarge`, before any decoding (bomb guard);
- to DALI: JPEG/MPO in RGB (YCbCr) or greyscale that ends with an EOI marker and whose scan data
  holds no invalid marker (DALI decodes those to garbage where Pillow raises), and 8-bit opaque
  RGB/grey PNG that ends with IEND and has no eXIf chunk. DALI honours EXIF orientation
  (``adjust_orientation=True``, checked equal to Pillow's ``exif_transpose`` for all 8 orientations);
- to Pillow (`PillowDecoder`, same colour rule as ``decode/base.py``): CMYK/YCCK JPEG, 16-bit PNG,
  palette/alpha/tRNS PNG, GIF, TIFF, WebP, BMP and anything else, and truncated or corrupt-looking
  files (so they end as they would with Pillow alone).

DALI fails a whole batch when one member is corrupt. A failed batch is bisected and re-run; a sample
that fails on its own is retried through Pillow, and only then returned as an exception. Output is
uint8 HWC RGB, like every `Decoder`.

GPU fused path (what the GPU engine uses; needs ``mode == "mixed"``)::

    dec = DaliDecoder(device="mixed", batch_size=128, num_threads=8, hw_decoder_load=0.9)
    batch = dec.decode_resize_gpu_batch(blobs, lambda w, h: plan_resize(w, h, (448, 448), "center-crop"))
    y = learned.resize_tensor(batch.images, size=(224, 224))   # (B,3,448,448) uint8 CUDA in
    # batch.index[i] is the input position of row i; batch.errors maps input positions to exceptions

Decoding, the crop box and the antialiased resize (``fn.resize``, linear by default) all run on the
GPU, and the result is copied device-to-device into torch memory (``copy_to_external`` on torch's
current stream): no host round trip. ``decode_resize_gpu`` returns one ``(3, h, w)`` tensor per
sample instead (mixed sizes). Tensors are permuted views of HWC memory, i.e. NCHW with channels-last
strides, which is what a channels-last fp16 model wants; call ``.contiguous()`` for NCHW memory.
Images routed to Pillow are decoded on the host and resized by the same ``fn.resize`` on the GPU.
``decode_resize`` runs the same graph and returns host arrays; it also works in CPU mode.
"""

from __future__ import annotations

import ctypes
import io
import logging
import os
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resize_pipeline.decode.base import Decoder, SizeRequest
from resize_pipeline.decode.pillow import DEFAULT_MAX_PIXELS, PillowDecoder
from resize_pipeline.errors import ImageTooLarge, SampleError
from resize_pipeline.geometry import ResizeOp

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "NVIDIA DALI is not installed: pip install 'resize-pipeline[dali]' (CUDA 13 wheels, "
    "nvidia-dali-cuda130) or 'resize-pipeline[dali-cuda120]' (CUDA 12, nvidia-dali-cuda120); "
    "CPU-only mode works with either"
)
MODES = ("auto", "cpu", "mixed")
INTERPOLATIONS = ("linear", "cubic", "lanczos", "triangular", "nearest")

_TRANSPOSING = {5, 6, 7, 8}
#: resize target per sample: a (w, h) size, a ResizeOp (size + crop box), or a plan from the
#: oriented (w, h) of the image to a ResizeOp (e.g. ``lambda w, h: plan_resize(w, h, t, mode)``)
SizeSpec = tuple[int, int] | ResizeOp
Plan = Callable[[int, int], ResizeOp]


def _import_dali():
    try:
        import nvidia.dali as dali  # noqa: F401
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import Pipeline
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return Pipeline, fn, types


def cuda_device_count() -> int:
    """GPUs visible to this process, without creating a CUDA context (fork-safe where NVML is)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    try:
        import torch

        if torch.version.cuda is not None:  # a CUDA build: NVML count, does not poison fork
            return int(torch.cuda.device_count())
    except ImportError:
        pass
    try:  # torch without CUDA support: ask DALI (initialises the CUDA driver)
        from nvidia.dali.backend import GetCUDADeviceCount  # type: ignore[attr-defined]

        return int(GetCUDADeviceCount())
    except Exception:  # noqa: BLE001 - no driver, no DALI: no GPU
        return 0


@dataclass(frozen=True, slots=True)
class Probe:
    """Result of the cheap pre-screen of one blob."""

    route: str  # "dali" | "pillow" | "error"
    size: tuple[int, int] | None = None  # oriented (w, h) as declared by the header
    reason: str = ""
    error: Exception | None = None


def probe(blob: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Probe:
    """Read the header only: declared size, EXIF orientation, and whether DALI can take the file."""
    from PIL import Image

    if not blob:
        return Probe("error", error=SampleError("empty file (0 bytes)"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(blob))
        except Image.DecompressionBombError as exc:
            return Probe("error", error=ImageTooLarge(str(exc)))
        except Exception as exc:  # noqa: BLE001 - unidentifiable: nothing will decode it
            return Probe("error", error=exc)
        w, h = img.size
        if w * h > max_pixels:
            msg = f"declared size {w}x{h} = {w * h} px exceeds max_pixels={max_pixels}"
            return Probe("error", error=ImageTooLarge(msg))
        fmt, mode = img.format, img.mode
        if fmt in ("JPEG", "MPO"):
            try:
                orientation = img.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001 - broken EXIF: let Pillow decide
                return Probe("pillow", (w, h), "unreadable EXIF")
            size = (h, w) if orientation in _TRANSPOSING else (w, h)
            if mode not in ("RGB", "L"):
                return Probe("pillow", size, f"JPEG mode {mode}")
            if blob.rstrip(b"\x00\r\n\t ")[-2:] != b"\xff\xd9":
                return Probe("pillow", size, "JPEG without EOI marker (truncated?)")
            if _jpeg_scan_corrupt(blob):
                return Probe("pillow", size, "invalid marker in the JPEG scan data")
            return Probe("dali", size)
        if fmt == "PNG":
            # IHDR bit depth is byte 24; Pillow reports 16-bit RGB PNGs as mode "RGB"
            if mode not in ("RGB", "L") or blob[24:25] != b"\x08" or "transparency" in img.info:
                depth = blob[24] if len(blob) > 24 else "?"
                return Probe("pillow", (w, h), f"PNG mode {mode}, bit depth {depth}")
            if b"IEND" not in blob[-16:]:
                return Probe("pillow", (w, h), "PNG without IEND (truncated?)")
            if b"eXIf" in blob:  # Pillow reads EXIF orientation from eXIf chunks after IDAT
                return Probe("pillow", (w, h), "PNG with eXIf")
            return Probe("dali", (w, h))
        return Probe("pillow", (w, h), f"format {fmt}")


def _jpeg_scan_corrupt(blob: bytes) -> bool:
    """True if the entropy-coded data holds a byte pair no valid JPEG has (0xFF then 0x01..0xBF).

    In scan data 0xFF is followed only by 0x00 (stuffing), 0xFF (fill) or a marker (>= 0xC0, e.g.
    RSTn, DHT/SOS between progressive scans, EOI). libjpeg-turbo inside DALI decodes such files to
    garbage with a warning, where Pillow raises; routing them to Pillow keeps Pillow's outcome.
    Random corruption of a scan trips this with near certainty; a false alarm only costs speed.
    """
    sos = blob.find(b"\xff\xda")
    if sos < 0:
        return True
    data = np.frombuffer(blob, np.uint8, offset=sos + 2)
    ff = np.flatnonzero(data[:-1] == 0xFF)
    follow = data[ff + 1]
    return bool(((follow >= 0x01) & (follow <= 0xBF)).any())


@dataclass
class GpuBatch:
    """Equal-size output of `DaliDecoder.decode_resize_gpu_batch`."""

    #: (n_ok, 3, h, w) uint8 CUDA tensor, channels-last strides (a permuted NHWC buffer)
    images: Any
    #: input position of each row of `images`
    index: list[int] = field(default_factory=list)
    #: input position -> the exception that stopped that sample
    errors: dict[int, Exception] = field(default_factory=dict)


class DaliDecoder(Decoder):
    """Decode batches with NVIDIA DALI; per-sample fallback to Pillow.

    Args:
        background: colour that alpha is composited over (Pillow-routed images; DALI gets no alpha).
        max_pixels: refuse images whose declared size exceeds this, before decoding.
        draft: passed to the Pillow fallback (DALI always decodes at full size).
        device: ``"auto"`` (mixed if a GPU is visible), ``"mixed"`` or ``"cpu"``.
        device_id: GPU ordinal for mixed mode (default 0).
        num_threads: DALI CPU threads (default: CPU count, at most 8).
        batch_size: largest batch one DALI run takes; bigger inputs are split.
        hw_decoder_load: share of JPEGs sent to the hardware decoder (mixed mode only).
        jpeg_fancy_upsampling: make nvJPEG upsample chroma like libjpeg-turbo/Pillow (mixed only).
        interp: ``fn.resize`` filter for the fused resize paths (antialiased when downscaling).
    """

    name = "dali"

    def __init__(
        self,
        background: tuple[int, int, int] = (255, 255, 255),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft: bool = True,
        *,
        device: str = "auto",
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
        self._Pipeline, self._fn, self._types = _import_dali()
        auto = device == "auto"
        if auto:
            device = "mixed" if cuda_device_count() > 0 else "cpu"
        elif device == "mixed" and cuda_device_count() == 0:
            raise RuntimeError("DALI mixed (GPU) decoding asked for, but no CUDA GPU is visible")
        self.mode = device
        self.device_id = (device_id if device_id is not None else 0) if device == "mixed" else None
        self.num_threads = int(num_threads or max(1, min(8, os.cpu_count() or 1)))
        self.batch_size = int(batch_size)
        self.hw_decoder_load = float(hw_decoder_load)
        self.jpeg_fancy_upsampling = jpeg_fancy_upsampling
        self.interp = interp
        self.background = tuple(background)
        self.max_pixels = int(max_pixels)
        self.pillow = PillowDecoder(background=background, max_pixels=max_pixels, draft=draft)
        #: counts: dali (decoded by DALI), pillow_routed, pillow_fallback, failed, batch_errors
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._pipes: dict[str, Any] = {}
        self._pid = os.getpid()
        try:
            self._pipe("decode")  # built once here; the fused graphs are built on first use
        except Exception as exc:
            if not (auto and self.mode == "mixed"):
                raise
            # a GPU is listed but unusable (driver, MIG, out of memory): decode on the CPU instead
            log.warning("DALI mixed decoder unavailable (%s); using DALI CPU-only", exc)
            self.mode, self.device_id = "cpu", None
            self._pipes.clear()
            self._pipe("decode")

    # -- pipelines ---------------------------------------------------------------------------
    def _build(self, kind: str):
        fn, types = self._fn, self._types
        pipe = self._Pipeline(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=self.device_id,
            prefetch_queue_depth=1,  # we feed one batch and wait for it; dynamic executor
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
        if kind not in self._pipes:
            self._pipes[kind] = self._build(kind)
        return self._pipes[kind]

    def _run(self, kind: str, feeds: dict[str, list[np.ndarray]]):
        """One DALI iteration; returns the output TensorList. Rebuilds the pipeline if DALI broke it."""
        pipe = self._pipe(kind)
        try:
            for name, data in feeds.items():
                pipe.feed_input(name, data)
            (out,) = pipe.run()
            return out
        except Exception as exc:
            # DALI's dynamic executor survives a bad sample; when it says the pipeline is gone
            # (other executors, CUDA errors), build a fresh one for the next run
            if "no longer valid" in str(exc):
                log.debug("rebuilding the DALI %s pipeline after: %s", kind, exc)
                self._pipes.pop(kind, None)
                self.stats["rebuilds"] += 1
            raise

    def _run_bisect(
        self,
        kind: str,
        items: list[tuple[int, dict[str, np.ndarray]]],
        collect: Callable[[Any, list[int]], None],
        failed: dict[int, Exception],
    ) -> None:
        """Run `items` (position, per-input arrays) through DALI; on a batch error split and retry.

        `collect(tensor_list, positions)` consumes each successful run right away (copies it out).
        Samples that fail alone land in `failed`.
        """
        for start in range(0, len(items), self.batch_size):
            stack = [items[start : start + self.batch_size]]
            while stack:
                chunk = stack.pop()
                feeds = {name: [it[1][name] for it in chunk] for name in chunk[0][1]}
                try:
                    out = self._run(kind, feeds)
                except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError for any bad member
                    self.stats["batch_errors"] += 1
                    if len(chunk) == 1:
                        failed[chunk[0][0]] = exc
                    else:
                        mid = len(chunk) // 2
                        stack.extend([chunk[mid:], chunk[:mid]])
                    continue
                collect(out, [it[0] for it in chunk])

    # -- decode (host output) --------------------------------------------------------------------
    def _screen(self, blobs: Sequence[bytes], probes: Sequence[Probe] | None = None):
        """Probe every blob: (probes, results-so-far with errors filled, dali positions, pillow positions)."""
        if probes is None:
            probes = [probe(b, self.max_pixels) for b in blobs]
        elif len(probes) != len(blobs):
            raise ValueError(f"got {len(probes)} probes for {len(blobs)} blobs")
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

    def _decode(self, blobs: Sequence[bytes], size_request, collect, convert, probes=None) -> list[Any]:
        """Shared body of `decode` / `decode_gpu`: DALI runs go to `collect`, Pillow arrays to `convert`."""
        _, results, to_dali, to_pillow = self._screen(blobs, probes)

        def count_and_collect(out, positions):
            self.stats["dali"] += len(positions)
            collect(out, positions)

        failed: dict[int, Exception] = {}
        items = [(i, {"blobs": np.frombuffer(blobs[i], np.uint8)}) for i in to_dali]
        self._run_bisect("decode", items, count_and_collect, failed)
        for i in to_pillow + list(failed):
            if i in failed:
                self.stats["pillow_fallback"] += 1
            img = self._pillow_decode(blobs[i], size_request, failed.get(i))
            results[i] = img if isinstance(img, Exception) else convert(img)
        return results

    def decode(
        self,
        blobs: Sequence[bytes],
        size_request: SizeRequest | None = None,
        *,
        probes: Sequence[Probe] | None = None,
    ) -> list[np.ndarray | Exception]:
        """Decode each blob to uint8 HWC RGB, or return its exception in place.

        `size_request` is only used by the Pillow fallback (JPEG draft); DALI decodes full size.
        `probes`: `probe(blob, max_pixels)` results computed elsewhere (e.g. by the reader workers,
        in parallel); by default the pre-screen runs here, in the calling thread.
        """
        with self._lock:
            results: list[Any] = [None] * len(blobs)

            def collect(out, positions):
                host = out.as_cpu() if self.mode == "mixed" else out
                for k, pos in enumerate(positions):
                    results[pos] = np.array(host[k], copy=True)

            screened = self._decode(blobs, size_request, collect, lambda img: img, probes)
            return [r if r is not None else s for r, s in zip(results, screened, strict=True)]

    def decode_gpu(self, blobs: Sequence[bytes], *, probes: Sequence[Probe] | None = None) -> list[Any]:
        """Decode on the GPU at full size: one (3, h, w) uint8 CUDA tensor (channels-last view) each.

        Pillow-routed images are decoded on the host and uploaded.
        """
        torch = self._require_gpu()
        device = torch.device("cuda", self.device_id)
        with self._lock, torch.cuda.device(self.device_id):
            results: list[Any] = [None] * len(blobs)

            def upload(img: np.ndarray):
                return torch.from_numpy(img).to(device).permute(2, 0, 1)

            screened = self._decode(blobs, None, self._torch_collect(torch, results), upload, probes)
            return [r if r is not None else s for r, s in zip(results, screened, strict=True)]

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

    def _decode_resize(self, blobs: Sequence[bytes], sizes, collect, probes=None) -> list[Any]:
        """Shared body of the fused paths; `collect(out, positions)` stores DALI outputs."""
        specs = _per_sample(sizes, len(blobs))
        probes, results, to_dali, to_pillow = self._screen(blobs, probes)
        ops: dict[int, ResizeOp] = {}
        for i in to_dali + to_pillow:
            try:
                ops[i] = self._resolve(specs[i], probes[i].size)
            except Exception as exc:  # noqa: BLE001
                results[i] = exc
                self.stats["failed"] += 1
        failed: dict[int, Exception] = {}
        items = [
            (i, {"blobs": np.frombuffer(blobs[i], np.uint8), **self._resize_feeds(ops[i])})
            for i in to_dali
            if i in ops
        ]

        def count_and_collect(out, positions):
            self.stats["dali"] += len(positions)
            collect(out, positions)

        self._run_bisect("decode_resize", items, count_and_collect, failed)
        # Pillow: decode on the host, then the same fn.resize (on the GPU in mixed mode)
        host: list[tuple[int, dict[str, np.ndarray]]] = []
        for i in [j for j in to_pillow if j in ops] + list(failed):
            if i in failed:
                self.stats["pillow_fallback"] += 1
            img = self._pillow_decode(blobs[i], None, failed.get(i))
            if isinstance(img, Exception):
                results[i] = img
                continue
            op = ops[i]
            if (img.shape[1], img.shape[0]) != probes[i].size:  # header lied: re-plan on the real size
                try:
                    op = self._resolve(specs[i], (img.shape[1], img.shape[0]))
                except Exception as exc:  # noqa: BLE001
                    results[i] = exc
                    continue
            host.append((i, {"images": img, **self._resize_feeds(op)}))
        failed_resize: dict[int, Exception] = {}
        self._run_bisect("resize", host, collect, failed_resize)
        for i, err in failed_resize.items():
            results[i] = err
            self.stats["failed"] += 1
        return results

    def decode_resize(
        self,
        blobs: Sequence[bytes],
        sizes: SizeSpec | Plan | Sequence[SizeSpec],
        *,
        probes: Sequence[Probe] | None = None,
    ) -> list[Any]:
        """Decode and resize with DALI (either mode); host uint8 HWC arrays or exceptions.

        Args:
            blobs: encoded images.
            sizes: one target for all or one per blob: a (w, h) size (stretch), a `ResizeOp`
                (crop box in oriented source pixels + size), or a plan ``(w, h) -> ResizeOp`` called
                with each image's declared, orientation-corrected size. Like every `Resizer`, the
                output is ``op.size``: a pad op's canvas is left to the resize stage.
        """
        with self._lock:
            results: list[Any] = [None] * len(blobs)

            def collect(out, positions):
                host = out.as_cpu() if self.mode == "mixed" else out
                for k, pos in enumerate(positions):
                    results[pos] = np.array(host[k], copy=True)

            screened = self._decode_resize(blobs, sizes, collect, probes)
            return [r if r is not None else s for r, s in zip(results, screened, strict=True)]

    def _require_gpu(self):
        if self.mode != "mixed":
            raise RuntimeError("decode_resize_gpu needs DaliDecoder(device='mixed') and a CUDA GPU")
        import torch

        return torch

    def _torch_collect(self, torch, results: list[Any]):
        stream = torch.cuda.current_stream(self.device_id)
        device = torch.device("cuda", self.device_id)
        raw_stream = self._types._raw_cuda_stream_ptr  # what DALI's own feed_ndarray uses

        def collect(out, positions):
            shapes = [tuple(s) for s in out.shape()]
            total = sum(int(np.prod(s)) for s in shapes)
            flat = torch.empty(total, dtype=torch.uint8, device=device)
            # one device-to-device copy of the whole (ragged) batch, samples back to back, on
            # torch's stream; blocking so DALI may reuse its buffers right after
            # (run() returned host-synchronised outputs, so the copy needs no extra stream wait)
            out.copy_to_external(ctypes.c_void_p(flat.data_ptr()), raw_stream(stream), non_blocking=False)
            offset = 0
            for shape, pos in zip(shapes, positions, strict=True):
                size = int(np.prod(shape))
                results[pos] = flat[offset : offset + size].view(shape).permute(2, 0, 1)
                offset += size

        return collect

    def decode_resize_gpu(
        self,
        blobs: Sequence[bytes],
        sizes: SizeSpec | Plan | Sequence[SizeSpec],
        *,
        probes: Sequence[Probe] | None = None,
    ) -> list[Any]:
        """Decode (nvJPEG) + crop + resize on the GPU; one (3, h, w) uint8 CUDA tensor per sample.

        Failed samples are exceptions in place. Tensors are views (channels-last strides) of one
        buffer per DALI run. See `decode_resize` for `sizes`.
        """
        torch = self._require_gpu()
        with self._lock, torch.cuda.device(self.device_id):
            results: list[Any] = [None] * len(blobs)
            screened = self._decode_resize(blobs, sizes, self._torch_collect(torch, results), probes)
            return [r if r is not None else s for r, s in zip(results, screened, strict=True)]

    def decode_resize_gpu_batch(
        self,
        blobs: Sequence[bytes],
        size: tuple[int, int] | Plan,
        *,
        probes: Sequence[Probe] | None = None,
    ) -> GpuBatch:
        """Like `decode_resize_gpu` with one output size for all: a (n_ok, 3, h, w) batch tensor.

        This is what the GPU engine feeds to ``LearnedResizer.resize_tensor(x, size=(w, h))``.
        """
        torch = self._require_gpu()
        out = self.decode_resize_gpu(blobs, size, probes=probes)
        index = [i for i, r in enumerate(out) if not isinstance(r, Exception)]
        errors = {i: r for i, r in enumerate(out) if isinstance(r, Exception)}
        if not index:
            return GpuBatch(images=None, index=[], errors=errors)
        shapes = {tuple(out[i].shape) for i in index}
        if len(shapes) != 1:
            raise ValueError(f"decode_resize_gpu_batch needs one output size, got {sorted(shapes)}")
        # stack HWC then permute: NCHW view with channels-last memory
        images = torch.stack([out[i].permute(1, 2, 0) for i in index]).permute(0, 3, 1, 2)
        return GpuBatch(images=images, index=index, errors=errors)

    def __getstate__(self) -> dict:
        """Pickle without the pipelines (Ray actors, spawn workers); they are rebuilt on arrival."""
        state = self.__dict__.copy()
        for key in ("_pipes", "_lock", "_Pipeline", "_fn", "_types"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._Pipeline, self._fn, self._types = _import_dali()
        self._lock = threading.Lock()
        self._pipes, self._pid = {}, os.getpid()

    def describe(self) -> dict:
        """What goes into the manifest about this decoder."""
        return {
            "name": self.name,
            "mode": self.mode,
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


def make_dali_decoder(name: str = "auto", **kwargs) -> Decoder:
    """Build the decoder for ``--decoder auto|dali``.

    ``auto``: DALI mixed with a GPU, DALI CPU-only without one, Pillow when DALI is not installed.
    ``dali``: DALI (mixed if a GPU is visible, else CPU); ImportError naming the extra if missing.
    Keyword arguments are `DaliDecoder`'s; for the Pillow fallback only background, max_pixels and
    draft are used.
    """
    if name not in ("auto", "dali"):
        raise ValueError(f"unknown DALI decoder {name!r}; expected one of auto, dali")
    try:
        _import_dali()
    except ImportError:
        if name == "dali":
            raise
        log.info("DALI not installed; decoding with Pillow (%s)", INSTALL_HINT)
        pil_kw = {k: v for k, v in kwargs.items() if k in ("background", "max_pixels", "draft")}
        return PillowDecoder(**pil_kw)
    return DaliDecoder(**kwargs)


__all__ = [
    "DaliDecoder",
    "GpuBatch",
    "Probe",
    "probe",
    "make_dali_decoder",
    "cuda_device_count",
    "INSTALL_HINT",
]
