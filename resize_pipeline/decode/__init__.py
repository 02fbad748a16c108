"""Decoders: Pillow everywhere, NVIDIA DALI (GPU nvJPEG or CPU-only) where installed."""

from __future__ import annotations

from resize_pipeline.decode.base import Decoder, SizeRequest, to_rgb_array
from resize_pipeline.decode.pillow import PillowDecoder

#: what a user asks for (``--decoder``); the driver resolves it to one of `BUILT`
DECODERS = ("auto", "pillow", "dali")
#: what a worker builds
BUILT = ("pillow", "dali-cpu", "dali-mixed")


def get_decoder(name: str, **kwargs) -> Decoder:
    """Build a resolved decoder: ``pillow``, ``dali-cpu`` or ``dali-mixed``.

    Keyword arguments are `DaliDecoder`'s; Pillow takes only background, max_pixels and draft.
    """
    if name == "pillow":
        return PillowDecoder(**{k: v for k, v in kwargs.items() if k in ("background", "max_pixels", "draft")})
    if name in ("dali-cpu", "dali-mixed"):
        from resize_pipeline.decode.dali import DaliDecoder

        return DaliDecoder(device=name.split("-", 1)[1], **kwargs)
    raise ValueError(f"unknown decoder {name!r}; expected one of {', '.join(BUILT)}")


__all__ = ["Decoder", "SizeRequest", "PillowDecoder", "get_decoder", "to_rgb_array", "DECODERS", "BUILT"]
