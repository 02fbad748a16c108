"""Stable, tar-safe sample keys derived from relative paths, made unique in linear time."""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MAX_KEY_LEN = 160


def sanitize_key(rel_path: str) -> str:
    """``"cats/Tom & Jerry.v2.JPG"`` -> ``"cats__Tom_Jerry_v2"``.

    Keys never contain dots (webdataset splits member names at the first dot) or slashes; anything
    outside ``[A-Za-z0-9_-]`` becomes ``_``; directory separators become ``__``.
    """
    rel = rel_path.replace("\\", "/").strip("/")
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


class KeyCollector:
    """`unique_keys` for listings too large to hold every key: feed the plain keys in listing order
    (`add`), then `overrides(rel_of)` returns only the rows whose key is not their plain key.

    Only a 32-bit hash per row is kept (40 MB for 10M rows). Rows whose hashes collide (true
    duplicates, and ~n^2/2^33 chance pairs) are checked exactly, and the suffixed keys are checked
    against every plain key's hash; the result equals `unique_keys`.
    """

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self.n = 0

    def add(self, plain_keys: Sequence[str]) -> None:
        self._chunks.append(np.fromiter((hash(k) & 0xFFFFFFFF for k in plain_keys), dtype=np.uint32,
                                        count=len(plain_keys)))
        self.n += len(plain_keys)

    def _rows_with(self, values: np.ndarray) -> np.ndarray:
        """Rows (in order) whose hash is one of `values`."""
        out, start = [], 0
        for c in self._chunks:
            out.append(np.flatnonzero(np.isin(c, values)) + start)
            start += len(c)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def overrides(self, rel_of: Callable[[int], str]) -> dict[int, str]:
        """`{row: key}` for the rows that do not keep their plain key; `rel_of(row)` gives a row's path."""
        if not self._chunks:
            return {}
        ranked = np.sort(np.concatenate(self._chunks))
        repeated = np.unique(ranked[1:][ranked[1:] == ranked[:-1]])
        del ranked
        if not len(repeated):
            return {}
        candidates = self._rows_with(repeated)
        rels = {int(i): rel_of(int(i)) for i in candidates}
        plain = {i: sanitize_key(r) for i, r in rels.items()}
        counts = Counter(plain.values())
        rows = [i for i in rels if counts[plain[i]] > 1]  # in listing order (candidates are sorted)
        keys = unique_keys(rels[i] for i in rows)
        out = {i: k for i, k in zip(rows, keys, strict=True) if k != plain[i]}
        # A suffixed key that equals another row's plain key would have changed that row too: then
        # (never seen in practice) redo the whole listing the slow, exact way.
        suffixed = np.fromiter((hash(k) & 0xFFFFFFFF for k in out.values()), dtype=np.uint32, count=len(out))
        taken = set(out.values())
        if any(sanitize_key(rel_of(int(i))) in taken for i in self._rows_with(suffixed)):
            keys = unique_keys(rel_of(i) for i in range(self.n))
            return {i: k for i, k in enumerate(keys) if k != sanitize_key(rel_of(i))}
        return out
