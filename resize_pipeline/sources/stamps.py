"""Stamps: a 32-bit summary of an input's size and modification time (or ETag), taken from what the
listing already returns (``os.scandir`` entries, ``find``/``glob``/``ls`` details), never one stat
per file. ``_run.json`` records their digest, so a resume refuses inputs that changed since.

A manifest lists paths, not file details: its rows are stamped by listing the folders they point
into (`RowStamper`, block by block as the manifest streams), up to `MAX_FOLDERS` folders (local) or
`MAX_REMOTE_FOLDERS` (object stores, one LIST request each, run concurrently); rows beyond that are
not stamped (0), and the manifest file itself is always (a warning says so).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from collections import OrderedDict
from typing import Any

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


class RowStamper:
    """Stamps of a manifest's rows, a block at a time, by listing each folder they point into.

    Folder listings are kept for the `CACHE` most recently used folders (a manifest's rows usually
    come folder by folder); the first `MAX_FOLDERS` distinct folders (`MAX_REMOTE_FOLDERS` on object
    stores, listed `threads` at a time) are stamped. Rows on another filesystem than `fs` (an
    ``https://`` row in a local manifest), files not found, and every row after the first one in a
    folder beyond the limit get stamp 0 (a warning says so once).
    """

    CACHE = 256

    def __init__(self, fs: Any, threads: int = 16) -> None:
        from resize_pipeline.urls import is_local_fs

        self.fs, self.threads = fs, threads
        self.local = is_local_fs(fs)
        self.limit = MAX_FOLDERS if self.local else MAX_REMOTE_FOLDERS
        protos = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        self.prefixes = tuple(f"{p}://" for p in protos)
        self.seen: set[str] = set()
        self.cache: OrderedDict[str, dict[str, int]] = OrderedDict()
        #: rows past the folder limit came: stamping stopped there
        self.stopped = False

    def path_of(self, u: str) -> str:  # fsspec's local _strip_protocol costs ~5 us; our URLs are normalised
        return u[7:] if self.local and u.startswith("file:///") else self.fs._strip_protocol(u)

    def _listing(self, d: str) -> dict[str, int]:
        try:
            entries = self.fs.ls(d, detail=True)
        except (OSError, ValueError):
            return {}
        return {posixpath.basename(e["name"].rstrip("/")): stamp_info(e) for e in entries
                if e.get("type") != "directory"}

    def stamps(self, urls: list[str]) -> list[int]:
        """The stamp of each row of a block (0 where not known)."""
        out = [0] * len(urls)
        if self.stopped:
            return out
        places: list[tuple[int, str, str]] = []
        wanted: list[str] = []
        prefixes, seen, cache, path_of = self.prefixes, self.seen, self.cache, self.path_of
        local = self.local
        last = None
        for i, u in enumerate(urls):
            if not u.startswith(prefixes):
                continue
            d, _, base = (u[7:] if local and u.startswith("file:///") else path_of(u)).rpartition("/")
            d = d or "/"
            if d != last:
                if d not in seen:
                    if len(seen) >= self.limit:
                        log.warning("the manifest's rows point into more than %d folders: rows beyond them are not "
                                    "checked for changes on resume (the manifest file itself still is)", self.limit)
                        self.stopped = True
                        break
                    seen.add(d)
                if d not in cache and d not in wanted:
                    wanted.append(d)
                last = d
            places.append((i, d, base))
        self._fill(wanted)
        listing: dict[str, int] | None = None
        last = None
        for i, d, base in places:
            if d != last:
                listing, last = cache.get(d), d
            if listing:
                out[i] = listing.get(base, 0)
        return out

    def _fill(self, folders: list[str]) -> None:
        if not folders:
            return
        if self.local or len(folders) == 1:
            found = [self._listing(d) for d in folders]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(self.threads, len(folders))) as pool:
                found = list(pool.map(self._listing, folders))
        for d, listing in zip(folders, found, strict=True):
            self.cache[d] = listing
            self.cache.move_to_end(d)
        # keep at least this block's folders; beyond that, the most recent `CACHE`
        while len(self.cache) > max(self.CACHE, len(folders)):
            self.cache.popitem(last=False)
