"""Run state in DEST: ``_run.json`` (what is being made), ``_stats/`` (done shards), and the final
``_errors.jsonl`` + ``_manifest.json`` (written last, listing only complete shards). Every write
goes through `sinks.dest.Dest` (atomic, retried); what may be replaced or deleted is `ownership`'s call.

The resume guard: ``_run.json`` records the fingerprint of everything that decides the bytes written,
the listing's digest (keys, URLs, byte ranges, labels) and the inputs' stamps digest (sizes and
modification times or ETags, as the listing saw them). A rerun with another config, another listing
or changed inputs is refused (one line, exit 2) unless ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from resize_pipeline import jsontext
from resize_pipeline.config import digest
from resize_pipeline.errors import OutputError
from resize_pipeline.layout import (
    ERRORS_FILE,
    INPUTS_DIR,
    MANIFEST_FILE,
    RUN_FILE,
    STATS_DIR,
    OutputNames,
    inputs_name,
    stats_name,
)
from resize_pipeline.ownership import check_foreign, check_not_in_the_way, clear_dest
from resize_pipeline.shards import ShardResult, ShardTask
from resize_pipeline.sinks.dest import Dest
from resize_pipeline.sources.base import SourceItem
from resize_pipeline.version import __version__

log = logging.getLogger(__name__)

__all__ = ["DestState", "completed_shards", "finalize",
           "inspect_dest", "listing_digest", "prepare_dest", "run_record"]


def listing_digest(items: Sequence[SourceItem]) -> str:
    """The digest of a listing (`ItemTable.digest` computes the same, column-wise)."""
    digest = getattr(items, "digest", None)
    if isinstance(digest, str) and digest:
        return digest
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.key}\t{it.url}\t{it.offset}\t{it.length}\t{it.row}\t{it.label}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def run_record(config, resolved, items: Sequence[SourceItem]) -> dict[str, Any]:
    """What ``_run.json`` holds: the fingerprint of everything that decides the bytes written (the
    config's output fields and the driver's resolved decisions), the listing's digests, and the
    names of the shard files this run writes (what ``--overwrite`` may later remove)."""
    output = config.output_dict()
    # knobs that cannot change this job's bytes do not block its resume
    for name in resolved.unused_output_options():
        output.pop(name, None)
    output["resolved"] = resolved.output_dict()
    return {
        "fingerprint": digest(output),
        "listing": listing_digest(items),
        "stamps": getattr(items, "stamps_digest", None),
        "inputs": len(items),
        "outputs": OutputNames.of(config, len(items)).to_dict(),
        "config": output,
        "version": __version__,
        "generation": 1,
    }


def diff_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The (dotted) names of the fields that differ between two config records."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{sub}" for sub in diff_fields(a, b)]
        elif a != b:
            out.append(k)
    return out


def _known_to(new: Any, old: Any) -> Any:
    """`new` without the keys that `old` does not have (at any depth)."""
    if not isinstance(new, dict) or not isinstance(old, dict):
        return new
    return {k: _known_to(v, old[k]) for k, v in new.items() if k in old}


def same_output(old: dict[str, Any], run: dict[str, Any]) -> bool:
    """Whether the earlier run record `old` makes the same bytes as `run`.

    Equal fingerprints, or a record of an earlier version that did not yet record some of today's
    choices (a field that version did not have, e.g. the JPEG backend): then the fingerprint of
    today's choices restricted to the fields it recorded must equal its own. A field both know and
    that differs is always a different config."""
    if old.get("fingerprint") == run["fingerprint"]:
        return True
    then = old.get("config")
    if not isinstance(then, dict):
        return False
    if digest(_known_to(run["config"], then)) != old.get("fingerprint"):
        return False
    log.warning("resuming output of version %s, which did not record %s; recorded from now on",
                old.get("version"), ", ".join(diff_fields(then, run["config"])))
    return True


@dataclass(slots=True)
class DestState:
    """What `inspect_dest` found: the earlier run's record (None: DEST holds no output of ours)."""

    old: dict[str, Any] | None
    entries: dict[str, str]


