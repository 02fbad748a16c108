"""`ErrorLog`: error records in order, kept in memory up to a point and then in a local spool file.

The driver gathers failed inputs from the listing (stage ``list``) and from every shard; a job of
100M inputs may fail millions of them, so the records are never held as Python objects: each is
written once as its ``_errors.jsonl`` line (`jsontext`, sorted keys) and read back only to write
``_errors.jsonl`` (in shard order: `ShardErrors`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

from resize_pipeline import jsontext

#: bytes of records kept in memory before the spool moves to a temporary file
MEMORY = 4 << 20


def line(record: dict[str, Any]) -> bytes:
    """A record as its ``_errors.jsonl`` line."""
    return (jsontext.dumps(record, sort_keys=True) + "\n").encode("utf-8")


class ErrorLog:
    """Error records appended in order (`add`), read back in that order (iteration, `copy_to`)."""

    def __init__(self) -> None:
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=MEMORY)  # noqa: SIM115 - closed in close()
        self._count = 0
        self._first: dict[str, Any] | None = None
        #: records per stage
        self.by_stage: dict[str, int] = {}

    def add(self, record: dict[str, Any]) -> None:
        if self._first is None:
            self._first = record
        self._spool.seek(0, 2)
        self._spool.write(line(record))
        self._count += 1
        stage = str(record.get("stage"))
        self.by_stage[stage] = self.by_stage.get(stage, 0) + 1

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.add(r)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    @property
    def first(self) -> dict[str, Any] | None:
        return self._first

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._spool.seek(0)
        for raw in self._spool:
            yield json.loads(raw)
        self._spool.seek(0, 2)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i == 0 and self._first is not None:
            return self._first
        for j, r in enumerate(self):
            if j == (i if i >= 0 else self._count + i):
                return r
        raise IndexError(i)

    def copy_to(self, out: IO[bytes]) -> None:
        """Write every record's line to `out`."""
        self._spool.seek(0)
        while chunk := self._spool.read(1 << 20):
            out.write(chunk)
        self._spool.seek(0, 2)

    def close(self) -> None:
        self._spool.close()


class ShardErrors:
    """The failed inputs of each shard, spooled as results arrive (in any order), written out in
    shard order: an offset per shard is all that stays in memory."""

    def __init__(self) -> None:
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=MEMORY)  # noqa: SIM115 - closed in close()
        self._where: dict[int, tuple[int, int]] = {}
        self._size = 0
        #: records per stage
        self.by_stage: dict[str, int] = {}

    def put(self, index: int, records: Iterable[dict[str, Any]]) -> None:
        """Shard `index`'s failed inputs (once per shard: a second report of it is ignored)."""
        if index in self._where:
            return
        records = list(records)
        data = b"".join(line(r) for r in records)
        if not data:
            return
        for r in records:
            stage = str(r.get("stage"))
            self.by_stage[stage] = self.by_stage.get(stage, 0) + 1
        self._spool.seek(0, 2)
        self._spool.write(data)
        self._where[index] = (self._size, len(data))
        self._size += len(data)

    def copy_to(self, out: IO[bytes]) -> None:
        for index in sorted(self._where):
            offset, length = self._where[index]
            self._spool.seek(offset)
            out.write(self._spool.read(length))
        self._spool.seek(0, 2)

    def close(self) -> None:
        self._spool.close()
