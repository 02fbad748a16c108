"""Decoders: Pillow everywhere, NVIDIA DALI (GPU nvJPEG or CPU-only) where installed.

Each decoder a worker can build declares its capabilities once, here (`DECODER_SPECS`), and the rest
of the package asks the registry (`decoder_spec`) instead of testing names: whether the read stage
pre-screens headers for it, whether it decodes, crops and resizes in one graph (`stages_fused`),
whether it runs its own thread pool, which device it decodes on, what must be installed, and which
output options only it reads (left out of a run's fingerprint when another decoder runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resize_pipeline.decode.base import Decoder, SizeRequest, to_rgb_array
from resize_pipeline.decode.pillow import PillowDecoder

#: what a user asks for (``--decoder``); the driver resolves it to one of `BUILT`
DECODERS = ("auto", "pillow", "dali")
_PILLOW_KW = ("background", "max_pixels", "draft")
_DALI_KW = _PILLOW_KW + ("device_id", "num_threads", "batch_size", "hw_decoder_load", "jpeg_fancy_upsampling",
                         "interp")


@dataclass(frozen=True, slots=True)
class DecoderSpec:
    """What one buildable decoder is and can do.

    Attributes:
        name: the resolved name (`BUILT`), also the decoder's ``name``.
        family: the ``--decoder`` choice it belongs to (``pillow``, ``dali``).
        device: where it decodes: ``cpu`` or ``gpu``.
        needs_probe: the read stage pre-screens each file's header for it (`decode.probe`).
        fuses_resize: decode + crop + resize in one graph (`stages_fused.FusedDecodeResizeStage`).
        own_threads: it runs its own thread pool (the decode stage does not spread its batches).
        requires: the package it needs (None: always available).
        output_options: config fields that change its output (fingerprinted only when it runs).
        kwargs: the `get_decoder` keyword arguments it takes (others are ignored).
    """

    name: str
    family: str
    device: str
    needs_probe: bool
    fuses_resize: bool
    own_threads: bool
    requires: str | None
    output_options: tuple[str, ...]
    kwargs: tuple[str, ...]
    build: Callable[..., Decoder]

    def available(self) -> bool:
        """Whether its package is importable here (without importing it)."""
        if self.requires == "nvidia.dali":
            from resize_pipeline.decode.dali_graph import dali_installed

            return dali_installed()
        return True


def _pillow(**kw: Any) -> Decoder:
    return PillowDecoder(**kw)


def _dali(mode: str) -> Callable[..., Decoder]:
    def build(**kw: Any) -> Decoder:
        from resize_pipeline.decode.dali import DaliDecoder

        return DaliDecoder(device=mode, **kw)

    return build


DECODER_SPECS: dict[str, DecoderSpec] = {
    "pillow": DecoderSpec("pillow", "pillow", "cpu", needs_probe=False, fuses_resize=False, own_threads=False,
                          requires=None, output_options=(), kwargs=_PILLOW_KW, build=_pillow),
    "dali-cpu": DecoderSpec("dali-cpu", "dali", "cpu", needs_probe=True, fuses_resize=True, own_threads=True,
                            requires="nvidia.dali", output_options=(), kwargs=_DALI_KW, build=_dali("cpu")),
    "dali-mixed": DecoderSpec("dali-mixed", "dali", "gpu", needs_probe=True, fuses_resize=True, own_threads=True,
                              requires="nvidia.dali", output_options=("hw_decoder_load", "jpeg_fancy_upsampling"),
                              kwargs=_DALI_KW, build=_dali("mixed")),
}
#: what a worker builds
BUILT = tuple(DECODER_SPECS)


def decoder_spec(name: str) -> DecoderSpec:
    """The registry entry of a resolved decoder name (`BUILT`)."""
    try:
        return DECODER_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown decoder {name!r}; expected one of {', '.join(BUILT)}") from None


def resolve_decoder(family: str, device: str) -> str:
    """The buildable decoder of ``--decoder`` `family` (``pillow``, ``dali``) for a resolved device
    (``cpu``, ``cuda``, ``cuda:N``): its GPU variant on a GPU, else its CPU one."""
    want = "cpu" if device == "cpu" else "gpu"
    specs = [s for s in DECODER_SPECS.values() if s.family == family]
    if not specs:
        raise ValueError(f"unknown decoder family {family!r}")
    return next((s.name for s in specs if s.device == want), specs[0].name)


def get_decoder(name: str, **kwargs: Any) -> Decoder:
    """Build a resolved decoder (`BUILT`); each takes the keyword arguments its spec lists."""
    spec = decoder_spec(name)
    return spec.build(**{k: v for k, v in kwargs.items() if k in spec.kwargs})


__all__ = ["Decoder", "SizeRequest", "PillowDecoder", "get_decoder", "to_rgb_array", "DECODERS", "BUILT",
           "DecoderSpec", "DECODER_SPECS", "decoder_spec", "resolve_decoder"]
