"""Stable, tar-safe sample keys derived from relative paths, made unique in linear time."""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
#: a path the rule below only joins (clean folder and file names, one extension without a dot): the
#: common case, ~8x faster, the same key
_PART = r"(?:[A-Za-z0-9-]|[A-Za-z0-9-][A-Za-z0-9_-]*[A-Za-z0-9-])"
_CLEAN = re.compile(rf"({_PART}(?:/{_PART})*)(?:\.[^/.]*)?")
MAX_KEY_LEN = 160


def sanitize_key(rel_path: str) -> str:
    """``"cats/Tom & Jerry.v2.JPG"`` -> ``"cats__Tom_Jerry_v2"``.

    Keys never contain dots (webdataset splits member names at the first dot) or slashes; anything
    outside ``[A-Za-z0-9_-]`` becomes ``_``; directory separators become ``__``.
    """
    rel = rel_path.replace("\\", "/").strip("/")
    clean = _CLEAN.fullmatch(rel)
    if clean:
        key = clean.group(1).replace("/", "__")
    else:
        stem, ext = posixpath.splitext(rel)
        if not ext or "/" in ext:
            stem = rel
        parts = [(_UNSAFE.sub("_", p).strip("_") or "_") for p in stem.split("/") if p not in ("", ".")]
        key = "__".join(parts) or "_"
    if len(key) > MAX_KEY_LEN:
        key = key[: MAX_KEY_LEN - 9] + "_" + _digest(rel)
    return key


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def unique_keys(rel_paths: Iterable[str]) -> list[str]:
    """Sanitised keys, made unique deterministically: the first path (in the given order) keeps the
    plain key, later collisions get ``_<sha1(path)[:8]>`` appended (and ``_1``, ``_2``... when that
    is taken too, e.g. the same path listed many times).

    Linear in the number of paths: the next free ``_n`` of each suffixed key is remembered (keys are
    only ever added, so every number below it is still taken).
    """
    seen: set[str] = set()
    next_n: dict[str, int] = {}
    out = []
    for rel in rel_paths:
        key = sanitize_key(rel)
        if key in seen:
            base = f"{key}_{_digest(rel)}"
            n = next_n.get(base, 0)
            key = base if n == 0 else f"{base}_{n}"
            while key in seen:  # the same path again, or (pathological) a suffix already taken
                n += 1
                key = f"{base}_{n}"
            next_n[base] = n
        seen.add(key)
        out.append(key)
    return out


class StreamingKeys:
    """`unique_keys` over a listing that arrives in blocks, in memory that does not grow with it.

    `assign(rels)` gives the final keys of the next block of rows: exactly what `unique_keys` gives
    for the whole listing (a row's key depends only on the rows before it). The keys given so far
    live in a `keyindex.KeyIndex` (a set, then a hash table on local disk with exact checks). Rows
    whose plain key is new and unique in its block (nearly all) are settled a block at a time with
    numpy; the others walk `unique_keys`' rule one by one. The next free ``_n`` of a suffixed key is
    remembered for the `RECENT` most recent ones only (a hint: every smaller number is taken, so
    forgetting it costs a few extra probes, never a different key).

    Args:
        expected: how many rows the listing holds at most (0: unknown).
    """

    RECENT = 1 << 16

    def __init__(self, expected: int = 0, spill: int | None = None) -> None:
        from resize_pipeline.sources.keyindex import SPILL, KeyIndex

        self.index = KeyIndex(expected, SPILL if spill is None else spill)
        self._next: OrderedDict[str, int] = OrderedDict()

    def assign(self, rels: Sequence[str]) -> list[str]:
        from resize_pipeline.sources.keyindex import key_hashes

        plain = [sanitize_key(r) for r in rels]
        if not plain:
            return plain
        h = key_hashes(plain)
        index = self.index
        before = index.maybe(plain, h)  # earlier blocks (a hit is confirmed below)
        _, first = np.unique(h, return_index=True)
        again = np.ones(len(h), dtype=bool)
        again[first] = False  # an earlier row of this block has the same hash
        if not (before | again).any():
            index.add(plain, h)
            index.release()
            return plain
        final: list[str] = []
        block: set[str] = set()
        changed: list[int] = []
        check = (before & True).tolist()
        for j, k in enumerate(plain):
            if k in block or (check[j] and index.contains(k, int(h[j]))):
                k = self._suffixed(k, rels[j], block)
                changed.append(j)
            block.add(k)
            final.append(k)
        hashes = h.copy()
        if changed:
            hashes[changed] = key_hashes([final[j] for j in changed])
        index.add(final, hashes)
        index.release()
        return final

    def _suffixed(self, key: str, rel: str, block: set[str]) -> str:
        base = f"{key}_{_digest(rel)}"
        n = self._next.get(base, 0)
        k = base if n == 0 else f"{base}_{n}"
        while k in block or self.index.contains(k):
            n += 1
            k = f"{base}_{n}"
        self._next[base] = n
        self._next.move_to_end(base)
        if len(self._next) > self.RECENT:
            self._next.popitem(last=False)
        return k

    def close(self) -> None:
        self.index.close()
