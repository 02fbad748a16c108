"""Final listing rows: `RowTable` (every row in memory, for small listings) and `PartRows` (a shard's
rows read from a listing part in DEST, what a worker reads for its shard task)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from resize_pipeline.sources.base import ROW_COLUMNS, SourceItem


class RowTable:
    """Rows (`base.ROW_COLUMNS`) held in memory as columns; a sequence of `SourceItem`.

    What `Listing.items` gives (tests, training data, benchmarks): a convert job never holds its
    listing, it writes it to DEST as parts (`planning.py`)."""

    def __init__(self, columns: dict[str, list]) -> None:
        self.cols = {c: list(columns[c]) for c in ROW_COLUMNS}
        self.n = len(self.cols["key"])

    @classmethod
    def from_blocks(cls, blocks: Iterable[dict[str, list]]) -> RowTable:
        cols: dict[str, list] = {c: [] for c in ROW_COLUMNS}
        for b in blocks:
            for c in ROW_COLUMNS:
                cols[c].extend(b[c])
        return cls(cols)

    @classmethod
    def of(cls, items: Iterable[SourceItem]) -> RowTable:
        items = list(items)
        return cls({c: [getattr(it, c) for it in items] for c in ROW_COLUMNS})

    def columns(self, a: int, b: int) -> dict[str, list]:
        a, b = max(0, a), min(self.n, b)
        return {c: v[a:b] for c, v in self.cols.items()}

    def keys(self, a: int, b: int) -> list[str]:
        return self.cols["key"][a:b]

    def items(self, a: int = 0, b: int | None = None) -> list[SourceItem]:
        cols = self.columns(a, self.n if b is None else b)
        return [SourceItem(*row) for row in zip(*(cols[c] for c in ROW_COLUMNS), strict=True)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            a, b, step = i.indices(self.n)
            got = self.items(a, b) if b > a else []
            return got if step == 1 else got[::step]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.items(i, i + 1)[0]

    def __iter__(self) -> Iterator[SourceItem]:
        return iter(self.items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RowTable | list | tuple):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RowTable({self.n} rows)"


class PartRows:
    """Rows of listing part `name` in DEST (`layout.listing_part`), read when first asked for.

    A shard task refers to a row range of a part; the worker reads just the row groups that hold it
    (`parts.read_rows`). Pickles as its address only (DEST's URL, options, the part's name)."""

    __slots__ = ("dest_url", "storage_options", "name", "_cache")

    def __init__(self, dest_url: str, storage_options: dict[str, Any] | None, name: str) -> None:
        self.dest_url, self.storage_options, self.name = dest_url, dict(storage_options or {}), name
        self._cache: tuple[int, int, dict[str, list]] | None = None

    def columns(self, a: int, b: int) -> dict[str, list]:
        """Rows ``[a, b)`` of the part; a shard asks for its batches in order, so the shard's whole
        range is read once (`prefetch`) and sliced."""
        c = self._cache
        if c is None or not (c[0] <= a and b <= c[1]):
            self.prefetch(a, b)
            c = self._cache
        assert c is not None
        lo = a - c[0]
        return {k: v[lo:lo + (b - a)] for k, v in c[2].items()}

    def prefetch(self, a: int, b: int) -> None:
        from resize_pipeline.sources.parts import read_rows

        self._cache = (a, b, read_rows(self.dest_url, self.storage_options, self.name, a, b))

    def __reduce__(self) -> tuple:
        return PartRows, (self.dest_url, self.storage_options, self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PartRows) and (self.dest_url, self.name) == (other.dest_url, other.name)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PartRows({self.dest_url!r}, {self.name!r})"
