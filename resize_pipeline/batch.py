"""Column batches (``dict[str, np.ndarray]``), the unit every stage maps, and the per-sample failure
policy shared by the stages.

Columns: the `SourceItem` fields (``key url label label_name meta offset length row``), ``data``
(raw bytes, after read), ``probe`` (header pre-screen, with a DALI decoder), ``image`` (uint8 HWC,
after decode/resize), ``orig_width orig_height``, ``payload width height`` (after encode), and
``error error_stage error_type``. Rows never disappear: a row that fails gets its error columns set
and is passed through, so every input ends as written or as failed-with-reason.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from resize_pipeline.errors import DeviceFault, error_kind
from resize_pipeline.sources.base import SourceItem

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
#: the listing's columns, in `SourceItem` order
ITEM_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SourceItem))
_INT_COLUMNS = {f.name for f in dataclasses.fields(SourceItem) if f.type in ("int", int)}

T = TypeVar("T")
R = TypeVar("R")


def objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array holding `values` as they are (no numpy coercion of bytes or arrays)."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


def item_rows(items: Sequence[SourceItem]) -> list[list[Any]]:
    """Items as plain rows (compact to pickle or to JSON-encode)."""
    return [[getattr(it, c) for c in ITEM_COLUMNS] for it in items]


def items_to_batch(items: Sequence[SourceItem]) -> Batch:
    """Listing rows -> a batch with empty error columns."""
    return columns_to_batch({c: [getattr(it, c) for it in items] for c in ITEM_COLUMNS})


def columns_to_batch(columns: dict[str, list[Any]]) -> Batch:
    """The listing's columns (`ITEM_COLUMNS`, as lists) -> a batch with empty error columns."""
    n = len(columns["key"])
    batch: Batch = {}
    for c in ITEM_COLUMNS:
        values = columns[c]
        batch[c] = np.array(values, dtype=np.int64) if c in _INT_COLUMNS else objects(values)
    for c in ("error", "error_stage", "error_type"):
        batch[c] = objects([""] * n)
    return batch


def batch_to_items(batch: Batch, rows: Sequence[int] | None = None) -> list[SourceItem]:
    idx = range(len(batch["key"])) if rows is None else rows
    return [
        SourceItem(**{c: (int(batch[c][i]) if c in _INT_COLUMNS else str(batch[c][i])) for c in ITEM_COLUMNS})
        for i in idx
    ]


def ok_rows(batch: Batch) -> list[int]:
    return [i for i, e in enumerate(batch["error"]) if not e]


def fail(batch: Batch, i: int, stage: str, exc: BaseException) -> None:
    """Record that row `i` failed at `stage`; later stages skip it."""
    batch["error"][i] = str(exc) or repr(exc)
    batch["error_stage"][i] = stage
    batch["error_type"][i] = type(exc).__name__
    log.debug("%s failed at %s: %s", batch["url"][i], stage, exc)


def isolate(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T]) -> list[R | Exception]:
    """Run `fn` on `items` as one batch; if it raises, bisect so that only the items that fail on
    their own get an exception (in place). `fn` must return one result per item, in order.

    The one failure policy for batched work whose failure names no culprit: a DALI batch with a
    corrupt member, a resizer batch, a fused decode+resize group. It follows the typed error policy
    (`errors.error_kind`): only *sample* errors are narrowed down and returned in place. A device
    fault (a CUDA error, GPU out of memory: no sample is to blame, and a sticky CUDA error would fail
    every half again) is raised at once as `DeviceFault`, and a job error (`ResizePipelineError`) as
    it is; neither is ever bisected.
    """
    out: list[R | Exception] = [None] * len(items)  # type: ignore[list-item]
    stack = [(0, list(items))] if items else []
    while stack:
        start, chunk = stack.pop()
        try:
            results = list(fn(chunk))
            if len(results) != len(chunk):
                raise RuntimeError(f"batched call returned {len(results)} results for {len(chunk)} inputs")
        except Exception as exc:  # noqa: BLE001 - narrowed down below, then returned in place
            kind = error_kind(exc)
            if kind == "device":
                raise exc if isinstance(exc, DeviceFault) else DeviceFault(f"{type(exc).__name__}: {exc}") from exc
            if kind == "job":
                raise
            if len(chunk) == 1:
                out[start] = exc
                continue
            mid = len(chunk) // 2
            stack.append((start + mid, chunk[mid:]))
            stack.append((start, chunk[:mid]))
            continue
        out[start : start + len(chunk)] = results
    return out
