"""A growing SOURCE: small real JPEGs in class folders, and helpers to grow, change and delete them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resize_pipeline.config import ConvertConfig
from resize_pipeline.conversion import convert

#: options of every conversion here (tiny output, several shards, both formats)
OPTIONS = {"size": (24, 16), "samples_per_shard": 4, "format": "both", "workers": 1, "quiet": True}


def photo(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """A small, distinct, never all-zero JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = rng.integers(30, 220, 3)
    img = np.stack([(x * 255 // w + base[0]) % 256, (y * 255 // h + base[1]) % 256,
                    ((x + y) * 3 + base[2]) % 256], -1).astype(np.uint8)
    Image.fromarray(img).save(path, quality=90)
    return path


class Source:
    """SOURCE as a test grows it: ``cats/c000.jpg``... (ImageFolder labels)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, cls: str, n: int, start: int = 0, seed: int = 0) -> list[Path]:
        return [photo(self.root / cls / f"{cls[0]}{i:03d}.jpg", seed * 1000 + sum(map(ord, cls)) * 31 + i)
                for i in range(start, start + n)]

    def change(self, rel: str, seed: int) -> None:
        photo(self.root / rel, seed)
        st = os.stat(self.root / rel)
        os.utime(self.root / rel, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime for sure

    def delete(self, rel: str) -> None:
        (self.root / rel).unlink()


@pytest.fixture
def source(tmp_path) -> Source:
    s = Source(tmp_path / "src")
    s.add("cats", 5)
    s.add("dogs", 4)
    return s


def run(src: Source | Path, dest: Path, **kw):
    root = src.root if isinstance(src, Source) else src
    return convert(ConvertConfig(str(root), str(dest), **{**OPTIONS, **kw}))


def update(src, dest: Path, **kw):
    return run(src, dest, update=True, **kw)


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root`: its bytes and modification time (nanoseconds)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def manifest(dest: Path) -> dict:
    return json.loads((dest / "_manifest.json").read_text())


def make_legacy(dest: Path, src: Source | Path) -> None:
    """Turn a fresh plain conversion of `src` into what a version before generations wrote (release
    0.1.0 up to main at a64e96d): no input records, no listing parts, no generations in the manifest
    or the run record, no record reference in the stats, the counts of then, and the run record's
    listing as those versions recorded it (the whole listing's digests)."""
    from resize_pipeline.planning import listing_digests
    from resize_pipeline.sources import list_source

    root = src.root if isinstance(src, Source) else src
    shutil.rmtree(dest / "_listing")
    shutil.rmtree(dest / "_inputs")
    for st in (dest / "_stats").glob("*.json"):
        d = json.loads(st.read_text())
        d.pop("inputs", None)
        st.write_text(json.dumps(d, indent=1, sort_keys=True))
    m = manifest(dest)
    for k in ("generation", "generations"):
        m.pop(k)
    for f in m["shards"]:
        f.pop("generation")
    for s in m["shard_stats"]:
        s.pop("generation")
        s.pop("inputs")
    for k in ("duplicates", "superseded"):
        m["counts"].pop(k)
    (dest / "_manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))
    r = json.loads((dest / "_run.json").read_text())
    r.pop("generation")
    listing = list_source(str(root))
    r["listing"], r["stamps"] = listing_digests(listing)
    r["inputs"] = len(listing.items)
    (dest / "_run.json").write_text(json.dumps(r, indent=1, sort_keys=True))
