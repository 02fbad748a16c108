"""Stamps: a 32-bit summary of an input's size and modification time (or ETag), taken from what the
listing already returns (``os.scandir`` entries, ``find``/``glob``/``ls`` details), never one stat
per file. ``_run.json`` records their digest, so a resume refuses inputs that changed since.

A manifest lists paths, not file details: its rows are stamped by listing each folder they point
into once (`FolderStamps`), up to `MAX_FOLDERS` folders (local) or `MAX_REMOTE_FOLDERS` (object
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
    """32 bits are plenty to notice a change (and halve the memory of a 10M-row listing)."""
    digest = hashlib.blake2b(repr(values).encode("utf-8", "surrogatepass"), digest_size=4).digest()
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


class FolderStamps:
    """Stamps of a manifest's rows, by listing each folder they point into once.

    Fed the rows' URLs chunk by chunk while the table is walked anyway (`observe`, from
    `ItemTable.finish`), then `result()` lists the folders and returns one stamp per row (plus
    `extra`, e.g. the manifest's own). Rows on another filesystem than `fs` (an ``https://`` row in a
    local manifest) and files not found get stamp 0; `result()` is None when the rows point into
    more folders than it lists (then only `extra` is stamped).
    """

    def __init__(self, fs: Any, n: int, urls: Callable[[int, int], list[str]], extra: tuple[int, ...] = (),
                 threads: int = 16) -> None:
        from resize_pipeline.urls import is_local_fs

        self.fs, self.n, self.urls, self.extra, self.threads = fs, n, urls, extra, threads
        self.local = is_local_fs(fs)
        self.limit = MAX_FOLDERS if self.local else MAX_REMOTE_FOLDERS
        protos = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        self.prefixes = tuple(f"{p}://" for p in protos)
        self.folders: dict[str, int] = {}
        self.ids: np.ndarray | None = np.full(n, -1, dtype=np.int32)

    def path_of(self, u: str) -> str:  # fsspec's local _strip_protocol costs ~5 us; our URLs are normalised
        return u[7:] if self.local and u.startswith("file:///") else self.fs._strip_protocol(u)

    def observe(self, a: int, b: int, urls: list[str]) -> None:
        if self.ids is None:
            return
        folders, ids, prefixes, dirname = self.folders, self.ids, self.prefixes, posixpath.dirname
        for i, u in enumerate(urls, a):
            if not u.startswith(prefixes):
                continue
            d = dirname(self.path_of(u))
            j = folders.get(d)
            if j is None:
                if len(folders) >= self.limit:
                    log.warning("the manifest's rows point into more than %d folders: only the manifest "
                                "file itself is checked for changes on resume", self.limit)
                    self.ids = None
                    return
                j = folders[d] = len(folders)
            ids[i] = j

    def _listing(self, d: str) -> dict[str, int]:
        try:
            entries = self.fs.ls(d, detail=True)
        except (OSError, ValueError):
            return {}
        return {posixpath.basename(e["name"].rstrip("/")): stamp_info(e) for e in entries
                if e.get("type") != "directory"}

    #: whether `result` starts with one stamp per row (False when the rows' folders were not listed)
    per_row = True

    def result(self) -> np.ndarray:
        extra = np.asarray(self.extra, dtype=np.int32)
        if self.ids is None:
            self.per_row = False
            return extra
        ids, names = self.ids, list(self.folders)
        self.ids = None
        stamps = np.zeros(self.n, dtype=np.int32)
        if names:
            found_any = False
            order: np.ndarray | None = None
            starts: np.ndarray | None = None

            def fill(j: int, found: dict[str, int]) -> None:
                nonlocal order, starts, found_any
                if not found:
                    return
                if order is None or starts is None:  # only when some folder holds files: group rows by folder
                    order = np.argsort(ids, kind="stable")
                    starts = np.searchsorted(ids[order], np.arange(len(names) + 1))
                rows = order[starts[j]:starts[j + 1]]  # increasing: runs of consecutive rows, one call each
                for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):
                    if not len(run):
                        continue
                    a, b = int(run[0]), int(run[-1]) + 1
                    for i, u in enumerate(self.urls(a, b), a):
                        stamps[i] = found.get(posixpath.basename(self.path_of(u)), 0)

            if self.local:
                for j, d in enumerate(names):
                    fill(j, self._listing(d))
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(self.threads) as pool:
                    for j, found in enumerate(pool.map(self._listing, names)):
                        fill(j, found)
        return np.concatenate([stamps, extra])
