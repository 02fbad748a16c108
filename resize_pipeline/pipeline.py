"""The stages one worker runs, built once from the config and the driver's `Resolved` decisions:

    read (+ header probes) -> [split by decoded pixels] -> decode -> resize -> encode   (Pillow, or DALI + a resizer)
    read (+ header probes) -> DALI decode+crop+resize -> CNN -> encode   (fused: one device)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.stream import Step, lagged, map_step, split_step


@dataclass
class Stages:
    """A worker's built stages: `steps` for the stream, and what was built (for the manifest)."""

    steps: list[Step]
    built: dict[str, Any] = field(default_factory=dict)
    #: the stage objects, in order (read, decode(/fused), resize, encode)
    parts: list[Any] = field(default_factory=list)


#: modes whose output size is the same for every image: the CNN's shapes are known before the first
#: batch, so its CUDA graphs are captured at start-up (the other modes' shapes follow each image's
#: aspect ratio: they run eagerly)
FIXED_SHAPE_MODES = ("center-crop", "stretch")


def graph_shapes(config) -> tuple[tuple[int, int], ...]:
    """The output sizes (w, h) whose learned-resizer CNN runs as a CUDA graph (``--cuda-graphs``)."""
    if not config.cuda_graphs or config.mode not in FIXED_SHAPE_MODES:
        return ()
    return (tuple(config.size),)


def build_resizer(config, resolved, device: str, threads: int):
    from resize_pipeline.resize import get_resizer

    if not config.resizer.startswith("learned"):
        return get_resizer(config.resizer)
    from resize_pipeline.learned.inference import LearnedResizer

    gpu = resolved.uses_gpu
    return LearnedResizer(resolved.resizer["path"], device=device if gpu else "cpu",
                          batch_size=config.batch_size, precision=resolved.precision,
                          compile=config.compile, threads=threads, channels_last=config.channels_last,
                          cuda_graphs=config.cuda_graphs and gpu, graph_shapes=graph_shapes(config) if gpu else (),
                          # on a CPU: bytes independent of the worker layout (one torch thread per sample)
                          sample_threads=None if gpu else threads)


def build_stages(config, resolved, device: str = "cpu", threads: int = 1) -> Stages:
    """Build the stages for a worker placed on `device` (``cpu`` or ``cuda:N`` as seen by the worker)
    that may use `threads` CPU threads."""
    from resize_pipeline.decode import decoder_spec, get_decoder
    from resize_pipeline.stages import DecodeStage, EncodeStage, PixelBudget, ReadStage, ResizeStage

    spec = decoder_spec(resolved.decoder)
    device_id = int(device.split(":", 1)[1]) if device.startswith("cuda:") else None
    read = ReadStage(config.storage_options, threads=max(4, threads),
                     probe_max_pixels=config.max_pixels if spec.needs_probe else None, timeout=config.read_timeout,
                     max_bytes=config.max_bytes, digest=config.dedup is not None)
    encode = EncodeStage(config.encode, config.quality, threads=threads, jpeg_backend=resolved.jpeg_backend or "auto")
    resizer = build_resizer(config, resolved, device, threads)
    decoder_kw: dict[str, Any] = dict(background=config.background, max_pixels=config.max_pixels, draft=config.draft,
                                      num_threads=threads, batch_size=config.batch_size, device_id=device_id,
                                      hw_decoder_load=config.hw_decoder_load,
                                      jpeg_fancy_upsampling=config.jpeg_fancy_upsampling)
    if resolved.fused:
        from resize_pipeline.stages_fused import DALI_INTERP, FusedDecodeResizeStage

        decoder_kw["interp"] = "linear" if config.resizer.startswith("learned") else DALI_INTERP[config.resizer]
        fused = FusedDecodeResizeStage(get_decoder(resolved.decoder, **decoder_kw),
                                       resizer if config.resizer.startswith("learned") else None,
                                       size=config.size, mode=config.mode, pad_color=config.pad_color)
        steps = [map_step(read), lagged(fused.submit, fused.finish), lagged(fused.resize_submit, fused.resize_finish),
                 map_step(encode)]
        return Stages(steps, {**fused.describe(), "encoder": encode.encoder.describe(), "device": device},
                      [read, fused, encode])
    from resize_pipeline.resize import ClassicalResizer

    decode = DecodeStage(get_decoder(resolved.decoder, **decoder_kw), size=config.size, mode=config.mode,
                         input_scale=resizer.input_scale, threads=threads,
                         as_image=isinstance(resizer, ClassicalResizer))
    resize = ResizeStage(resizer, size=config.size, mode=config.mode, pad_color=config.pad_color, threads=threads)
    built = {"decoder": decode.decoder.describe(), "resizer": resizer.describe(),
             "encoder": encode.encoder.describe(), "device": device}
    # decoded images are held in this process between decode and resize: bound their pixels per batch
    budget = PixelBudget(config.max_batch_pixels, decode.size_request if config.draft and spec.family == "pillow" else None,
                         refused_above=config.max_pixels)
    steps = [map_step(read), split_step(budget), *(map_step(s) for s in (decode, resize, encode))]
    return Stages(steps, built, [read, decode, resize, encode])
