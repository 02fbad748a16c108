"""Folders and globs: every image file below a folder (ImageFolder labels when all images sit in
sub-folders), or every file a glob matches; a folder of WebDataset tars goes to `tars`.

The listing is split into tasks, one per group of top-level sub-folders (sub-prefixes on object
stores), that run in parallel: in threads here, or as Ray tasks (`workers/listing_tasks.py`) when a
job runs on Ray. Each task walks its folders and writes what it found as sorted runs
(`runs.RunStore`); the rows then stream in the order of every path sorted (`runs.merged`), the order
this tool has always used, so keys and shards are the same whoever listed them. Nothing holds the
whole listing: a task sorts at most `runs.RUN_ROWS` paths at a time (locally; an object-store
sub-prefix is listed by one paged ``find``).

What cannot be listed is an error row (stage ``list``): a sub-folder that cannot be read.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.errors import SourceError
from resize_pipeline.sources.base import IMAGE_EXTENSIONS
from resize_pipeline.sources.common import BLOCK, Listing, ext, list_error, raw_block
from resize_pipeline.sources.runs import RUN_ROWS, RunStore, merged, run_tasks
from resize_pipeline.sources.stamps import stamp_info, stamp_stat

#: listing tasks at most (top-level folders are grouped beyond that)
MAX_TASKS = 256


@dataclass
class PrefixTask:
    """What one listing task walks. `seen`: (device, inode) of folders other tasks walk (local)."""

    task: int
    source: str  # SOURCE's URL (the filesystem to open)
    storage_options: dict[str, Any]
    prefixes: list[str]
    files: list[tuple[str, int]] = field(default_factory=list)
    pattern: str | None = None  # a glob's regex: only matching files count
    maxdepth: int | None = None  # a glob's depth below the root
    root_depth: int = 0
    seen: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class PrefixResult:
    """What a listing task found: its runs (sorted (path, stamp)) of image files and of tars, counts,
    and folders it could not read."""

    task: int
    runs: list[tuple[str, int]] = field(default_factory=list)
    tar_runs: list[tuple[str, int]] = field(default_factory=list)
    images: int = 0
    tars: int = 0
    skipped: int = 0
    others: int = 0  # matched files that are not tars (hidden ones included): "all tars?" for globs
    by_top: dict[str, int] = field(default_factory=dict)  # images per top-level folder
    unreadable: list[tuple[str, str]] = field(default_factory=list)


class _Collector:
    """Files found by one task, classified and written as sorted runs as they pile up."""

    def __init__(self, spec: PrefixTask, store: RunStore, root: str, pattern: re.Pattern | None) -> None:
        self.spec, self.store, self.root, self.pattern = spec, store, root, pattern
        self.res = PrefixResult(spec.task)
        self.images: list[tuple[str, int]] = []
        self.tars: list[tuple[str, int]] = []
        self.k = 0

    def add(self, path: str, stamp: int) -> None:
        if self.pattern is not None and not self.pattern.match(path):
            return
        res = self.res
        e = ext(path)
        if e == ".tar":
            res.tars += 1
            self.tars.append((path, stamp))
        else:
            res.others += 1
        base = posixpath.basename(path)
        if base.startswith("."):
            return
        if e in IMAGE_EXTENSIONS:
            res.images += 1
            rel = _rel(path, self.root)
            top = rel.split("/", 1)[0] if "/" in rel else ""
            res.by_top[top] = res.by_top.get(top, 0) + 1
            self.images.append((path, stamp))
            if len(self.images) >= RUN_ROWS:
                self._flush_images()
        else:
            res.skipped += 1

    def _flush_images(self) -> None:
        if self.images:
            self.images.sort()
            self.res.runs.append(self.store.write(self.spec.task, self.k, {
                "path": [p for p, _ in self.images], "stamp": [s for _, s in self.images]}))
            self.k += 1
            self.images = []

    def finish(self) -> PrefixResult:
        self._flush_images()
        if self.tars:
            self.tars.sort()
            self.res.tar_runs.append(self.store.write(self.spec.task, self.k, {
                "path": [p for p, _ in self.tars], "stamp": [s for _, s in self.tars]}))
            self.k += 1
        return self.res


def _rel(p: str, root: str) -> str:
    return posixpath.relpath(p, root) if root else p.lstrip("/")


def list_prefixes(spec: PrefixTask, store: RunStore, root: str) -> PrefixResult:
    """One listing task: walk `spec.prefixes` (and take `spec.files`), write sorted runs to `store`."""
    from fsspec.core import url_to_fs

    from resize_pipeline.urls import is_local_fs

    fs, _ = url_to_fs(spec.source, **spec.storage_options)
    pattern = re.compile(spec.pattern) if spec.pattern else None
    out = _Collector(spec, store, root, pattern)
    for path, stamp in spec.files:
        out.add(path, stamp)
    local = is_local_fs(fs)
    for prefix in spec.prefixes:
        depth = None if spec.maxdepth is None else spec.maxdepth - (prefix.count("/") - spec.root_depth)
        if depth is not None and depth < 1:
            continue
        if local:
            _walk_local(prefix, out, set(spec.seen), depth)
            continue
        try:
            found = fs.find(prefix, detail=True, maxdepth=depth)
        except (OSError, ValueError) as exc:
            out.res.unreadable.append((prefix, f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"))
            continue
        for p in sorted(found):
            if found[p].get("type") != "directory":
                out.add(p, stamp_info(found[p]))
    return out.finish()


def _walk_local(top: str, out: _Collector, seen: set[tuple[int, int]], maxdepth: int | None) -> None:
    """Every file below `top` with its stamp (``os.scandir``: the details come with the listing).

    Symlinked folders are followed once (a link back up the tree, or to a top-level folder another
    task walks, is not walked again); a broken symlink is kept as a file: its read fails and is
    recorded. A folder that cannot be read is reported (an error row)."""
    try:
        st = os.stat(top)
        seen.add((st.st_dev, st.st_ino))
    except OSError:
        pass
    stack = [(top, 1)]
    while stack:
        d, depth = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as exc:
            out.res.unreadable.append((d, f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"))
            continue
        for e in entries:
            try:
                if e.is_dir():
                    if maxdepth is not None and depth >= maxdepth:
                        continue
                    st = e.stat()
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        stack.append((e.path, depth + 1))
                elif e.is_file():
                    out.add(e.path, stamp_stat(e.stat()))
                elif e.is_symlink():
                    out.add(e.path, 0)
            except OSError as exc:
                out.res.unreadable.append((e.path, f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"))


# ------------------------------------------------------------------------------------ top level
def _top(fs: Any, root: str, local: bool) -> tuple[list[tuple[str, int]], list[str], list[tuple[int, int]]]:
    """Files directly in `root` (with stamps), its sub-folders, and their (device, inode) (local)."""
    files: list[tuple[str, int]] = []
    dirs: list[str] = []
    ids: list[tuple[int, int]] = []
    if local:
        st = os.stat(root)
        ids.append((st.st_dev, st.st_ino))
        with os.scandir(root) as it:
            entries = list(it)
        for e in entries:
            try:
                if e.is_dir():
                    st = e.stat()
                    if (st.st_dev, st.st_ino) not in ids:
                        ids.append((st.st_dev, st.st_ino))
                        dirs.append(e.path)
                elif e.is_file():
                    files.append((e.path, stamp_stat(e.stat())))
                elif e.is_symlink():
                    files.append((e.path, 0))
            except OSError:
                files.append((e.path, 0))
        return files, sorted(dirs), ids
    for info in fs.ls(root, detail=True):
        name = info["name"].rstrip("/")
        if name == root.rstrip("/"):
            continue
        if info.get("type") == "directory":
            dirs.append(name)
        else:
            files.append((name, stamp_info(info)))
    return files, sorted(dirs), ids


def _tasks(source: str, so: dict[str, Any], files, dirs, ids, pattern, maxdepth, root_depth) -> list[PrefixTask]:
    groups = max(1, min(MAX_TASKS, len(dirs)))
    tasks = [PrefixTask(0, source, so, [], files, pattern, maxdepth, root_depth, ids)]
    per = -(-len(dirs) // groups) if dirs else 0
    for g in range(groups if dirs else 0):
        chunk = dirs[g * per:(g + 1) * per]
        if chunk:
            tasks.append(PrefixTask(len(tasks), source, so, chunk, [], pattern, maxdepth, root_depth, ids))
    return tasks


# ---------------------------------------------------------------------------------------- listing
def open_folder(fs: Any, root: str, source: str, storage_options: dict[str, Any], *,
                glob: str | None = None) -> Listing:
    """A folder (or, with `glob`, the files a glob matches): listed when `Listing.prepare` runs."""
    listing = Listing("glob" if glob else "directory")

    def prepare(lst: Listing, runner: Any, store: RunStore | None) -> None:
        _prepare(lst, fs, root, source, storage_options, glob, runner, store)

    listing._prepare = prepare
    return listing


def _glob_parts(fs: Any, pattern: str) -> tuple[str, str, int | None]:
    """fsspec's glob: the folder it walks, the regex a path must match, how deep (None: ``**``)."""
    from fsspec.utils import glob_translate

    path = fs._strip_protocol(pattern)
    idx = min(i if (i := path.find(c)) >= 0 else len(path) for c in "*?[")
    if "/" in path[:idx]:
        cut = path[:idx].rindex("/")
        root, depth = path[:cut + 1], path[cut + 1:].count("/") + 1
    else:
        root, depth = "", path[idx + 1:].count("/") + 1
    return root, glob_translate(path), None if "**" in path else depth


