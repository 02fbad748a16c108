"""WebDataset tars: one input per sample key that has an image member, read back by byte range.

Tars are listed in parallel (one task per group of tars: threads here, Ray tasks on Ray), each
writing its samples as runs (`runs.RunStore`) in the tar's own order; the rows then stream tar after
tar, in sorted tar order. A tar that cannot be read (not a tar, truncated) is one error row (stage
``list``); the samples listed before the point where it broke are kept. A sample whose ``.cls``
holds a number beyond 64 bits is one error row. Members that are not regular files (symbolic and
hard links, devices, FIFOs, sparse files) are never read: counted by reason, the first
`MAX_SKIPPED_SHOWN` named (`Listing.skipped_members`, `Listing.skipped_examples`), in tar order
whichever task listed them.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.sources.base import IMAGE_EXTENSIONS
from resize_pipeline.sources.common import (
    BLOCK,
    INT64,
    MAX_SKIPPED_SHOWN,
    Listing,
    beyond_int64,
    list_error,
    raw_block,
)
from resize_pipeline.sources.runs import RUN_ROWS, RunStore, run_tasks
from resize_pipeline.sources.stamps import stamp_info

log = logging.getLogger(__name__)

#: tars listed by one task at most (a task per tar when there are few)
MAX_TASKS = 256
_COLUMNS = ("k", "offset", "length", "label", "label_name", "meta")
#: bytes of a ``.cls`` member read at most (its label is one number)
CLS_BYTES = 4096


@dataclass
class TarResult:
    """One tar: its runs (samples in order), sample count, stamp, and why it broke (or "")."""

    path: str
    runs: list[str] = field(default_factory=list)
    samples: int = 0
    stamp: int = 0
    error: str = ""
    skip: bool = False  # could not be read at all: no samples
    #: samples that cannot be taken (key, why): error rows
    bad: list[tuple[str, str]] = field(default_factory=list)
    #: members that are not regular files: count by reason, and the first `MAX_SKIPPED_SHOWN` (member, why)
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[str, str]] = field(default_factory=list)


def list_tar_group(source: str, storage_options: dict[str, Any], task: int, tars: list[str],
                   store: RunStore) -> list[TarResult]:
    """One listing task: list `tars`, writing each one's samples as runs in `store`."""
    from fsspec.core import url_to_fs

    fs, _ = url_to_fs(source, **storage_options)
    out = []
    run = 0
    for tar_path in tars:
        res = TarResult(tar_path)
        try:
            res.stamp = stamp_info(fs.info(tar_path))
            scan = _tar_samples(fs, tar_path)
        except _BrokenTar as exc:
            scan, res.stamp = exc.scan, 0
            res.error = exc.reason
        except (OSError, tarfile.TarError, EOFError) as exc:
            res.error, res.skip = f"cannot read this tar: {type(exc).__name__}: {exc}", True
            out.append(res)
            continue
        samples = scan.samples
        res.bad, res.skipped, res.examples = scan.bad, scan.skipped, scan.examples
        for a in range(0, len(samples), RUN_ROWS):
            chunk = samples[a:a + RUN_ROWS]
            name, _ = store.write(task, run, {c: [s[i] for s in chunk] for i, c in enumerate(_COLUMNS)})
            res.runs.append(name)
            run += 1
        res.samples = len(samples)
        out.append(res)
    return out


def prepare_tars(listing: Listing, fs: Any, tars: list[str], base: str, source: str,
                 storage_options: dict[str, Any], runner: Any = None, store: RunStore | None = None,
                 errors: list[dict[str, str]] | None = None) -> None:
    """List `tars` (sorted) into `listing` (kind ``webdataset``): rows stream tar after tar."""
    own = store is None
    store = store or RunStore()
    groups = max(1, min(MAX_TASKS, len(tars)))
    per = -(-len(tars) // groups) if tars else 1
    args = [(source, storage_options, 10_000 + g, tars[g * per:(g + 1) * per], store)
            for g in range(groups) if tars[g * per:(g + 1) * per]]
    results: list[TarResult] = [r for group in run_tasks(runner, list_tar_group, args, threads=8) for r in group]
    listing.kind, listing.classes, listing.skipped = "webdataset", [], 0
    for e in errors or ():
        listing.errors.add(e)
    for r in results:
        url, rel = fs.unstrip_protocol(r.path), _rel_tar(r.path, base)
        if r.error:
            listing.errors.add(list_error(rel, url, r.error))
        stem = posixpath.splitext(rel)[0]
        for k, why in r.bad:
            listing.errors.add(list_error(posixpath.join(stem, k), url, why))
    _gather_skipped(listing, results, fs)
    listing.bound = sum(r.samples for r in results)
    names = [n for r in results for n in r.runs]

    def blocks() -> Iterator[dict[str, list]]:
        for r in results:
            if r.skip or not r.samples:
                continue
            url = fs.unstrip_protocol(r.path)
            stem = posixpath.splitext(_rel_tar(r.path, base))[0]
            for name in r.runs:
                for cols in store.read(name, text=("k", "label_name", "meta")):
                    n = len(cols["k"])
                    for a in range(0, n, BLOCK):
                        b = min(n, a + BLOCK)
                        yield raw_block([posixpath.join(stem, k) for k in cols["k"][a:b]], [url] * (b - a),
                                        offset=cols["offset"][a:b], length=cols["length"][a:b],
                                        label=cols["label"][a:b], label_name=cols["label_name"][a:b],
                                        meta=cols["meta"][a:b], stamp=[r.stamp] * (b - a))

    listing.set_blocks(blocks, store.close if own else (lambda: store.remove(names)))  # type: ignore[union-attr]


def _gather_skipped(listing: Listing, results: list[TarResult], fs: Any) -> None:
    """The members no task read, over every tar in tar order (`results` are): counts by reason, the
    first `MAX_SKIPPED_SHOWN` named; one warning."""
    counts: dict[str, int] = {}
    examples: list[dict[str, str]] = []
    for r in results:
        for kind, n in r.skipped.items():
            counts[kind] = counts.get(kind, 0) + n
        for member, reason in r.examples[: MAX_SKIPPED_SHOWN - len(examples)]:
            examples.append({"path": fs.unstrip_protocol(r.path), "member": member, "reason": reason})
    listing.skipped_members, listing.skipped_examples = counts, examples
    if counts:
        log.warning("skipped %d tar member(s) that are not regular files (%s), e.g. %s in %s: their samples are "
                    "not converted (counted in the manifest)", sum(counts.values()),
                    ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), examples[0]["member"],
                    examples[0]["path"])


