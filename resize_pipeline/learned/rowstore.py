"""The rows training reads, in compact columns: a few bytes per input instead of Python objects.

A listing streams its rows (`sources.common.Listing.rows`); a training set keeps only what reading a
sample needs: its key and URL (Arrow text, the URLs dictionary-encoded so the rows of one tar or
Parquet file share theirs) and its byte range / Parquet row (numpy). `SourceItem`s are made only for
the rows asked for (a batch, a pre-scan chunk). Arrow and numpy columns also keep DataLoader workers
cheap: a forked worker does not touch their pages (Python lists would be copied by reference counting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from resize_pipeline.sources.base import SourceItem

#: rows buffered as Python lists before they become one Arrow chunk
FLUSH = 1 << 14


class TextColumn:
    """Texts appended in chunks of Arrow UTF-8 (optionally dictionary-encoded); a chunk holding a name
    that is not valid UTF-8 (a surrogateescape file name) is stored as the bytes of its
    surrogateescape encoding and decoded back to the same `str` on the way out."""

    def __init__(self, dictionary: bool = False) -> None:
        self.dictionary = dictionary
        self.chunks: list[tuple[Any, bool]] = []
        self.starts = np.zeros(1, np.int64)

    def append(self, values: Sequence[str]) -> None:
        import pyarrow as pa

        if not values:
            return
        try:
            arr, escaped = pa.array(values, type=pa.string()), False
        except UnicodeEncodeError:
            arr, escaped = pa.array([v.encode("utf-8", "surrogateescape") for v in values], type=pa.binary()), True
        if self.dictionary:
            arr = arr.dictionary_encode()
        self.chunks.append((arr, escaped))
        self.starts = np.append(self.starts, self.starts[-1] + len(values))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def get(self, a: int, b: int) -> list[str]:
        out: list[str] = []
        c = max(0, int(np.searchsorted(self.starts, a, side="right")) - 1)
        while a < b and c < len(self.chunks):
            arr, escaped = self.chunks[c]
            lo = a - int(self.starts[c])
            n = min(b, int(self.starts[c + 1])) - a
            values = arr.slice(lo, n).to_pylist()
            if escaped:
                values = [v.decode("utf-8", "surrogateescape") for v in values]
            out.extend(values)
            a += n
            c += 1
        return out


class RowStore:
    """Rows (key, URL, byte range, Parquet row) appended block by block (`add`), read back as
    `SourceItem`s (`items`); labels are kept by the caller (`data.LabelledImages`)."""

    INTS = ("offset", "length", "row")

    def __init__(self) -> None:
        self.keys = TextColumn()
        self.urls = TextColumn(dictionary=True)
        self._ints: dict[str, list[np.ndarray]] = {c: [] for c in self.INTS}
        self._cols: dict[str, np.ndarray] = {}
        self._pending: dict[str, list] = {c: [] for c in ("key", "url", *self.INTS)}
        self.n = 0

    def add(self, block: dict[str, Sequence[Any]]) -> None:
        """Append rows given as columns (``key``, ``url``, ``offset``, ``length``, ``row``)."""
        for c, v in self._pending.items():
            v.extend(block[c])
        self.n += len(block["key"])
        if len(self._pending["key"]) >= FLUSH:
            self._flush()

    def _flush(self) -> None:
        p = self._pending
        self.keys.append(p["key"])
        self.urls.append(p["url"])
        for c in self.INTS:
            self._ints[c].append(np.asarray(p[c], dtype=np.int64))
        self._pending = {c: [] for c in p}

    def finish(self) -> RowStore:
        """Flush what is buffered and join the number columns; returns self (call once, after `add`)."""
        self._flush()
        self._cols = {c: np.concatenate(v) if v else np.zeros(0, np.int64) for c, v in self._ints.items()}
        self._ints = {c: [] for c in self.INTS}
        return self

    def __len__(self) -> int:
        return self.n

    def items(self, a: int, b: int, labels: Sequence[int] | np.ndarray, classes: Sequence[str] = ()) -> list[SourceItem]:
        """Rows ``[a, b)`` as `SourceItem`s, with their labels (``labels[k]`` for row ``a + k``) and
        label names (``classes[label]`` when given)."""
        a, b = max(0, a), min(self.n, b)
        if b <= a:
            return []
        keys, urls = self.keys.get(a, b), self.urls.get(a, b)
        off, ln, row = (self._cols[c][a:b].tolist() for c in self.INTS)
        labs = [int(x) for x in labels[: b - a]]
        names = [classes[x] if 0 <= x < len(classes) else str(x) for x in labs]
        return [SourceItem(k, u, la, na, "", o, n, r, 0)
                for k, u, la, na, o, n, r in zip(keys, urls, labs, names, off, ln, row, strict=True)]
