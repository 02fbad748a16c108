"""Output formats, registered once.

A format is one `Format` entry: its ``--format`` name, the extension of its shard files, the
`sinks.FormatWriter` that writes a shard, and how its samples are read back (by the PyTorch reader
and by ``inspect``). Everything else (the config's choices, ``--format both``, the shard names that
DEST's layout owns, the readers' format argument) derives from this table, so adding a format is one
entry here plus its writer and readers.

Implementations are named as ``"module:attribute"`` and imported when first used: this module
imports nothing heavy, and the config, the layout and the readers can all depend on it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

#: ``--format`` value meaning every registered format
ALL = "both"


@dataclass(frozen=True, slots=True)
class Format:
    """One shard format.

    Attributes:
        name: the ``--format`` value and the ``format`` field of manifest entries.
        ext: extension of its shard files (no dot).
        writer: ``module:Class`` of its `sinks.FormatWriter`.
        samples: ``module:function`` ``(fs, path, a, b) -> iterator of raw samples`` (webdataset
            style dicts: ``__key__``, ``__url__`` and one entry per member), samples ``[a, b)`` of a file.
        infos: ``module:function`` ``(output, shard_ref) -> iterator of inspection.SampleInfo``.
    """

    name: str
    ext: str
    writer: str
    samples: str
    infos: str

    def load(self, what: str) -> Any:
        """The implementation named by field `what` (``"writer"``, ``"samples"``, ``"infos"``)."""
        module, _, attr = getattr(self, what).partition(":")
        return getattr(importlib.import_module(module), attr)


REGISTRY: dict[str, Format] = {
    f.name: f
    for f in (
        Format("webdataset", "tar", "resize_pipeline.sinks.webdataset:WebDatasetWriter",
               "resize_pipeline.readers.pytorch:read_tar_samples", "resize_pipeline.inspection:tar_infos"),
        Format("parquet", "parquet", "resize_pipeline.sinks.parquet:ParquetWriter",
               "resize_pipeline.readers.pytorch:read_parquet_samples", "resize_pipeline.inspection:parquet_infos"),
    )
}
#: the registered format names, in registration order (the order ``--format both`` writes them in)
NAMES: tuple[str, ...] = tuple(REGISTRY)
#: what ``--format`` accepts
CHOICES: tuple[str, ...] = (*NAMES, ALL)


def get(name: str) -> Format:
    """The format called `name`; `ValueError` naming the registered ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"format must be one of {', '.join(NAMES)}, not {name!r}") from None


def expand(choice: str) -> tuple[str, ...]:
    """A ``--format`` value -> the formats it writes (``both``: every registered one)."""
    return NAMES if choice == ALL else (get(choice).name,)


def extensions(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The shard file extensions of formats `names`, in the same order."""
    return tuple(get(n).ext for n in names)
