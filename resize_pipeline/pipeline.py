"""The stages one worker runs, built once from the config and the driver's `Resolved` decisions:

    read (+ header probes) -> decode -> resize -> encode            (Pillow, or DALI + a resizer)
    read (+ header probes) -> DALI decode+crop+resize -> CNN -> encode   (fused: one device)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.stream import Step, lagged, map_step


@dataclass
class Stages:
    """A worker's built stages: `steps` for the stream, and what was built (for the manifest)."""

    steps: list[Step]
    built: dict[str, Any] = field(default_factory=dict)
    #: the stage objects, in order (read, decode(/fused), resize, encode)
    parts: list[Any] = field(default_factory=list)


def build_resizer(config, resolved, device: str, threads: int):
    from resize_pipeline.resize import get_resizer

    if not config.resizer.startswith("learned"):
        return get_resizer(config.resizer)
    from resize_pipeline.learned.inference import LearnedResizer

    return LearnedResizer(resolved.resizer["path"], device=device if resolved.uses_gpu else "cpu",
                          batch_size=config.batch_size, precision=resolved.precision,
                          compile=config.compile, threads=threads)


def build_stages(config, resolved, device: str = "cpu", threads: int = 1) -> Stages:
    """Build the stages for a worker placed on `device` (``cpu`` or ``cuda:N`` as seen by the worker)
    that may use `threads` CPU threads."""
    from resize_pipeline.decode import get_decoder
    from resize_pipeline.stages import DecodeStage, EncodeStage, ReadStage, ResizeStage

    dali = resolved.decoder.startswith("dali")
    device_id = int(device.split(":", 1)[1]) if device.startswith("cuda:") else None
    read = ReadStage(config.storage_options, threads=max(4, threads),
                     probe_max_pixels=config.max_pixels if dali else None, timeout=config.read_timeout,
                     digest=config.dedup is not None)
    encode = EncodeStage(config.encode, config.quality, threads=threads)
    resizer = build_resizer(config, resolved, device, threads)
    decoder_kw: dict[str, Any] = dict(background=config.background, max_pixels=config.max_pixels, draft=config.draft)
    if dali:
        decoder_kw.update(num_threads=threads, batch_size=config.batch_size, device_id=device_id,
                          hw_decoder_load=config.hw_decoder_load)
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
    return Stages([map_step(s) for s in (read, decode, resize, encode)], built, [read, decode, resize, encode])
