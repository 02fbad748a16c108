"""Before training: every input read once and its header checked, so bad files are known up front.

Each row is read with `sources.reader.read_items` (in listing order, so a Parquet row group or a tar
is read once) and its header checked with `decode.probe.probe`, the pre-screen ``convert`` runs for
DALI: an empty file, bytes no decoder recognises and a declared size above the bomb guard are errors;
a file the probe suspects of being truncated (no JPEG EOI / PNG IEND) is decoded to be sure. What
fails is returned as error records (the same fields as ``_errors.jsonl``), before any training step,
so ``--max-bad-fraction`` refuses a bad dataset at once. Anything else that fails to decode later
is still skipped and counted when it is met.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from resize_pipeline.errors import error_record

log = logging.getLogger(__name__)

CHUNK = 64


def _check(items: Sequence[Any]) -> list[dict[str, str]]:
    from resize_pipeline.decode import PillowDecoder
    from resize_pipeline.decode.probe import probe
    from resize_pipeline.learned.data import NPY_MAGIC
    from resize_pipeline.sources.reader import read_items

    bad = []
    for it, blob in zip(items, read_items(items), strict=True):
        if isinstance(blob, Exception):
            bad.append(error_record(key=it.key, source=it.url, stage="read", exc=blob))
            continue
        if bytes(blob[:6]) == NPY_MAGIC:
            continue
        p = probe(blob)
        if p.route == "error" and p.error is not None:
            bad.append(error_record(key=it.key, source=it.url, stage="decode", exc=p.error))
        elif "truncated" in p.reason:
            try:
                PillowDecoder().decode_one(blob)
            except Exception as exc:  # noqa: BLE001 - the decode error is the record
                bad.append(error_record(key=it.key, source=it.url, stage="decode", exc=exc))
    return bad


def prescan(ds: Any, *, rank: int = 0, world: int = 1, threads: int = 8, progress: bool = True,
            desc: str = "pre-scan") -> list[dict[str, str]]:
    """Error records of the rows of `ds` (a `data.LabelledImages`) that cannot be decoded; with
    several processes each scans every world-th chunk (the caller gathers the lists)."""
    from tqdm.auto import tqdm

    starts = list(range(0, len(ds), CHUNK))[rank::world]
    bad: list[dict[str, str]] = []
    with ThreadPoolExecutor(max(1, threads)) as pool, \
            tqdm(total=len(ds), desc=desc, unit="img", disable=not progress or rank != 0) as bar:
        futures = [pool.submit(lambda a: _check(ds.items(a, min(len(ds), a + CHUNK))), a) for a in starts]
        for a, fut in zip(starts, futures, strict=True):
            bad.extend(fut.result())
            bar.update(min(len(ds), a + CHUNK) - a)
    log.info("%s: %d of %d inputs cannot be decoded", desc, len(bad), len(ds))
    return bad
