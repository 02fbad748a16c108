"""Decoders: Pillow everywhere, NVIDIA DALI (GPU nvJPEG or CPU-only) where installed."""

from __future__ import annotations

from resize_pipeline.decode.base import Decoder, SizeRequest, to_rgb_array
from resize_pipeline.decode.pillow import PillowDecoder

DECODERS = ("auto", "pillow", "dali")


def get_decoder(name: str = "pillow", **kwargs) -> Decoder:
    """Build the decoder named `name` (``pillow``; ``dali`` and ``auto`` arrive with DALI support)."""
    if name == "pillow":
        return PillowDecoder(**kwargs)
    if name in ("auto", "dali"):
        try:
            from resize_pipeline.decode.dali import make_dali_decoder
        except ImportError:
            if name == "dali":
                raise
            return PillowDecoder(**kwargs)
        return make_dali_decoder(name, **kwargs)
    raise ValueError(f"unknown decoder {name!r}; expected one of {', '.join(DECODERS)}")


__all__ = ["Decoder", "SizeRequest", "PillowDecoder", "get_decoder", "to_rgb_array", "DECODERS"]
