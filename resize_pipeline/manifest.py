"""Run state in DST: ``_run.json`` (what is being made), ``_stats/`` (done shards), and the final
``_errors.jsonl`` + ``_manifest.json`` (written last, listing only complete shards).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from collections.abc import Sequence
from typing import Any

from resize_pipeline import __version__
from resize_pipeline.errors import OutputError
from resize_pipeline.shards import STATS_DIR, ShardResult, ShardTask, stats_path, write_json_atomic
from resize_pipeline.sources.base import SourceItem

log = logging.getLogger(__name__)

RUN_FILE = "_run.json"
MANIFEST_FILE = "_manifest.json"
ERRORS_FILE = "_errors.jsonl"


def listing_digest(items: Sequence[SourceItem]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.key}\t{it.url}\t{it.offset}\t{it.length}\t{it.row}\t{it.label}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def prepare_dest(fs, root: str, config, items: Sequence[SourceItem]) -> dict[str, Any]:
    """Create DST, refuse incompatible earlier output (unless ``overwrite``), record the run."""
    run = {
        "fingerprint": config.fingerprint(),
        "listing": listing_digest(items),
        "inputs": len(items),
        "config": config.output_dict(),
        "version": __version__,
    }
    path = posixpath.join(root, RUN_FILE)
    fs.invalidate_cache(root)
    if fs.exists(path):
        with fs.open(path, "r", encoding="utf-8") as fh:
            old = json.load(fh)
        if config.overwrite:
            clear_dest(fs, root)
        elif old.get("fingerprint") != run["fingerprint"]:
            fields = ", ".join(_diff(old.get("config", {}), run["config"])) or "config"
            raise OutputError(
                f"{root} holds output made with a different config (differs in: {fields}); "
                "use --overwrite to replace it, or another destination"
            )
        elif old.get("listing") != run["listing"]:
            raise OutputError(
                f"{root} holds output of a different input listing ({old.get('inputs')} inputs then, "
                f"{len(items)} now); use --overwrite to replace it, or another destination"
            )
    elif config.overwrite:
        clear_dest(fs, root)
    fs.makedirs(posixpath.join(root, STATS_DIR), exist_ok=True)
    write_json_atomic(fs, path, run)
    return run


def clear_dest(fs, root: str) -> None:
    """Remove what earlier runs of this tool wrote (shards, stats, manifest), nothing else."""
    if not fs.exists(root):
        return
    for p in fs.ls(root, detail=False):
        base = posixpath.basename(p.rstrip("/"))
        if base in (RUN_FILE, MANIFEST_FILE, ERRORS_FILE, STATS_DIR) or base.endswith((".tar", ".parquet")) or ".partial" in base:
            fs.rm(p, recursive=True)


def completed_shards(fs, root: str, tasks: Sequence[ShardTask]) -> dict[int, ShardResult]:
    """Shards whose stats exist and whose files are all present (resume skips them)."""
    stats_dir = posixpath.join(root, STATS_DIR)
    fs.invalidate_cache(stats_dir)  # object-store listings are cached per process: resume needs fresh ones
    if not fs.exists(stats_dir):
        return {}
    present = {posixpath.basename(p) for p in fs.ls(root, detail=False)}
    have = {posixpath.basename(p) for p in fs.ls(stats_dir, detail=False)}
    done: dict[int, ShardResult] = {}
    for t in tasks:
        if f"{t.name}.json" not in have:
            continue
        try:
            with fs.open(stats_path(root, t.name), "r", encoding="utf-8") as fh:
                res = ShardResult.from_dict(json.load(fh))
        except (FileNotFoundError, ValueError, KeyError):  # gone meanwhile, or torn: redo the shard
            continue
        if res.total == len(t.items) and all(f["name"] in present for f in res.files):
            done[t.index] = res
    return done


def remove_partials(fs, root: str) -> None:
    """Temporary files of a killed run (local filesystems only ever have these): shard parts in DST and
    JSON documents (``_run.json``, ``_manifest.json``, ``_stats/*.json``) written via a temp name."""
    stats_dir = posixpath.join(root, STATS_DIR)
    for d in (root, stats_dir):
        if d == stats_dir and not fs.exists(stats_dir):
            continue
        for p in fs.ls(d, detail=False):
            if ".partial" in posixpath.basename(p):
                fs.rm(p)


def finalize(
    fs,
    root: str,
    config,
    run: dict[str, Any],
    results: Sequence[ShardResult],
    *,
    listing_kind: str,
    classes: Sequence[str],
    skipped: int,
    seconds: float,
    components: dict[str, Any],
) -> dict[str, Any]:
    """Write ``_errors.jsonl`` then ``_manifest.json`` (last) from the per-shard results."""
    results = sorted(results, key=lambda r: r.index)
    errors = [e for r in results for e in r.errors]
    text = "".join(json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n" for e in errors)
    with fs.open(posixpath.join(root, ERRORS_FILE), "w", encoding="utf-8") as fh:
        fh.write(text)
    total = sum(r.total for r in results)
    written = sum(r.written for r in results)
    failed = sum(r.failed for r in results)
    by_stage: dict[str, int] = {}
    for e in errors:
        by_stage[e["stage"]] = by_stage.get(e["stage"], 0) + 1
    manifest = {
        "tool": "resize_pipeline",
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": config.source,
        "source_kind": listing_kind,
        "classes": list(classes),
        "counts": {"total": total, "written": written, "failed": failed, "failed_by_stage": by_stage,
                   "skipped_non_images": skipped},
        "shards": [dict(f, shard=r.name, index=r.index) for r in results for f in r.files],
        "shard_stats": [
            {"name": r.name, "index": r.index, "total": r.total, "written": r.written, "failed": r.failed}
            for r in results
        ],
        "formats": list(config.formats),
        "encode": config.encode,
        "size": list(config.size),
        "mode": config.mode,
        "fingerprint": run["fingerprint"],
        "config": config.to_dict(),
        "components": components,
        "run": {"seconds": round(seconds, 3), "images_per_second": round(total / seconds, 2) if seconds else None},
        "errors_file": ERRORS_FILE,
    }
    write_json_atomic(fs, posixpath.join(root, MANIFEST_FILE), manifest)
    return manifest
