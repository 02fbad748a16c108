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
exit 2 and a one-line message; a rerun resumes). Neither is a destination that cannot be written at
all (permission denied, a read-only filesystem, a directory where a file must go, DEST gone): that is
`DestinationUnwritable`, also a one-line job error.

An object-store DEST must exist as a bucket: `check_bucket` refuses a missing one (the tool never
creates buckets), and `makedirs` is a no-op there (objects need no folders).

Every object-store call has a deadline (`io_timeout`, ``--io-timeout``; `waits.within`): listing,
reading a document, each step of an upload (open, each chunk written, close: a step that uploads a
part gets `io_timeout` plus the part's size at `MIN_UPLOAD_RATE`). A call that gets no answer is
retried like any transient error; when the retries are spent the job stops (`DestinationStuck`,
exit 2, one line). Any other write that still fails after the retries raises `StoreError` with
what was being done (the driver turns it into a one-line job error; a worker fails that shard).
"""

from __future__ import annotations

import errno
import json
import logging
import posixpath
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar

from resize_pipeline import jsontext
from resize_pipeline.errors import OutputError
from resize_pipeline.layout import temp_name
from resize_pipeline.urls import is_local_fs, url_to_fs, writes_visibly
from resize_pipeline.waits import NoAnswer, within

log = logging.getLogger(__name__)

T = TypeVar("T")

#: errors that retrying cannot fix
PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
_FULL = (errno.ENOSPC, errno.EDQUOT)
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
#: shard parts above this size spill from memory to a local temporary file while they are built
SPOOL_MEMORY = 64 << 20
#: the slowest upload an object-store write step is given time for, beyond `Dest.io_timeout`
MIN_UPLOAD_RATE = 1 << 20  # bytes per second
#: bytes handed to an object-store file per write step
UPLOAD_CHUNK = 4 << 20


class DestinationFull(OutputError):
    """The destination (or the local spool) has no space left."""


class DestinationUnwritable(OutputError):
    """The destination cannot be written (permissions, read-only, a directory in the way, gone)."""


class DestinationStuck(OutputError):
    """The destination (an object store) gives no answer, even after retries."""


class StoreError(OSError):
    """A DEST operation that still failed after its retries; says what was being done."""


def is_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [""])[0]
    return text or type(exc).__name__


def job_error(what: str, exc: BaseException, url: str) -> OutputError | None:
    """The job-level error `exc` amounts to while `what` (``writing /d/x.tar``) in DEST, or None
    (transient, or a failure of this one write)."""
    if is_full(exc):
        return DestinationFull(f"no space left on {url} ({what}: {_reason(exc)}); free some space and rerun the "
                               "same command to resume")
    if isinstance(exc, NoAnswer):
        return None  # retried; `Dest.call` ends the job when the retries are spent
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in _UNWRITABLE):
        return DestinationUnwritable(f"cannot write to {url} ({what}: {_reason(exc)}): it is read-only or not "
                                     "writable by this user")
    if isinstance(exc, IsADirectoryError | NotADirectoryError | FileNotFoundError):
        return DestinationUnwritable(f"cannot write to {url} ({what}: {_reason(exc)})")
    return None


class Part:
    """A file of DEST being built: write to `file`, then `commit()` (atomic, retried) or `abort()`."""

    def __init__(self, dest: Dest, names: tuple[str, ...]) -> None:
        self.dest, self.names = dest, names
        self.final = dest.path(*names)
        self.temp: str | None
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
        def rename() -> None:
            if self.dest.fs.isdir(self.final):  # a rename would move the file *into* that folder
                raise IsADirectoryError(errno.EISDIR, f"{self.final} is a directory")
            self.dest.fs.mv(self.temp, self.final)

        try:
            self.dest.call(f"closing {self.temp}", self.file.close)
            self.dest.call(f"renaming {self.temp}", rename)
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
                 backoff: float = 0.5, io_timeout: float | None = 30.0) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = url_to_fs(url, self.storage_options)
        self.root = self.root.rstrip("/") or "/"
        self.local = is_local_fs(self.fs)
        self.visible = writes_visibly(self.fs)
        self.retries, self.backoff = retries, backoff
        self.io_timeout = io_timeout
        self._made: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # filesystems hold sockets and locks: rebuild on arrival
        return {"url": self.url, "storage_options": self.storage_options, "retries": self.retries,
                "backoff": self.backoff, "io_timeout": self.io_timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"], retries=state["retries"],  # type: ignore[misc]
                      backoff=state["backoff"], io_timeout=state.get("io_timeout", 30.0))

    def bounded(self, what: str, fn: Callable[[], T], nbytes: int = 0) -> T:
        """``fn()`` with the object-store deadline (`io_timeout`, plus `nbytes` at `MIN_UPLOAD_RATE`);
        anything else runs as it is (local disks: the kernel decides)."""
        if not self.object_store:
            return fn()
        seconds = None if self.io_timeout is None else self.io_timeout + nbytes / MIN_UPLOAD_RATE
        return within(seconds, fn, self.shown(what))

    def shown(self, text: str) -> str:
        """`text` with DEST's paths as URLs (``b/out/x.tar`` -> ``s3://b/out/x.tar``)."""
        return text.replace(self.root, self.url, 1) if self.object_store and self.root != self.url else text

    # -- paths ---------------------------------------------------------------------------------
    def path(self, *names: str) -> str:
        return posixpath.join(self.root, *names)

    def _listing(self, d: str, detail: bool) -> list[Any]:
        self.fs.invalidate_cache(d)

        def ls() -> list[Any]:
            try:
                return self.fs.ls(d, detail=detail)
            except FileNotFoundError:
                return []

        return self.call(f"listing {d}", ls)

    def ls(self, *names: str) -> list[str]:
        """Base names in a folder of DEST (fresh listing, no cache); [] if it does not exist."""
        return sorted(posixpath.basename(p.rstrip("/")) for p in self._listing(self.path(*names), False))

    def entries(self, *names: str) -> dict[str, str]:
        """Base name -> ``file`` or ``directory`` for a folder of DEST (fresh); {} if it does not exist."""
        listed = self._listing(self.path(*names), True)
        return {posixpath.basename(e["name"].rstrip("/")): "directory" if e.get("type") == "directory" else "file"
                for e in listed}

    def exists(self, *names: str) -> bool:
        p = self.path(*names)
        return bool(self.call(f"looking for {p}", lambda: self.fs.exists(p)))

    def isdir(self, *names: str) -> bool:
        p = self.path(*names)
        return bool(self.call(f"looking at {p}", lambda: self.fs.isdir(p)))

    @property
    def object_store(self) -> bool:
        """Objects appear whole when their upload closes (s3, gcs...), and need no folders."""
        return not self.visible

    def check_bucket(self) -> None:
        """Refuse an object-store DEST whose bucket does not exist: it is never created without asking."""
        if not self.object_store:
            return
        bucket = self.root.strip("/").split("/", 1)[0]
        try:
            found = self.bounded(f"checking the bucket of {self.url}", lambda: self.fs.exists(bucket))
        except Exception as exc:  # noqa: BLE001 - credentials, endpoint, no answer: said in one line
            raise OutputError(f"cannot reach {self.url}: {_reason(exc)}") from None
        if not found:
            raise OutputError(f"the bucket {bucket!r} of {self.url} does not exist (or is not visible with these "
                              "credentials); create it first: resize-pipeline never creates buckets")

    # -- retries -------------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[[], T], *, bounded: bool = True) -> T:
        """Run `fn` (with the object-store deadline unless `bounded` is False: the caller bounds its
        steps), retrying transient errors with exponential backoff. A full or unwritable DEST raises
        the job-level error (`job_error`); one that never answers, `DestinationStuck`; any other
        transient error that outlasts the retries, `StoreError` naming `what`."""
        for attempt in range(self.retries + 1):
            try:
                return self.bounded(what, fn) if bounded else fn()
            except OutputError:
                raise
            except Exception as exc:
                fatal = job_error(what, exc, self.url)
                if fatal is not None:
                    raise fatal from exc
                if isinstance(exc, PERMANENT):
                    raise
                if attempt == self.retries:
                    tries = f"{attempt + 1} attempts"
                    if isinstance(exc, NoAnswer):
                        raise DestinationStuck(f"{self.url} gives no answer ({self.shown(what)}: {exc.args[0].split(' (')[0]}"
                                               f", {tries}): check the endpoint and the network, then rerun the "
                                               "same command to resume") from exc
                    raise StoreError(f"{self.shown(what)} failed ({tries}): {type(exc).__name__}: "
                                     f"{_reason(exc)}") from exc
                wait = self.backoff * 2**attempt
                # said with -v: a retry that works needs no word, one that does not ends in one line
                log.info("%s failed (%s: %s); retrying in %.1f s", self.shown(what), type(exc).__name__, exc, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    # -- writes --------------------------------------------------------------------------------
    def makedirs(self, *names: str) -> None:
        if self.object_store:
            return  # no folders on object stores (and s3fs would create a missing bucket)
        try:
            self.call(f"creating {self.path(*names)}", lambda: self.fs.makedirs(self.path(*names), exist_ok=True))
        except FileExistsError:  # a file where a folder must be
            raise DestinationUnwritable(f"cannot write to {self.url}: {self.path(*names)} is a file, not a "
                                        "folder") from None

    def _parent(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if self.local and parent not in self._made:
            self.call(f"creating {parent}", lambda: self.fs.makedirs(parent, exist_ok=True))
            self._made.add(parent)

    def part(self, *names: str) -> Part:
        """Start building the file `names` (see `Part`)."""
        return Part(self, names)

    def full(self, what: str, exc: BaseException) -> DestinationFull:
        """The job error for a full disk while `what`: shard parts are built in DEST itself on a local
        disk (and memory://), in the local spool (the temporary folder) for object stores."""
        if self.visible:
            return DestinationFull(f"no space left on {self.url} ({what}: {_reason(exc)}); free some space and "
                                   "rerun the same command to resume")
        return DestinationFull(f"no space left for the local spool in {tempfile.gettempdir()} ({what} for "
                               f"{self.url}: {_reason(exc)}); free some space there (or set TMPDIR) and rerun "
                               "the same command to resume")

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
            f = self.bounded(f"opening {final}", lambda: self.fs.open(target, "wb"))
            # an object-store file buffers up to its block size, then uploads what it holds: a step
            # that uploads is given time for those bytes
            block = int(getattr(f, "blocksize", 0) or 0)
            buffered = 0

            def write(piece: Any) -> None:
                nonlocal buffered
                buffered += len(piece)
                uploads = buffered if not block or buffered >= block else 0
                self.bounded(f"writing {final}", lambda: f.write(piece), uploads)
                if uploads:
                    buffered = 0

            try:
                if isinstance(data, bytes | bytearray):
                    view = memoryview(data)
                    for i in range(0, len(view), UPLOAD_CHUNK):
                        write(view[i:i + UPLOAD_CHUNK])
                elif src is not None:
                    while piece := src.read(UPLOAD_CHUNK):
                        write(piece)
                self.bounded(f"closing {final}", f.close, buffered)
            except BaseException:
                self._discard(f, target)
                raise
            if target != final:
                try:
                    if self.fs.isdir(final):  # a rename would move the file *into* that folder
                        raise IsADirectoryError(errno.EISDIR, f"{final} is a directory")
                    self.fs.mv(target, final)
                except BaseException:
                    self._rm_quiet(target)
                    raise

        self.call(f"writing {final}", attempt, bounded=False)

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
        """Write JSON so that the file only ever holds a complete document (valid UTF-8: names that
        are not are escaped, `jsontext`)."""
        self.write_text(jsontext.dumps(data, indent=1, sort_keys=True), *names)

    def read_json(self, *names: str) -> Any:
        """The parsed document; FileNotFoundError if absent, ValueError if torn or not JSON."""
        p = self.path(*names)

        def read() -> bytes:
            with self.fs.open(p, "rb") as fh:
                return fh.read()

        return json.loads(self.bounded(f"reading {p}", read).decode("utf-8"))

    def remove(self, *names: str, recursive: bool = False) -> None:
        """Remove a file (or, with `recursive`, a folder) of DEST; one already gone is fine."""
        p = self.path(*names)

        def rm() -> None:
            try:
                self.fs.rm(p, recursive=recursive)
            except FileNotFoundError:
                pass

        self.call(f"removing {p}", rm)
