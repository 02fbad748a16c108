"""Shard sinks: a format writes samples into a file; the base rolls parts on a byte cap and hands each
finished part to `Dest.commit` (atomic, retried). See `sinks/dest.py` for how files become visible.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from resize_pipeline.layout import shard_file

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


@dataclass
class RollingShardWriter:
    """Writes the `base` shard of one format, rolling to a new part past `max_bytes`.

    Names: ``{base}.{ext}``; with a byte cap every part is ``{base}-{part:03d}.{ext}``. Each part is
    built through `Dest.part` and committed when complete, so nothing partial is ever visible under
    a final name (see `sinks/dest.py`).
    """

    dest: Any  # sinks.dest.Dest
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
        return shard_file(self.base, self.writer_cls.ext, self._part if self.max_bytes else None)

    def _open(self) -> None:
        self._out = self.dest.part(self._name())
        self._file = HashingFile(self._out.file)
        self._writer = self.writer_cls(self._file, **self.options)
        self._count = 0

    def _commit(self) -> None:
        self._writer.close()
        name = self._name()
        self._out.commit()
        self.files.append(ShardFile(name, self.format, self._count, self._file.nbytes, self._file.sha.hexdigest()))

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
        """Drop the part being built (nothing of it reached DEST)."""
        try:  # let the format writer finish into the file we throw away (else its __del__ writes later)
            self._writer.close()
        except Exception:  # noqa: BLE001 - the writer may be what failed
            pass
        self._out.abort()
