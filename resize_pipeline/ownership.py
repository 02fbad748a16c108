"""What in DEST belongs to this tool, and what it may therefore replace or delete (the names
themselves are `layout`'s).

The tool deletes only what its own records say it wrote: the files listed by ``_stats/*.json``,
shard files named by the ``outputs`` pattern recorded in ``_run.json`` (prefix, digits, formats,
count), its own JSON documents (``_run.json``, ``_manifest.json``, ``_errors.jsonl``,
``_lock.json``, ``_stats/{shard}.json``), the input records of those shards (``_inputs/{shard}.parquet``),
generation records (``_generations/{g:06d}.{kind}.parquet``), the DALI index files ``inspect
--dali-index`` writes beside our tars (``{shard}.idx``, ``{shard}.g{g}.idx``, ``_dali_index.json``),
the listing in ``_listing/`` (parts, runs, index: names only this tool writes) and temporary files
of exactly its temp-name pattern whose final name is one of those. Anything else in DEST is left
alone, with or without ``--overwrite``.

Without ``_run.json`` DEST holds nothing of ours: ``--overwrite`` there is refused when DEST holds
any file, and a plain run is refused when a file is in the way of a name it would write. SOURCE and
DEST may not contain each other (`check_overlap`), so converting a folder into itself is refused
before anything is listed as input or written.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from resize_pipeline.errors import ConfigError, OutputError
from resize_pipeline.layout import (
    DOCUMENTS,
    ERRORS_FILE,
    INPUTS_DIR,
    LISTING_DIR,
    LOCK_FILE,
    MANIFEST_FILE,
    RECORD_DIRS,
    RUN_FILE,
    STATS_DIR,
    TEMP_RE,
    OutputNames,
    is_ours,
    shard_name,
)
from resize_pipeline.sinks.dest import Dest


def _few(names: list[str], n: int = 4) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")


def check_not_in_the_way(dest: Dest, entries: dict[str, str], names: OutputNames | None) -> None:
    """Refuse a folder where this run must write a file (``shard-00000.tar/``, ``_manifest.json/``),
    or a file where it needs its ``_stats/`` or ``_listing/`` folder: never write *into* them.
    (`names` None: the shard names are not known yet, the listing is still to be made.)"""
    blocked = sorted(e for e, kind in entries.items()
                     if kind == "directory" and (e in DOCUMENTS or (names is not None and names.matches(e))))
    if blocked:
        raise OutputError(f"{dest.url} holds a folder named like an output file ({_few(blocked)}); "
                          "move it away or choose another destination")
    for folder in RECORD_DIRS:
        if entries.get(folder) == "file":
            what = "the job's listing" if folder == LISTING_DIR else "its shard records"
            raise OutputError(f"{posixpath.join(dest.url, folder)} is a file where this tool keeps {what}; "
                              "move it away or choose another destination")


def check_foreign(dest: Dest, entries: dict[str, str], names: OutputNames | None, overwrite: bool) -> None:
    """DEST without ``_run.json``: nothing in it is ours. ``--overwrite`` is refused if it holds
    anything (it would have nothing of ours to replace); a plain run if a file is in its way."""
    leftovers = {LOCK_FILE}  # a run killed before it wrote _run.json leaves its lock at most
    known = [names] if names is not None else []
    present = sorted(e for e in entries if e not in leftovers and not (TEMP_RE.match(e) and is_ours(e, known)))
    if overwrite and present:
        raise OutputError(f"--overwrite: {dest.url} holds files this tool did not write (no {RUN_FILE}): "
                          f"{_few(present)}; it only replaces its own output: choose an empty or new destination")
    in_way = [e for e in present if e in (MANIFEST_FILE, ERRORS_FILE, *RECORD_DIRS)
              or (names is not None and names.matches(e))]
    if in_way:
        raise OutputError(f"{dest.url} already holds {_few(in_way)}, which this tool did not write (no {RUN_FILE}); "
                          "choose an empty or new destination")


def clear_dest(dest: Dest, old: dict[str, Any], names: OutputNames | None) -> int:
    """``--overwrite``: remove what the earlier run's records say it wrote, nothing else: the files its
    stats list, shard files of its recorded name pattern, its stats, manifest, error list and temp
    files, and its listing (``_listing/``). ``_run.json`` stays until the caller replaces it (DEST is never
    without its record), the lock is the caller's. Returns the number of files removed."""
    recorded = [n for n in (OutputNames.from_record(old), names) if n is not None]
    stats = {b for b, kind in dest.entries(STATS_DIR).items() if kind == "file" and is_ours(b, recorded, in_stats=True)}
    listed: set[str] = set()
    for base in sorted(stats):
        if TEMP_RE.match(base):
            continue
        try:
            doc = dest.read_json(STATS_DIR, base)
        except (OSError, ValueError):
            continue  # torn: its shard's files are still matched by the recorded name pattern
        files = doc.get("files", []) if isinstance(doc, dict) else []
        listed |= {f["name"] for f in files if isinstance(f, dict) and isinstance(f.get("name"), str)
                   and "/" not in f["name"] and f["name"] not in DOCUMENTS}
    removed = 0
    for base, kind in sorted(dest.entries().items()):
        if kind == "file" and base not in (RUN_FILE, LOCK_FILE) and (base in listed or is_ours(base, recorded)):
            dest.remove(base)
            removed += 1
    for folder in (d for d in RECORD_DIRS if d != STATS_DIR):
        for base, kind in sorted(dest.entries(folder).items()):
            if kind == "file" and is_ours(base, recorded, folder=folder):
                dest.remove(folder, base)
                removed += 1
    for base in sorted(stats):  # the records last: a crash in between leaves them to be redone
        dest.remove(STATS_DIR, base)
        removed += 1
    for folder in RECORD_DIRS:
        if not dest.object_store and dest.entries().get(folder) == "directory" and not dest.entries(folder):
            dest.remove(folder, recursive=True)  # empty: ours (a folder still holding a file of yours stays)
    return removed


