"""Feed trainers from our shards: PyTorch, Hugging Face `datasets`, Ray Data, NVIDIA DALI, pyarrow.

Every reader takes DEST (a folder or fsspec URL holding ``_manifest.json``) and reads the shard list
of the manifest, so ``--format both`` output, one shard or many, and half-written runs are handled:

- `torch_dataset` (`pytorch`): every sample exactly once per epoch across ranks and DataLoader
  workers, also with fewer shards than workers; shuffle buffer and seed; ``set_epoch``.
- `arrow_table`, `hf_dataset`, `ray_dataset`, `image_bytes` (`tables`): Parquet through pyarrow,
  ``datasets.load_dataset`` (PIL images), Ray Data (``read_parquet`` / ``read_webdataset``).
- `dali_pipeline`, `write_dali_indexes` (`dali`): DALI's webdataset reader with index files.
- `open_output`, `shard_urls`, `superseded` (`output`): the manifest, its shard files and the samples
  a generation superseded.

Every reader takes ``generation=`` (default: the latest complete generation of a DEST grown by
``convert --update``) and skips the samples superseded up to it.

Heavy libraries (torch, datasets, ray, DALI) are imported only when the reader that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "open_output": "output", "shard_urls": "output", "Output": "output", "ShardRef": "output",
    "superseded": "output",
    "torch_dataset": "pytorch", "ShardDataset": "pytorch", "partition": "pytorch",
    "arrow_table": "tables", "hf_dataset": "tables", "ray_dataset": "tables", "image_bytes": "tables",
    "value_bytes": "tables",
    "dali_pipeline": "dali", "write_dali_indexes": "dali", "labels_from_cls": "dali", "tar_index": "dali",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
