"""Run state in DEST: ``_run.json`` (what is being made), ``_stats/`` (done shards), and the final
``_errors.jsonl`` + ``_manifest.json`` (written last, listing only complete shards). Every write
goes through `sinks.dest.Dest` (atomic, retried).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from resize_pipeline.errors import OutputError
from resize_pipeline.shards import STATS_DIR, ShardResult, ShardTask, stats_name
from resize_pipeline.sinks.dest import TEMP_RE, Dest
from resize_pipeline.sources.base import SourceItem
from resize_pipeline.version import __version__

log = logging.getLogger(__name__)

RUN_FILE = "_run.json"
MANIFEST_FILE = "_manifest.json"
ERRORS_FILE = "_errors.jsonl"


def listing_digest(items: Sequence[SourceItem]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.key}\t{it.url}\t{it.offset}\t{it.length}\t{it.row}\t{it.label}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def run_record(config, resolved, items: Sequence[SourceItem]) -> dict[str, Any]:
    """What ``_run.json`` holds: the fingerprint of everything that decides the bytes written (the
    config's output fields and the driver's resolved decisions), and the listing's digest."""
    output = config.output_dict()
    # knobs that cannot change this job's bytes do not block its resume
    if resolved.precision is None:
        output.pop("precision", None)
        output.pop("compile", None)
    if resolved.decoder != "dali-mixed":
        output.pop("hw_decoder_load", None)
    output["resolved"] = resolved.output_dict()
    return {
        "fingerprint": hashlib.sha256(json.dumps(output, sort_keys=True).encode()).hexdigest()[:16],
        "listing": listing_digest(items),
        "inputs": len(items),
        "config": output,
        "version": __version__,
    }


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{sub}" for sub in _diff(a, b)]
        elif a != b:
            out.append(k)
    return out


def prepare_dest(dest: Dest, config, resolved, items: Sequence[SourceItem]) -> dict[str, Any]:
    """Create DEST, refuse incompatible earlier output (unless ``overwrite``), record the run."""
    run = run_record(config, resolved, items)
    if dest.exists(RUN_FILE):
        try:
            old = dest.read_json(RUN_FILE)
        except ValueError:
            old = {}
        if config.overwrite:
            clear_dest(dest)
        elif not isinstance(old, dict) or old.get("fingerprint") != run["fingerprint"]:
            fields = ", ".join(_diff(old.get("config", {}) if isinstance(old, dict) else {}, run["config"])) or "config"
            raise OutputError(
                f"{dest.url} holds output made with a different config (differs in: {fields}); "
                "use --overwrite to replace it, or another destination"
            )
        elif old.get("listing") != run["listing"]:
            raise OutputError(
                f"{dest.url} holds output of a different input listing ({old.get('inputs')} inputs then, "
                f"{len(items)} now); use --overwrite to replace it, or another destination"
            )
    elif config.overwrite:
        clear_dest(dest)
    dest.makedirs(STATS_DIR)
    dest.write_json(run, RUN_FILE)
    return run


def clear_dest(dest: Dest) -> None:
    """Remove what earlier runs of this tool wrote (shards, stats, manifest), nothing else."""
    if not dest.exists():
        return
    for base in dest.ls():
        if base in (RUN_FILE, MANIFEST_FILE, ERRORS_FILE, STATS_DIR) or base.endswith((".tar", ".parquet")) \
                or TEMP_RE.match(base):
            dest.remove(base, recursive=True)


def completed_shards(dest: Dest, tasks: Sequence[ShardTask]) -> dict[int, ShardResult]:
    """Shards whose stats exist and whose files are all present (resume skips them)."""
    have = set(dest.ls(STATS_DIR))
    if not have:
        return {}
    present = set(dest.ls())
    done: dict[int, ShardResult] = {}
    for t in tasks:
        if f"{t.name}.json" not in have:
            continue
        try:
            res = ShardResult.from_dict(dest.read_json(*stats_name(t.name)))
        except (FileNotFoundError, ValueError, KeyError, TypeError):  # gone meanwhile, or torn: redo it
            continue
        if res.total == len(t.items) and all(f["name"] in present for f in res.files):
            done[t.index] = res
    return done


def remove_partials(dest: Dest) -> None:
    """Temporary files of a killed run (a worker killed in the middle of a commit): ours only,
    recognised by their exact temp-name pattern."""
    for sub in ((), (STATS_DIR,)):
        for base in dest.ls(*sub):
            if TEMP_RE.match(base):
                dest.remove(*sub, base)


def finalize(
    dest: Dest,
    config,
    run: dict[str, Any],
    results: Sequence[ShardResult],
    *,
    listing_kind: str,
    classes: Sequence[str],
    skipped: int,
    seconds: float,
    components: dict[str, Any],
    converted: int | None = None,
) -> dict[str, Any]:
    """Write ``_errors.jsonl`` then ``_manifest.json`` (last) from the per-shard results."""
    results = sorted(results, key=lambda r: r.index)
    errors = [e for r in results for e in r.errors]
    dest.write_text("".join(json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n" for e in errors), ERRORS_FILE)
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
        "run": {"seconds": round(seconds, 3), "converted": total if converted is None else converted,
                "images_per_second": round((total if converted is None else converted) / seconds, 2)
                if seconds else None},
        "errors_file": ERRORS_FILE,
    }
    dest.write_json(manifest, MANIFEST_FILE)
    return manifest