def remove_listing(dest: Dest, runs_only: bool = False) -> int:
    """Remove the listing files of ours in ``_listing/`` (with `runs_only`: the sorted runs of a
    parallel listing, and temp files); anything else there stays. Returns the number removed."""
    removed = 0
    for base, kind in sorted(dest.entries(LISTING_DIR).items()):
        if kind != "file" or not is_ours(base, [], folder=LISTING_DIR):
            continue
        if runs_only and not (TEMP_RE.match(base) or base.startswith("run-")):
            continue
        dest.remove(LISTING_DIR, base)
        removed += 1
    return removed


def remove_shards_from(dest: Dest, names: OutputNames, first: int) -> int:
    """Remove the shards numbered `first` and up that `names` covers (files, input records, stats):
    the unpublished shards of an interrupted generation that cannot be resumed as planned. Returns
    the number of files removed."""

    def number(base: str) -> int | None:
        stem = base.split(".", 1)[0]
        digits = stem[len(names.prefix) + 1 :].split("-", 1)[0]
        return int(digits) if digits.isdigit() and shard_name(names.prefix, int(digits), names.width) == \
            f"{names.prefix}-{digits}" else None

    removed = 0
    for folder in (None, INPUTS_DIR, STATS_DIR):  # shard files, then input records, then stats (last)
        where = () if folder is None else (folder,)
        for base, kind in sorted(dest.entries(*where).items()):
            final = base if not TEMP_RE.match(base) else None
            n = number(final) if final is not None else None
            if kind == "file" and n is not None and n >= first and is_ours(base, [names], folder=folder):
                dest.remove(*where, base)
                removed += 1
    return removed


def remove_partials(dest: Dest, names: list[OutputNames]) -> None:
    """Temporary files of a killed run (a worker killed in the middle of a commit): ours only, by
    their exact temp-name pattern and a final name this tool writes."""
    for base, kind in dest.entries().items():
        if kind == "file" and TEMP_RE.match(base) and is_ours(base, names):
            dest.remove(base)
    for folder in RECORD_DIRS:
        for base, kind in dest.entries(folder).items():
            if kind == "file" and TEMP_RE.match(base) and is_ours(base, names, folder=folder):
                dest.remove(folder, base)


# ------------------------------------------------------------------------------ SOURCE vs DEST
def _location(url: str, storage_options: dict[str, Any] | None) -> tuple[type, str]:
    from resize_pipeline.urls import is_local_fs, url_to_fs

    fs, path = url_to_fs(url, storage_options)
    if any(c in path for c in "*?["):  # a glob: what it can match lies below its fixed part
        fixed = []
        for part in path.split("/"):
            if any(c in part for c in "*?["):
                break
            fixed.append(part)
        path = "/".join(fixed) or "/"
    if is_local_fs(fs):
        path = os.path.realpath(path)
    return type(fs), path.rstrip("/") or "/"


def _inside(a: str, b: str) -> bool:
    return a == b or a.startswith(b if b.endswith("/") else b + "/")


def check_overlap(source: str, dest: str, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse SOURCE inside DEST and DEST inside SOURCE (also through symlinks, ``file://`` URLs, ``..``):
    the job would list its own output as input, or its output could overwrite its input."""
    try:
        kind_s, src = _location(source, storage_options)
        kind_d, dst = _location(dest, storage_options)
    except (ImportError, ValueError, OSError):
        return  # cannot be opened: the listing or DEST says why
    if kind_s is not kind_d:
        return
    if _inside(src, dst):
        what = "is DEST itself" if src == dst else "is inside DEST"
        raise ConfigError(f"SOURCE {source} {what} ({dest}): the output would be mixed with its input; "
                          "choose a DEST outside SOURCE")
    if _inside(dst, src):
        raise ConfigError(f"DEST {dest} is inside SOURCE {source}: the output would be listed as input on the "
                          "next run; choose a DEST outside SOURCE")