def read_run(dest: Dest, present: bool = True) -> dict[str, Any] | None:
    """``_run.json``, checked: a torn or foreign document is refused in one line (it is the record of
    what this tool owns in DEST, so nothing is assumed without it)."""
    if not present:
        return None
    where = f"{dest.url}/{RUN_FILE}"
    try:
        old = dest.read_json(RUN_FILE)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        reason = "torn or not JSON" if isinstance(exc, ValueError) else str(exc)
        raise OutputError(f"{where} cannot be read ({reason}): it is not a record this tool wrote; "
                          "move it away (with the rest of DEST) or choose another destination") from None
    if not isinstance(old, dict) or not isinstance(old.get("fingerprint"), str):
        shape = f"a JSON {type(old).__name__}" if not isinstance(old, dict) else "an object without a fingerprint"
        raise OutputError(f"{where} holds {shape}, not a run record of this tool; move it away (with the rest "
                          "of DEST) or choose another destination")
    problem = OutputNames.problem(old["outputs"]) if "outputs" in old else None
    if problem is None and "outputs" not in old and OutputNames.from_record(old) is None:
        problem = "no outputs, and a config that does not give them"
    if problem is not None:
        raise OutputError(f"{where} holds an invalid record ({problem}), not a run record of this tool; move it "
                          "away (with the rest of DEST) or choose another destination")
    return old


def inspect_dest(dest: Dest, config, run: dict[str, Any]) -> DestState:
    """Everything that decides whether this run may write DEST, read-only: folders in the way of its
    files, files that are not ours in the way, an unreadable ``_run.json``, and (unless
    ``--overwrite``) an earlier run with another config, listing or changed inputs."""
    entries = dest.entries()
    names = OutputNames(**{**run["outputs"], "exts": tuple(run["outputs"]["exts"])})
    check_not_in_the_way(dest, entries, names)
    old = read_run(dest, entries.get(RUN_FILE) == "file")
    if old is None:
        check_foreign(dest, entries, names, config.overwrite)
        return DestState(None, entries)
    if config.overwrite:
        return DestState(old, entries)
    if isinstance(old.get("update"), dict) or int(old.get("generation", 1)) > 1:
        raise OutputError(
            f"{dest.url} is grown by --update (generation {old.get('generation', 1)}): rerun with --update to add "
            "what is new in SOURCE, or --overwrite to start over"
        )
    if not same_output(old, run):
        fields = ", ".join(diff_fields(old.get("config", {}) if isinstance(old.get("config"), dict) else {},
                                 run["config"])) or "config"
        raise OutputError(
            f"{dest.url} holds output made with a different config (differs in: {fields}); "
            "use --overwrite to replace it, or another destination"
        )
    if old.get("listing") != run["listing"]:
        raise OutputError(
            f"{dest.url} holds output of a different input listing ({old.get('inputs')} inputs then, "
            f"{run['inputs']} now); use --overwrite to replace it, or another destination"
        )
    if old.get("stamps") is not None and old.get("stamps") != run["stamps"]:
        raise OutputError(
            f"inputs of {config.source} changed since {dest.url} was started (same names, other sizes or "
            "modification times): resuming would mix old and new images; use --overwrite to convert them "
            "again, or restore the inputs"
        )
    if old.get("stamps") is None and run["stamps"] is not None:
        log.warning("%s was started by a version that did not record the inputs' sizes and times: changes "
                    "to the inputs since then cannot be detected", dest.url)
    return DestState(old, entries)


def prepare_dest(dest: Dest, config, run: dict[str, Any], state: DestState) -> None:
    """Write this run's record (after `inspect_dest`): with ``--overwrite``, first remove what the
    earlier run's records say it wrote."""
    names = OutputNames(**{**run["outputs"], "exts": tuple(run["outputs"]["exts"])})
    if config.overwrite and state.old is not None:
        n = clear_dest(dest, state.old, names)
        log.info("--overwrite: removed %d file(s) of the earlier run in %s", n, dest.url)
    dest.write_json(run, RUN_FILE)  # first: from here on DEST is ours (and says what it will hold)
    dest.makedirs(STATS_DIR)
    dest.makedirs(INPUTS_DIR)