def _glob_base(pattern: str) -> str:
    base = []
    for p in pattern.split("/"):
        if any(c in p for c in "*?["):
            break
        base.append(p)
    return "/".join(base)


def _prepare(listing: Listing, fs: Any, root: str, source: str, so: dict[str, Any], glob: str | None,
             runner: Any, store: RunStore | None) -> None:
    from resize_pipeline.urls import is_local_fs

    local = is_local_fs(fs)
    own_store = store is None
    store = store or RunStore()
    pattern: str | None = None
    maxdepth: int | None = None
    walk_root: str | None
    if glob is not None:
        found, pattern, maxdepth = _glob_parts(fs, glob)
        rel_root = _glob_base(glob).rstrip("/")
        walk_root = found.rstrip("/") or ("/" if found else "")
        if not walk_root or not fs.isdir(walk_root):
            walk_root = None  # nothing to walk: no match
    else:
        walk_root = rel_root = root.rstrip("/") or "/"
    files, dirs, ids = _top(fs, walk_root, local) if walk_root else ([], [], [])
    root_depth = walk_root.count("/") if walk_root else 0
    tasks = _tasks(source, so, files, dirs, ids, pattern, maxdepth, root_depth)
    results: list[PrefixResult] = run_tasks(runner, list_prefixes, [(t, store, rel_root) for t in tasks],
                                            threads=16 if not local else 4)
    unreadable = sorted(u for r in results for u in r.unreadable)
    errors = [list_error(_rel(d, rel_root), fs.unstrip_protocol(d), f"cannot list this folder: {why}")
              for d, why in unreadable]
    images = sum(r.images for r in results)
    tars = sum(r.tars for r in results)
    skipped = sum(r.skipped for r in results)
    others = sum(r.others for r in results)
    runs = [n for r in results for n, _ in r.runs]
    tar_runs = [n for r in results for n, _ in r.tar_runs]
    to_tars = (tars and not images) if glob is None else (tars and not others)
    cleanup = (store.close if own_store else (lambda: store.remove(runs + tar_runs)))  # type: ignore[union-attr]
    if to_tars:
        from resize_pipeline.sources.tars import prepare_tars

        tar_paths = [p for p, _ in merged(store, tar_runs)]
        cleanup()
        prepare_tars(listing, fs, tar_paths, rel_root, source, so, runner, store if not own_store else None,
                     errors=errors)
        return
    for e in errors:
        listing.errors.add(e)
    by_top: dict[str, int] = {}
    for r in results:
        for k, v in r.by_top.items():
            by_top[k] = by_top.get(k, 0) + v
    folder = glob is None and images > 0 and "" not in by_top
    classes = sorted(by_top) if folder else []
    if glob is None:
        listing.kind = "imagefolder" if folder else "directory"
        listing.skipped = skipped - tars if folder else skipped
    else:
        listing.skipped = skipped
    listing.classes = classes
    listing.bound = images
    url_of = _url_maker(fs, rel_root)

    def blocks() -> Iterator[dict[str, list]]:
        index = {c: i for i, c in enumerate(classes)}
        rels: list[str] = []
        urls: list[str] = []
        stamps: list[int] = []
        for path, stamp in merged(store, runs):
            rels.append(_rel(path, rel_root))
            urls.append(url_of(path))
            stamps.append(stamp)
            if len(rels) >= BLOCK:
                yield _block(rels, urls, stamps, index)
                rels, urls, stamps = [], [], []
        if rels:
            yield _block(rels, urls, stamps, index)

    listing.set_blocks(blocks, cleanup)


def _block(rels: list[str], urls: list[str], stamps: list[int], index: dict[str, int]) -> dict[str, list]:
    if not index:
        return raw_block(rels, urls, stamp=stamps)
    names = [r.split("/", 1)[0] for r in rels]
    return raw_block(rels, urls, stamp=stamps, label=[index[n] for n in names], label_name=names)


def _url_maker(fs: Any, root: str) -> Callable[[str], str]:
    """``fs.unstrip_protocol`` as a prefix when it is one (a few microseconds per row saved)."""
    probe = (root.rstrip("/") or "") + "/a b/c.jpg"
    url = fs.unstrip_protocol(probe)
    if url.endswith(probe):
        prefix = url[: len(url) - len(probe)]
        return lambda p: prefix + p
    return fs.unstrip_protocol


def check_root(fs: Any, root: str, source: str) -> None:
    if not fs.exists(root):
        raise SourceError(f"source not found: {source}")


__all__: Sequence[str] = ("open_folder", "list_prefixes", "PrefixTask", "PrefixResult")
