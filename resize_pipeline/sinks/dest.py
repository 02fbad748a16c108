"""The destination: one object that owns every write, rename and delete in DEST.

Modelled on Ray Data's file datasinks (`_FileDatasink` resolves the filesystem once; writes go
through `call_with_retry` on a `RetryingPyFileSystem`): the filesystem is resolved once, every
write is retried with backoff on transient errors, and a file becomes visible under its final name
only when it is complete:

- on a local disk (and memory://, which shows a file from the moment it is opened) it is written
  under a hidden temporary name (`temp_name`) and renamed;
- on object stores (s3, gcs) an object appears only when its upload is closed, so it is written
  under its final name, and a failed upload is discarded, never closed.

A shard file is built through `part(name)`: on a local disk straight into its temporary file in
DEST (no second copy), committed by a rename (retried); on object stores in a local spool (memory,
spilling to a temporary file when large), uploaded on commit, so a transient error while uploading
retries the upload from the spool, not the decode and resize that produced the bytes.
A full disk (ENOSPC, EDQUOT) is not transient: it raises `DestinationFull` (the job stops with
exit 2 and a one-line message; a rerun resumes).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar

from resize_pipeline.errors import OutputError
from resize_pipeline.urls import is_local_fs, url_to_fs, writes_visibly

log = logging.getLogger(__name__)

T = TypeVar("T")

#: errors that retrying cannot fix
PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
_FULL = (errno.ENOSPC, errno.EDQUOT)
#: how a temporary file is named: ``.{final name}.partial-{pid}-{token}``
TEMP_RE = re.compile(r"^\.(?P<final>.+)\.partial-\d+-[0-9a-f]{8}$")
#: shard parts above this size spill from memory to a local temporary file while they are built
SPOOL_MEMORY = 64 << 20


class DestinationFull(OutputError):
    """The destination (or the local spool) has no space left."""


def is_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


def temp_name(name: str) -> str:
    return f".{name}.partial-{os.getpid()}-{secrets.token_hex(4)}"


class Part:
    """A file of DEST being built: write to `file`, then `commit()` (atomic, retried) or `abort()`."""

    def __init__(self, dest: Dest, names: tuple[str, ...]) -> None:
        self.dest, self.names = dest, names
        self.final = dest.path(*names)
        if dest.visible:
            dest._parent(self.final)
            self.temp = posixpath.join(posixpath.dirname(self.final), temp_name(posixpath.basename(self.final)))
            self.file: Any = dest.call(f"creating {self.temp}", lambda: dest.fs.open(self.temp, "wb"))
        else:
            self.temp = None
            self.file = dest.spool()

    def commit(self) -> None:
        if self.temp is None:
            self.dest.commit(self.file, *self.names)
            self.file.close()
            return
        try:
            self.dest.call(f"closing {self.temp}", self.file.close)
            self.dest.call(f"renaming {self.temp}", lambda: self.dest.fs.mv(self.temp, self.final))
        except BaseException:
            self.dest._rm_quiet(self.temp)
            raise

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            if self.temp is not None:
                self.dest._rm_quiet(self.temp)


class Dest:
    """DEST as a root on a filesystem.

    Args:
        url: the destination URL or path (already absolute).
        storage_options: fsspec options (credentials, endpoints).
        retries: extra attempts for a write that fails with a transient error.
        backoff: first wait between attempts, in seconds (doubles each time).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *, retries: int = 3,
                 backoff: float = 0.5) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = url_to_fs(url, self.storage_options)
        self.root = self.root.rstrip("/") or "/"
        self.local = is_local_fs(self.fs)
        self.visible = writes_visibly(self.fs)
        self.retries, self.backoff = retries, backoff
        self._made: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # filesystems hold sockets and locks: rebuild on arrival
        return {"url": self.url, "storage_options": self.storage_options, "retries": self.retries,
                "backoff": self.backoff}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"], retries=state["retries"],  # type: ignore[misc]
                      backoff=state["backoff"])

    # -- paths ---------------------------------------------------------------------------------
    def path(self, *names: str) -> str:
        return posixpath.join(self.root, *names)

    def ls(self, *names: str) -> list[str]:
        """Base names in a folder of DEST (fresh listing, no cache); [] if it does not exist."""
        d = self.path(*names)
        self.fs.invalidate_cache(d)
        try:
            return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(d, detail=False))
        except FileNotFoundError:
            return []

    def exists(self, *names: str) -> bool:
        return bool(self.fs.exists(self.path(*names)))

    def isdir(self, *names: str) -> bool:
        return bool(self.fs.isdir(self.path(*names)))

    # -- retries -------------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying transient errors with exponential backoff."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except Exception as exc:
                if is_full(exc):
                    raise DestinationFull(f"no space left while writing {what} in {self.url}") from exc
                if isinstance(exc, PERMANENT) or attempt == self.retries:
                    raise
                wait = self.backoff * 2**attempt
                log.warning("%s failed (%s: %s); retrying in %.1f s", what, type(exc).__name__, exc, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    # -- writes --------------------------------------------------------------------------------
    def makedirs(self, *names: str) -> None:
        self.call(f"creating {self.path(*names)}", lambda: self.fs.makedirs(self.path(*names), exist_ok=True))

    def _parent(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if self.local and parent not in self._made:
            self.fs.makedirs(parent, exist_ok=True)
            self._made.add(parent)

    def part(self, *names: str) -> Part:
        """Start building the file `names` (see `Part`)."""
        return Part(self, names)

    @staticmethod
    def spool() -> IO[bytes]:
        """A local buffer for a file being built (memory, spilling to a temporary file when large)."""
        return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - owner closes it

    def commit(self, data: IO[bytes] | bytes, *names: str) -> None:
        """Make `data` (a spool positioned anywhere, or bytes) visible at `names`, atomically, retried."""
        final = self.path(*names)
        self._parent(final)

        def attempt() -> None:
            if isinstance(data, bytes | bytearray):
                src: IO[bytes] | None = None
            else:
                src = data
                src.seek(0)
            target = posixpath.join(posixpath.dirname(final), temp_name(posixpath.basename(final))) \
                if self.visible else final
            f = self.fs.open(target, "wb")
            try:
                if src is None:
                    f.write(data)
                else:
                    shutil.copyfileobj(src, f, 4 << 20)
            except BaseException:
                self._discard(f, target)
                raise
            f.close()
            if target != final:
                try:
                    self.fs.mv(target, final)
                except BaseException:
                    self._rm_quiet(target)
                    raise

        self.call(f"writing {final}", attempt)

    def _discard(self, f: Any, target: str) -> None:
        """Throw away a file being written: never publish a partial object."""
        if not self.visible:
            # object store: close() would publish the partial object; discard the upload (s3fs aborts
            # its multipart upload) and mark it closed so that neither we nor __del__ flush it
            discard = getattr(f, "discard", None)
            if callable(discard):
                discard()
            f.closed = True
            return
        try:
            f.close()
        except Exception:  # noqa: BLE001 - the original error matters
            pass
        self._rm_quiet(target)

    def _rm_quiet(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except Exception as exc:  # noqa: BLE001 - cleanup only; a rerun removes our temp files
            log.debug("could not remove %s: %s", path, exc)

    def write_text(self, text: str, *names: str) -> None:
        self.commit(text.encode("utf-8", "surrogateescape"), *names)

    def write_json(self, data: Any, *names: str) -> None:
        """Write JSON so that the file only ever holds a complete document."""
        self.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False), *names)

    def read_json(self, *names: str) -> Any:
        """The parsed document; FileNotFoundError if absent, ValueError if torn or not JSON."""
        with self.fs.open(self.path(*names), "r", encoding="utf-8") as fh:
            return json.load(fh)

    def remove(self, *names: str, recursive: bool = False) -> None:
        p = self.path(*names)
        self.call(f"removing {p}", lambda: self.fs.rm(p, recursive=recursive))
