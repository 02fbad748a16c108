"""The listing's rows, stored column by column: a few bytes per input instead of a Python object.

A 10M-row manifest cannot be held as 10M `SourceItem`s (~0.5 KB each). `ItemTable` keeps what the
listing read in compact columns (Arrow text, numpy integers) and derives the rest on demand:

- keys: `sanitize_key` of each row's relative path, except the few rows whose key had to be made
  unique (`KeyCollector`: an override per colliding row, found in linear time);
- URLs: from the path text by a rule (a prefix, a manifest's folder), or one URL per tar/Parquet file;
- labels (numpy), label names (from the class list, or a text column), metadata (a JSON text column,
  or the manifest's extra columns, JSON-encoded when a row is made).

`SourceItem`s (and column batches) are made only for the rows asked for: a shard's slice, a batch.
The table also carries the listing's digests (what ``_run.json`` records to guard a resume): one over
every row's key, URL, byte range and label, one over the inputs' sizes and modification times.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from resize_pipeline.sources.base import SourceItem
from resize_pipeline.sources.keys import KeyCollector, sanitize_key

#: rows made at a time when the whole table is walked (digests, key checks)
CHUNK = 1 << 16


class Text:
    """A column of texts: a Python list (small listings: no pyarrow import, ~0.1 s of a short job),
    Arrow UTF-8, or, when a name is not valid UTF-8, Arrow bytes holding the name's surrogateescape
    encoding, decoded back to the same `str` on the way out."""

    __slots__ = ("array", "escaped")

    #: up to this many values a column stays a Python list
    SMALL = 50_000

    def __init__(self, array: Any, escaped: bool = False) -> None:
        self.array, self.escaped = array, escaped

    @classmethod
    def of(cls, values: Sequence[str]) -> Text:
        if len(values) <= cls.SMALL:
            return cls(list(values))
        import pyarrow as pa

        try:
            return cls(pa.array(values, type=pa.large_string()))
        except UnicodeEncodeError:  # a file name that is not UTF-8 (surrogateescape in Python)
            return cls(pa.array([v.encode("utf-8", "surrogateescape") for v in values], type=pa.large_binary()),
                       escaped=True)

    @classmethod
    def arrow(cls, array: Any) -> Text:
        """An Arrow string column as read, chunked or not (nulls become "")."""
        if array.null_count:
            array = array.fill_null("")
        return cls(array)

    def __len__(self) -> int:
        return len(self.array)

    def get(self, a: int, b: int) -> list[str]:
        if isinstance(self.array, list):
            return self.array[a:b]
        values = self.array.slice(a, b - a).to_pylist()
        if self.escaped:
            return [v.decode("utf-8", "surrogateescape") for v in values]
        return values

    def at(self, i: int) -> str:
        return self.get(i, i + 1)[0]


# ------------------------------------------------------------------------------------------ URLs
class Joined:
    """``url = prefix + path`` (a folder or a glob: the path relative to it)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def rels(self, texts: list[str]) -> list[str]:
        return texts

    def urls(self, texts: list[str], a: int, b: int) -> list[str]:
        p = self.prefix
        return [p + t for t in texts]


class ManifestPaths:
    """A manifest's path column: a URL as given, an absolute path, or a path relative to the manifest."""

    def __init__(self, fs: Any, base: str) -> None:
        self.fs, self.base = fs, base
        self._local = _local_prefix(fs)

    def rels(self, texts: list[str]) -> list[str]:
        return [t.split("://", 1)[1] if "://" in t else t for t in texts]

    def urls(self, texts: list[str], a: int, b: int) -> list[str]:
        fs, base, join, norm = self.fs, self.base, posixpath.join, posixpath.normpath
        local = self._local
        if local is None:
            return [t if "://" in t else fs.unstrip_protocol(t) if t.startswith("/")
                    else fs.unstrip_protocol(norm(join(base, t))) for t in texts]
        # a local manifest: fsspec's unstrip_protocol of a normalised absolute path is ``file://`` + it
        # (checked by `_local_prefix`); the same strings as above, ~5x faster on millions of rows
        out = []
        for t in texts:
            if "://" in t:
                out.append(t)
            elif t.startswith("/"):
                out.append(local + t if norm(t) == t else fs.unstrip_protocol(t))
            else:
                out.append(local + norm(join(base, t)))
        return out


