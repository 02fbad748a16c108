"""DALI graph building: the three pipelines `dali.DaliDecoder` feeds, and what they are built with.

- ``decode``: encoded bytes (``fn.external_source`` "blobs") -> ``fn.decoders.image`` -> RGB HWC;
- ``decode_resize``: the same, then ``fn.resize`` to a per-sample size with a per-sample crop window
  (external sources "size", "roi_start", "roi_end");
- ``resize``: host-decoded images (Pillow-routed) through the same ``fn.resize``.

Mode ``mixed`` decodes with nvJPEG on GPU ``device_id`` (the hardware JPEG decoder takes
``hw_decoder_load`` of each batch; ``jpeg_fancy_upsampling`` makes it upsample chroma like
libjpeg-turbo) and resizes on the GPU; ``cpu`` builds the same graph in a ``device_id=None`` pipeline
(DALI refuses any GPU operator there).

How the pipelines are driven (DALI's documented contract, `nvidia/dali/pipeline.py`, DALI 2.4):

- ``prefetch_queue_depth=1``: ``Pipeline.run(**pipeline_inputs)`` "requires setting either
  ``prefetch_queue_depth=1`` or ``exec_pipelined=False``" and is exactly ``feed_input`` +
  ``schedule_run`` + ``outputs``; the feeding side (`dali.DaliDecoder`) makes the same three calls
  with **one run in flight per pipeline**: it collects a run's outputs before it schedules the next.
  (A deeper queue wants its inputs "provided ahead of time ``prefetch_queue_depth`` times"
  (``feed_input``'s docstring), i.e. two batches before the first run: our batches arrive one by one.)
  The overlap across batches is the engine's: DALI decodes batch k+1 asynchronously
  (``exec_async``) while the next stage works on batch k in another thread.
- ``exec_dynamic=True`` (the default execution model since DALI 1.44, said explicitly): outputs are
  not recycled by the next run, and ``outputs(cuda_stream=s)`` returns GPU outputs ordered on the
  consumer's stream ``s`` instead of synchronised with the host ("Works only with pipelines using
  the default execution model", ``Pipeline.outputs``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from resize_pipeline.errors import SampleError
from resize_pipeline.geometry import ResizeOp

INSTALL_HINT = (
    "NVIDIA DALI is not installed: pip install 'resize-pipeline[dali]' (CUDA 13 wheels, "
    "nvidia-dali-cuda130) or 'resize-pipeline[dali-cuda120]' (CUDA 12, nvidia-dali-cuda120); "
    "CPU-only mode works with either"
)
MODES = ("cpu", "mixed")
INTERPOLATIONS = ("linear", "cubic", "lanczos", "triangular", "nearest")
KINDS = ("decode", "decode_resize", "resize")
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


def pipeline_kwargs(batch_size: int, num_threads: int, device_id: int | None) -> dict[str, Any]:
    """What every pipeline is constructed with (see the module docstring for why)."""
    return {"batch_size": batch_size, "num_threads": num_threads, "device_id": device_id,
            "prefetch_queue_depth": 1, "exec_async": True, "exec_pipelined": True, "exec_dynamic": True}


def build_pipeline(dali: tuple, kind: str, *, mode: str, batch_size: int, num_threads: int,
                   device_id: int | None, hw_decoder_load: float, jpeg_fancy_upsampling: bool, interp: str):
    """Define and build one pipeline of `kind` (`KINDS`); `dali` is `import_dali`'s triple."""
    if kind not in KINDS:
        raise ValueError(f"unknown pipeline kind {kind!r}; expected one of {', '.join(KINDS)}")
    Pipeline, fn, types = dali
    pipe = Pipeline(**pipeline_kwargs(batch_size, num_threads, device_id))
    dec_kw: dict[str, Any] = {"device": mode, "output_type": types.RGB, "adjust_orientation": True}
    if mode == "mixed":
        dec_kw.update(hw_decoder_load=hw_decoder_load, jpeg_fancy_upsampling=jpeg_fancy_upsampling)
    with pipe:
        if kind == "resize":  # host-decoded (Pillow-routed) images through the same resize
            img = fn.external_source(name="images", dtype=types.UINT8, ndim=3, layout="HWC")
            if mode == "mixed":
                img = img.gpu()
        else:
            blobs = fn.external_source(name="blobs", dtype=types.UINT8, ndim=1)
            img = fn.decoders.image(blobs, **dec_kw)
        if kind in ("resize", "decode_resize"):
            size = fn.external_source(name="size", dtype=types.FLOAT, ndim=1)
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
            filters = {"linear": types.INTERP_LINEAR, "cubic": types.INTERP_CUBIC, "lanczos": types.INTERP_LANCZOS3,
                       "triangular": types.INTERP_TRIANGULAR, "nearest": types.INTERP_NN}
            img = fn.resize(img, device="gpu" if mode == "mixed" else "cpu", size=size, roi_start=roi_start,
                            roi_end=roi_end, interp_type=filters[interp], antialias=interp != "nearest")
        pipe.set_outputs(img)
    pipe.build()
    return pipe


def resize_feeds(op: ResizeOp) -> dict[str, np.ndarray]:
    """The per-sample inputs of ``fn.resize`` for `op` (DALI's order: (h, w), (top, left))."""
    left, top, right, bottom = op.box
    return {
        "size": np.array([op.size[1], op.size[0]], np.float32),
        "roi_start": np.array([top, left], np.float32),
        "roi_end": np.array([bottom, right], np.float32),
    }


def resolve_op(spec: SizeSpec | Plan, size: tuple[int, int] | None) -> ResizeOp:
    """One sample's `ResizeOp` from its size spec and its (oriented) image size."""
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


def per_sample(sizes, n: int) -> list:
    """Broadcast one size spec (pair, ResizeOp, plan) to `n` samples, or check a per-sample list."""
    if callable(sizes) or isinstance(sizes, ResizeOp):
        return [sizes] * n
    sizes = list(sizes)
    if len(sizes) == 2 and all(isinstance(v, int | float | np.number) for v in sizes):
        return [tuple(sizes)] * n
    if len(sizes) != n:
        raise ValueError(f"got {len(sizes)} sizes for {n} images")
    return sizes
