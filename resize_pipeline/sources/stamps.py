"""Stamps: a 64-bit summary of an input's size and modification time (or ETag), taken from what the
listing already returns (``os.scandir`` entries, ``find``/``glob``/``ls`` details), never one stat
per file. ``_run.json`` records their digest, so a resume refuses inputs that changed since.

A manifest lists paths, not file details: its rows are stamped by listing each folder they point
into once (`folder_stamps`), up to `MAX_FOLDERS` folders (local) or `MAX_REMOTE_FOLDERS` (object
stores, one LIST request each, run concurrently); beyond that only the manifest file itself is
stamped (a warning says so).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: detail fields that change when a file's content is replaced (local, s3, gcs, azure, memory)
CHANGE_FIELDS = ("size", "mtime", "ETag", "etag", "LastModified", "last_modified", "md5Hash", "generation",
                 "crc32c", "content_md5")
#: used only when none of the fields above is known (memory:// has ``created`` only)
FALLBACK_FIELDS = ("created",)
MAX_FOLDERS = 10_000
MAX_REMOTE_FOLDERS = 1_000


def _pack(values: tuple) -> int:
    digest = hashlib.blake2b(repr(values).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def stamp_stat(st: os.stat_result) -> int:
    """A local file's stamp: size and modification time in nanoseconds."""
    return _pack((st.st_size, st.st_mtime_ns))


def stamp_info(info: dict[str, Any]) -> int:
    """A stamp from an fsspec detail dict (``find(detail=True)``, ``ls(detail=True)``, ``info``)."""
    values = tuple((k, str(info[k])) for k in CHANGE_FIELDS if info.get(k) is not None)
    if len(values) <= 1:  # size alone (or nothing): add what else there is
        values += tuple((k, str(info[k])) for k in FALLBACK_FIELDS if info.get(k) is not None)
    return _pack(values)


def folder_stamps(fs: Any, n: int, urls: Callable[[int, int], list[str]], *, chunk: int = 1 << 16,
                  threads: int = 16) -> np.ndarray | None:
    """Stamps for `n` rows whose URLs are ``urls(a, b)``, by listing each folder they point into once.

    Rows on another filesystem than `fs` (an ``https://`` row in a local manifest) and files not found
    get stamp 0. Returns None when the rows point into too many folders to list.
    """
    from resize_pipeline.urls import is_local_fs

    limit = MAX_FOLDERS if is_local_fs(fs) else MAX_REMOTE_FOLDERS
    protos = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    prefixes = tuple(f"{p}://" for p in protos)
    folders: dict[str, int] = {}
    ids = np.full(n, -1, dtype=np.int32)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        for i, u in enumerate(urls(a, b), a):
            if not u.startswith(prefixes):
                continue
            d = posixpath.dirname(fs._strip_protocol(u))
            j = folders.get(d)
            if j is None:
                if len(folders) >= limit:
                    log.warning("the manifest's rows point into more than %d folders: only the manifest "
                                "file itself is checked for changes on resume", limit)
                    return None
                j = folders[d] = len(folders)
            ids[i] = j
    stamps = np.zeros(n, dtype=np.int64)
    if not folders:
        return stamps
    names = list(folders)

    def listing(d: str) -> dict[str, int]:
        try:
            entries = fs.ls(d, detail=True)
        except (OSError, ValueError):
            return {}
        return {posixpath.basename(e["name"].rstrip("/")): stamp_info(e) for e in entries
                if e.get("type") != "directory"}

    order = np.argsort(ids, kind="stable")
    starts = np.searchsorted(ids[order], np.arange(len(names) + 1))

    def fill(j: int, found: dict[str, int]) -> None:
        rows = order[starts[j]:starts[j + 1]]  # increasing: runs of consecutive rows share one call
        if not found or not len(rows):
            return
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run in np.split(rows, breaks):
            a, b = int(run[0]), int(run[-1]) + 1
            for i, u in enumerate(urls(a, b), a):
                stamps[i] = found.get(posixpath.basename(fs._strip_protocol(u)), 0)

    if is_local_fs(fs):
        for j, d in enumerate(names):
            fill(j, listing(d))
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            for j, found in enumerate(pool.map(listing, names)):
                fill(j, found)
    return stamps