def _local_prefix(fs: Any) -> str | None:
    """``file://`` when `fs` is the local filesystem and turns normalised absolute paths into URLs by
    prefixing them (as fsspec's LocalFileSystem does); None otherwise."""
    from resize_pipeline.urls import is_local_fs

    if not is_local_fs(fs) or os.sep != "/":
        return None
    probe = "/a b/c.jpg"
    url = fs.unstrip_protocol(probe)
    return url[: -len(probe)] if url.endswith(probe) and url[: -len(probe)] == "file://" else None


class Explicit:
    """Each row's URL stored as given (a `Text` column)."""

    def __init__(self, urls: Text) -> None:
        self.column = urls

    def rels(self, texts: list[str]) -> list[str]:
        return texts

    def urls(self, texts: list[str], a: int, b: int) -> list[str]:
        return self.column.get(a, b)


class Indexed:
    """One URL per container (a tar, a Parquet file), the row's container by index."""

    def __init__(self, index: np.ndarray, values: list[str]) -> None:
        self.index, self.values = index, values

    def rels(self, texts: list[str]) -> list[str]:
        return texts

    def urls(self, texts: list[str], a: int, b: int) -> list[str]:
        v = self.values
        return [v[j] for j in self.index[a:b].tolist()]


class IntNames:
    """Label names of an integer label column: the number as text, "" where the manifest had none."""

    def __init__(self, valid: np.ndarray | None = None) -> None:
        self.valid = valid  # None: every row had a label

    def get(self, labels: list[int], a: int, b: int) -> list[str]:
        if self.valid is None:
            return [str(x) for x in labels]
        return [str(x) if v else "" for x, v in zip(labels, self.valid[a:b].tolist(), strict=True)]


