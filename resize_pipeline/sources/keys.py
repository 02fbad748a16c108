"""Stable, tar-safe sample keys derived from relative paths."""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable

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
    plain key, later collisions get ``_<sha1(path)[:8]>`` appended."""
    seen: set[str] = set()
    out = []
    for rel in rel_paths:
        key = sanitize_key(rel)
        if key in seen:
            key = f"{key}_{_digest(rel)}"
            n = 0
            while key in seen:  # pathological: hash suffix collides too
                n += 1
                key = f"{sanitize_key(rel)}_{_digest(rel)}_{n}"
        seen.add(key)
        out.append(key)
    return out
