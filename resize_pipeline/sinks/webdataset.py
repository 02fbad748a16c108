"""WebDataset tar shards: ``{key}.{ext}``, ``{key}.json`` and, when labelled, ``{key}.cls``.

Members are laid out exactly as webdataset's `TarWriter` does (one member per component, sorted by
extension), with fixed mtime/owner/mode so reruns produce byte-identical tars. The bytes are those of
the standard library's ``tarfile`` (PAX format, streamed), which is what wrote them up to 0.1.0: no
`webdataset` import (it imports torch, ~2 s and ~250 MB per worker process just to write a tar).

Writing is on the hot path of a GPU worker (one process writes ~20k members/s), and ``tarfile``
spends ~15 us of Python per member building its header under the GIL. `TarStream` therefore builds
the usual header (ASCII name of at most 100 bytes) from a template that ``tarfile`` itself made (so it
follows the running Python's layout) and fills in name, size and checksum; anything else (long or
non-ASCII names: PAX extended headers) is built by ``tarfile``. Reading our shards back with
`webdataset`, and byte identity with ``tarfile``, are tested.
"""

from __future__ import annotations

import tarfile

from resize_pipeline import jsontext
from resize_pipeline.sinks.base import FormatWriter, HashingFile, Sample

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
MODE, MTIME, OWNER = 0o444, 0, "resize"


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = MTIME
    info.mode = MODE
    info.uname = info.gname = OWNER
    return info


def _slow_header(name: str, size: int) -> bytes:
    """What ``TarFile.addfile`` writes before the data (PAX format, the file system encoding)."""
    return _tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


class _Template:
    """A ustar header made by ``tarfile`` with name and size blanked: fields 0-100 (name), 124-136
    (size) and 148-156 (checksum) are filled per member."""

    def __init__(self) -> None:
        ref = _slow_header("x", 0)
        if len(ref) != BLOCK:  # this Python writes something else: always use tarfile
            self.ok = False
            return
        blank = bytearray(ref)
        blank[0:100] = bytes(100)
        blank[124:136] = bytes(12)
        blank[148:156] = b" " * 8
        self.head, self.mid, self.tail = bytes(blank[100:124]), bytes(blank[136:148]), bytes(blank[156:])
        self.base = sum(blank)
        self.ok = self.header("x", 0) == ref and self.header("a" * 100, 12345) == _slow_header("a" * 100, 12345)

    def header(self, name: str, size: int) -> bytes:
        raw = name.encode("ascii")
        size_field = b"%011o\0" % size
        checksum = self.base + sum(raw) + sum(size_field)
        return b"".join((raw.ljust(100, b"\0"), self.head, size_field, self.mid, b"%06o\0 " % checksum, self.tail))


_TEMPLATE = _Template()


def tar_header(name: str, size: int) -> bytes:
    """The header ``tarfile`` (PAX format) writes for a regular file `name` of `size` bytes, with our
    fixed mode, mtime and owner."""
    if _TEMPLATE.ok and len(name) <= 100 and name.isascii() and size < 8**11:
        return _TEMPLATE.header(name, size)
    return _slow_header(name, size)


class TarStream:
    """A write-only tar stream, byte-identical to ``tarfile.open(fileobj=f, mode="w|",
    format=PAX_FORMAT)`` + ``addfile`` + ``close``, including when bytes reach `fileobj`: like
    tarfile's stream it hands them on in whole 10 KiB records and keeps the last (partial or full)
    record back, so a byte cap that reads the file's size rolls parts at the same samples as 0.1.0.
    `add` takes a sample's members at once."""

    def __init__(self, fileobj) -> None:
        self.fileobj = fileobj
        self.offset = 0
        self._buf = bytearray()

    def _write(self, data: bytes) -> None:
        self._buf += data
        self.offset += len(data)
        if len(self._buf) > RECORD:
            n = RECORD * ((len(self._buf) - 1) // RECORD)
            with memoryview(self._buf) as view:
                self.fileobj.write(view[:n])
            del self._buf[:n]

    def add(self, members: list[tuple[str, bytes]]) -> None:
        parts: list[bytes] = []
        for name, data in members:
            parts.append(tar_header(name, len(data)))
            parts.append(data)
            pad = -len(data) % BLOCK
            if pad:
                parts.append(bytes(pad))
        self._write(b"".join(parts))

    def close(self) -> None:
        end = 2 * BLOCK
        end += -(self.offset + end) % RECORD  # zero blocks up to a full record, as tar -b20 (tarfile)
        self._write(bytes(end))
        self.fileobj.write(bytes(self._buf))
        self._buf = bytearray()


class WebDatasetWriter(FormatWriter):
    ext = "tar"

    def __init__(self, fileobj: HashingFile, **options) -> None:
        super().__init__(fileobj)
        self.tar = TarStream(fileobj)

    def write(self, sample: Sample) -> None:
        parts = {
            sample.ext: sample.payload,
            "json": jsontext.dumps(sample.info(), sort_keys=True).encode("utf-8"),
        }
        if sample.label >= 0:
            parts["cls"] = str(sample.label).encode()
        self.tar.add([(f"{sample.key}.{ext}", parts[ext]) for ext in sorted(parts)])

    def close(self) -> None:
        self.tar.close()
