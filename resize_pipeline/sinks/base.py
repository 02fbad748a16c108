"""Shard sinks: the base names files, commits them atomically and rolls parts on a byte cap.

A format implements `FormatWriter` (open on a file object, `write(sample)`, `close()`); the base
handles the filesystem. On a local filesystem (and memory://, which shows a file from the moment it is
opened) a shard is written under a hidden temporary name and renamed when complete; on object stores
(s3, gcs) an object only appears when its upload is closed, so it is written under its final name
directly, and a failed shard's upload is discarded, never closed. Either way a shard is visible under
its final name only when complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, BinaryIO

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Sample:
    """One converted image, as every format writes it."""

    key: str
    payload: bytes
    ext: str
    width: int
    height: int
    orig_width: int
    orig_height: int
    source: str
    label: int = -1
    label_name: str = ""
    meta: str = ""

    def info(self) -> dict[str, Any]:
        """The per-sample JSON metadata (WebDataset ``{key}.json``)."""
        import json

        d: dict[str, Any] = {
            "key": self.key,
            "source": self.source,
            "width": self.width,
            "height": self.height,
            "orig_width": self.orig_width,
            "orig_height": self.orig_height,
        }
        if self.label >= 0 or self.label_name:
            d["label"] = self.label
            d["label_name"] = self.label_name
        if self.meta:
            try:
                d["meta"] = json.loads(self.meta)
            except ValueError:
                d["meta"] = self.meta
        return d


class HashingFile:
    """Write-only file wrapper that counts bytes and computes sha256 on the way through."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.nbytes = 0
        self.closed = False

    def write(self, data) -> int:
        self.sha.update(data)
        self.nbytes += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.nbytes

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True  # the owner closes `raw`


class FormatWriter(ABC):
    """Writes samples of one format into an open binary file."""

    ext: str = ""

    def __init__(self, fileobj: HashingFile, **options: Any) -> None:
        self.fileobj = fileobj

    @abstractmethod
    def write(self, sample: Sample) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


@dataclass(slots=True)
class ShardFile:
    """A committed shard file, as listed in the stats and the manifest."""

    name: str
    format: str
    samples: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "samples": self.samples, "bytes": self.bytes, "sha256": self.sha256}


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _writes_visibly(fs) -> bool:
    """Filesystems where a file shows under its name while it is written: a local disk, and memory://
    (which stores a file when it is opened). Shards go there under a temp name and are renamed."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local", "memory")


@dataclass
class RollingShardWriter:
    """Writes `base` shards of one format into `root`, rolling to a new part past `max_bytes`.

    Names: ``{base}.{ext}``; with a byte cap every part is ``{base}-{part:03d}.{ext}``.
    """

    fs: Any
    root: str
    base: str
    format: str
    writer_cls: type[FormatWriter]
    max_bytes: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    files: list[ShardFile] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._part = 0
        self._open()

    def _name(self) -> str:
        ext = self.writer_cls.ext
        return f"{self.base}-{self._part:03d}.{ext}" if self.max_bytes else f"{self.base}.{ext}"

    def _open(self) -> None:
        self._final = posixpath.join(self.root, self._name())
        if _writes_visibly(self.fs):
            self._tmp = posixpath.join(self.root, f".{self._name()}.partial-{os.getpid()}")
        else:
            self._tmp = self._final
        self._raw = self.fs.open(self._tmp, "wb")
        self._file = HashingFile(self._raw)
        self._writer = self.writer_cls(self._file, **self.options)
        self._count = 0

    def _commit(self) -> None:
        self._writer.close()
        self._raw.close()
        if self._tmp != self._final:
            self.fs.mv(self._tmp, self._final)
        self.files.append(
            ShardFile(posixpath.basename(self._final), self.format, self._count, self._file.nbytes, self._file.sha.hexdigest())
        )

    def write(self, sample: Sample) -> None:
        if self.max_bytes and self._count and self._file.nbytes + len(sample.payload) > self.max_bytes:
            self._commit()
            self._part += 1
            self._open()
        self._writer.write(sample)
        self._count += 1

    def close(self) -> list[ShardFile]:
        self._commit()
        return self.files

    def abort(self) -> None:
        try:  # let the format writer finish into the file we throw away (else its __del__ writes later)
            self._writer.close()
        except Exception:  # noqa: BLE001 - the writer may be what failed
            pass
        if self._tmp == self._final:
            # object store: close() would commit the half-written shard under its final name; discard
            # the upload (s3fs aborts a multipart upload) and mark the file closed so that neither we nor
            # its __del__ flush it
            discard = getattr(self._raw, "discard", None)
            if callable(discard):
                discard()
            self._raw.closed = True
            return
        try:
            self._raw.close()
        finally:
            if self.fs.exists(self._tmp):
                self.fs.rm(self._tmp)