def completed_shards(dest: Dest, tasks: Sequence[ShardTask]) -> dict[int, ShardResult]:
    """Shards whose stats exist and whose files are all present (resume skips them)."""
    have = set(dest.ls(STATS_DIR))
    if not have:
        return {}
    present = set(dest.ls())
    records = set(dest.ls(INPUTS_DIR))
    done: dict[int, ShardResult] = {}
    for t in tasks:
        if f"{t.name}.json" not in have:
            continue
        try:
            res = ShardResult.from_dict(dest.read_json(*stats_name(t.name)))
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):  # torn: redo it
            continue
        if res.total == t.size and all(isinstance(f, dict) and f.get("name") in present for f in res.files) \
                and (res.record is None or inputs_name(t.name)[1] in records):
            done[t.index] = res
    return done


def finalize(
    dest: Dest,
    config,
    run: dict[str, Any],
    results: Sequence[ShardResult],
    *,
    listing_kind: str,
    list_errors: Sequence[dict[str, str]] = (),
    classes: Sequence[str],
    skipped: int,
    skipped_members: dict[str, int] | None = None,
    skipped_examples: Sequence[dict[str, str]] = (),
    seconds: float,
    components: dict[str, Any],
    converted: int | None = None,
    generation: dict[str, Any] | None = None,
    previous: dict[str, Any] | None = None,
    counts: dict[str, Any] | None = None,
    extra_errors: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """Write ``_errors.jsonl`` then ``_manifest.json`` (last) from the per-shard results.

    A plain run is generation 1. An update (`generation`: its entry, `previous`: the manifest it
    grows, `counts`: DEST's counts after it) lists the previous generations' shards and its own."""
    results = sorted(results, key=lambda r: r.index)
    errors = list(list_errors) + [e for r in results for e in r.errors] + list(extra_errors)
    dest.write_text("".join(jsontext.dumps(e, sort_keys=True) + "\n" for e in errors), ERRORS_FILE)
    total = sum(r.total for r in results) + len(list_errors)
    written = sum(r.written for r in results)
    failed = sum(r.failed for r in results) + len(list_errors)
    by_stage: dict[str, int] = {}
    for e in errors:
        by_stage[e["stage"]] = by_stage.get(e["stage"], 0) + 1
    paths: dict[str, dict[str, int]] = {}  # how the samples went where a stage had a choice
    for r in results:
        for column, hows in r.paths.items():
            into = paths.setdefault(column, {})
            for how, k in hows.items():
                into[how] = into.get(how, 0) + k
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    g = int(generation["generation"]) if generation else 1
    shards = [dict(f, shard=r.name, index=r.index, generation=g) for r in results for f in r.files]
    stats = [dict({"name": r.name, "index": r.index, "total": r.total, "written": r.written, "failed": r.failed,
                   "generation": g}, **({"inputs": r.record} if r.record is not None else {})) for r in results]
    if generation is None:
        generation = {"generation": 1, "kind": "full", "shards": [r.name for r in results],
                      "counts": {"listed": total, "new": total - len(list_errors), "written": written,
                                 "failed": failed}}
    if previous is not None:
        shards = [dict(f, generation=f.get("generation", 1)) for f in previous.get("shards", [])] + shards
        stats = [dict(s, generation=s.get("generation", 1)) for s in previous.get("shard_stats", [])] + stats
    entry = dict(generation, created=created, fingerprint=run["fingerprint"], seconds=round(seconds, 3))
    previous_entries = []
    if previous is not None:
        from resize_pipeline.readers.generations import entries as generation_entries

        previous_entries = generation_entries(previous)
    manifest = {
        "tool": "resize_pipeline",
        "version": __version__,
        "created": created,
        "source": config.source,
        "source_kind": listing_kind,
        "classes": list(classes),
        "counts": dict(counts or {"total": total, "written": written, "failed": failed, "duplicates": 0,
                                  "superseded": 0},
                       failed_by_stage=by_stage, skipped_non_images=skipped,
                       **({"skipped_tar_members": dict(skipped_members), "skipped_examples": list(skipped_examples)}
                          if skipped_members else {})),
        "shards": shards,
        "shard_stats": stats,
        "paths": {k: dict(sorted(v.items())) for k, v in sorted(paths.items())},
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
        "generation": g,
        "generations": previous_entries + [entry],
    }
    dest.write_json(manifest, MANIFEST_FILE)
    return manifest
