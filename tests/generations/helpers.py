"""Rows for the generations tests: listed rows and held records as Arrow batches."""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

from resize_pipeline.generations.records import held_table, plan_batch


def listed(keys: list[str], stamps: list[int] | None = None, *, urls: list[str] | None = None,
           labels: list[int] | None = None) -> pa.RecordBatch:
    n = len(keys)
    return plan_batch({
        "key": keys, "url": urls or [f"file:///src/{k}.jpg" for k in keys], "label": labels or [-1] * n,
        "label_name": [""] * n, "meta": [""] * n, "offset": [-1] * n, "length": [-1] * n, "row": [-1] * n,
        "stamp": stamps if stamps is not None else [hash(k) & 0xFFFF | 1 for k in keys],
    })


def held(keys: list[str], stamps: list[int] | None = None, **cols: Any) -> pa.Table:
    """Written records of generation 1 in shard ``shard-00000`` (override any column)."""
    n = len(keys)
    base: dict[str, Any] = {
        "key": keys, "url": [f"file:///src/{k}.jpg" for k in keys],
        "stamp": stamps if stamps is not None else [hash(k) & 0xFFFF | 1 for k in keys],
        "status": ["written"] * n, "generation": [1] * n, "shard": ["shard-00000"] * n, "sample": list(range(n)),
    }
    base.update(cols)
    return held_table(base)


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b.column(b.schema.get_field_index("key")).to_pylist()]


def column(batches, name: str) -> list[Any]:
    return [v for b in batches for v in b.column(b.schema.get_field_index(name)).to_pylist()]