# ------------------------------------------------------------------------------------- the table
class ItemTable:
    """The inputs of a job in listing order; a sequence of `SourceItem` made on demand.

    Args:
        text: each row's path text (relative path, manifest path or key source).
        urls: how a row's URL (and the relative path its key comes from) follows from its text.
        label: class index per row (None: all -1).
        classes: with `label`, label names are ``classes[label]``; else `names` (a `Text`, or
            `IntNames`: the label as text) or "".
        meta: a `Text` column of JSON, or an Arrow table whose rows are JSON-encoded; None: "".
        offset, length, row: byte range inside a tar / row inside a Parquet file (None: all -1).
        stamps: 32-bit summaries of the inputs' sizes and modification times (`stamps.py`): one per
            row, plus any of the containers they come from (a manifest's own); None: not known.
    """

    def __init__(self, text: Text, urls: Any, *, label: np.ndarray | None = None,
                 classes: Sequence[str] | None = None, names: Any = None, meta: Any = None,
                 offset: np.ndarray | None = None, length: np.ndarray | None = None,
                 row: np.ndarray | None = None, stamps: np.ndarray | None = None,
                 key_overrides: dict[int, str] | None = None) -> None:
        self.text, self.url_rule = text, urls
        self.n = len(text)
        self.label, self.classes, self.names, self.meta = label, list(classes) if classes else None, names, meta
        self.offset, self.length, self.row, self.stamps = offset, length, row, stamps
        self.key_overrides: dict[int, str] = dict(key_overrides or {})
        self.digest = ""
        self.stamps_digest: str | None = None
        #: whether `stamps` begins with one stamp per row (what `columns` hands out as ``stamp``)
        self.row_stamps = stamps is not None and len(stamps) >= self.n

    # -- building -----------------------------------------------------------------------------
    def finish(self, stamper: Any = None) -> ItemTable:
        """Make the keys unique (`KeyCollector`, linear) and compute the digests; returns self.

        `stamper` (e.g. `stamps.FolderStamps`) sees every row's URL on the way (``observe``) and then
        gives the stamps (``result()``)."""
        collector = KeyCollector()
        h = hashlib.sha256()
        for a in range(0, self.n, CHUNK):
            b = min(self.n, a + CHUNK)
            texts = self.text.get(a, b)
            plain = [sanitize_key(r) for r in self.url_rule.rels(texts)]
            collector.add(plain)
            urls = self._digest_rows(h, a, b, texts, plain)
            if stamper is not None:
                stamper.observe(a, b, urls)
        self.key_overrides = collector.overrides(self._rel_of)
        if self.key_overrides:  # some keys changed: the digest covers the final keys
            h = hashlib.sha256()
            for a in range(0, self.n, CHUNK):
                b = min(self.n, a + CHUNK)
                self._digest_rows(h, a, b, self.text.get(a, b), self.keys(a, b))
        self.digest = h.hexdigest()[:16]
        if stamper is not None:
            self.stamps = stamper.result()
            self.row_stamps = getattr(stamper, "per_row", True) and len(self.stamps) >= self.n
        if self.stamps is not None:
            self.stamps_digest = hashlib.sha256(self.stamps.astype("<i4").tobytes()).hexdigest()[:16]
        return self

    def _rel_of(self, i: int) -> str:
        return self.url_rule.rels([self.text.at(i)])[0]

    def _digest_rows(self, h: Any, a: int, b: int, texts: list[str], keys: list[str]) -> list[str]:
        """The same lines as release 0.1.0's listing digest (so its ``_run.json`` still resumes);
        returns the rows' URLs."""
        urls = self.url_rule.urls(texts, a, b)
        off, ln, row, lab = (self._ints(c, a, b) for c in (self.offset, self.length, self.row, self.label))
        h.update("".join(f"{k}\t{u}\t{o}\t{n}\t{r}\t{la}\n" for k, u, o, n, r, la
                         in zip(keys, urls, off, ln, row, lab, strict=True)).encode("utf-8", "surrogatepass"))
        return urls

    @staticmethod
    def _ints(col: np.ndarray | None, a: int, b: int) -> list[int]:
        return [-1] * (b - a) if col is None else col[a:b].tolist()

    # -- rows ---------------------------------------------------------------------------------
    def keys(self, a: int, b: int) -> list[str]:
        rels = self.url_rule.rels(self.text.get(a, b))
        over = self.key_overrides
        if not over:
            return [sanitize_key(r) for r in rels]
        return [over.get(i) or sanitize_key(r) for i, r in enumerate(rels, a)]

    def columns(self, a: int, b: int) -> dict[str, list]:
        """The `SourceItem` fields of rows ``[a, b)``, column by column."""
        a, b = max(0, a), min(self.n, b)
        texts = self.text.get(a, b)
        rels = self.url_rule.rels(texts)
        over = self.key_overrides
        keys = [over.get(i) or sanitize_key(r) for i, r in enumerate(rels, a)] if over else \
            [sanitize_key(r) for r in rels]
        labels = self._ints(self.label, a, b)
        if self.classes is not None:
            cl = self.classes
            names = [cl[x] if x >= 0 else "" for x in labels]
        elif isinstance(self.names, IntNames):
            names = self.names.get(labels, a, b)
        elif self.names is not None:
            names = self.names.get(a, b)
        else:
            names = [""] * (b - a)
        return {
            "key": keys,
            "url": self.url_rule.urls(texts, a, b),
            "label": labels,
            "label_name": names,
            "meta": self._meta(a, b),
            "offset": self._ints(self.offset, a, b),
            "length": self._ints(self.length, a, b),
            "row": self._ints(self.row, a, b),
            "stamp": self.stamps[a:b].tolist() if self.row_stamps and self.stamps is not None else [0] * (b - a),
        }

    def _meta(self, a: int, b: int) -> list[str]:
        if self.meta is None:
            return [""] * (b - a)
        if isinstance(self.meta, Text):
            return self.meta.get(a, b)
        rows = self.meta.slice(a, b - a).to_pylist()  # a manifest's extra columns
        return [json.dumps(r, sort_keys=True, default=str, ensure_ascii=False) for r in rows]

    def items(self, a: int = 0, b: int | None = None) -> list[SourceItem]:
        cols = self.columns(a, self.n if b is None else b)
        return [SourceItem(*row) for row in zip(*cols.values(), strict=True)]

    # -- sequence protocol (tests and small listings) -----------------------------------------
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
        for a in range(0, self.n, CHUNK):
            yield from self.items(a, min(self.n, a + CHUNK))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ItemTable | list | tuple):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ItemTable({self.n} rows)"