def _rel_tar(tar_path: str, base: str) -> str:
    return posixpath.relpath(tar_path, base) if base else tar_path


@dataclass(slots=True)
class _TarScan:
    """What one tar holds: samples (key, offset, length, label, label name, metadata) with an image
    member; samples that cannot be taken (key, why: error rows); members never read (counts by
    reason, the first `MAX_SKIPPED_SHOWN` as (name, why))."""

    samples: list[tuple[str, int, int, int, str, str]] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, member: str, why: str) -> None:
        kind = why.split(" (", 1)[0]
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        if len(self.examples) < MAX_SKIPPED_SHOWN:
            self.examples.append((member, why))


class _BrokenTar(Exception):
    def __init__(self, reason: str, scan: _TarScan) -> None:
        super().__init__(reason)
        self.reason, self.scan = reason, scan


def _not_regular(m: tarfile.TarInfo) -> str | None:
    """Why member `m` is not read as a file, or None for a regular file (or a directory: no input)."""
    if m.issym():
        return f"symbolic link (to {m.linkname[:200]})"
    if m.islnk():
        return f"hard link (to {m.linkname[:200]})"
    if m.ischr() or m.isblk():
        return "device"
    if m.isfifo():
        return "FIFO"
    if m.issparse():
        return "sparse file (its bytes are not stored in one piece)"
    if m.isfile() or m.isdir():
        return None
    return f"member of type {m.type!r}"


def _tar_samples(fs, tar_path: str) -> _TarScan:
    """Every sample of one tar with an image member (see `_TarScan`)."""
    scan = _TarScan()
    out = scan.samples
    with fs.open(tar_path, "rb") as fh:
        tf = tarfile.open(fileobj=fh, mode="r:")  # noqa: SIM115 - closed below, or by fh
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        order: list[str] = []
        broken = ""
        try:
            for m in tf:
                why = _not_regular(m)
                if why is not None:
                    scan.skip(m.name, why)
                    continue
                if not m.isfile():
                    continue
                d, b = posixpath.split(m.name)
                if "." not in b:
                    continue
                stem, ext = b.split(".", 1)
                k = posixpath.join(d, stem)
                if k not in samples:
                    samples[k] = {}
                    order.append(k)
                samples[k][ext.lower()] = m
        except (tarfile.TarError, EOFError, OSError) as exc:
            broken = f"this tar breaks after {len(order)} sample(s) (truncated?): {type(exc).__name__}: {exc}"
            order = order[:-1] if order else order  # the last sample may have lost members
        for k in order:
            parts = samples[k]
            img = next((parts[e] for e in parts if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
            if img is None:
                continue
            label, name, meta = -1, "", ""
            if "cls" in parts:
                fh.seek(parts["cls"].offset_data)
                try:
                    label = int(fh.read(min(parts["cls"].size, CLS_BYTES)).decode().strip())
                except (ValueError, UnicodeDecodeError):
                    label = -1
                if not INT64[0] <= label <= INT64[1]:
                    scan.bad.append((k, f"sample {k}: the label in {parts['cls'].name} {beyond_int64(label)}"))
                    continue
            if "json" in parts:
                fh.seek(parts["json"].offset_data)
                meta = fh.read(parts["json"].size).decode("utf-8", "replace")
                try:
                    name = str(json.loads(meta).get("label_name", "") or "")
                except (ValueError, AttributeError):
                    pass
            out.append((k, img.offset_data, img.size, label, name, meta))
    if broken:
        raise _BrokenTar(broken, scan)
    return scan
