"""resize_pipeline: convert image datasets into training-ready shards with a learned resizer."""

from __future__ import annotations

from resize_pipeline.version import __version__

__all__ = ["__version__", "ConvertConfig", "convert"]


def __getattr__(name: str):  # lazy: keep `import resize_pipeline` cheap
    if name == "ConvertConfig":
        from resize_pipeline.config import ConvertConfig

        return ConvertConfig
    if name == "convert":
        from resize_pipeline.conversion import convert

        return convert
    raise AttributeError(name)
