"""Run state in DEST: ``_run.json`` (what is being made), ``_stats/`` (done shards), and the final
``_errors.jsonl`` + ``_manifest.json`` (written last, listing only complete shards). Every write
goes through `sinks.dest.Dest` (atomic, retried); what may be replaced or deleted is `ownership`'s call.

The resume guard: ``_run.json`` records the fingerprint of everything that decides the bytes written,
and the listing's extent (its inputs' bound, its kind, the stamps of the files it comes from, e.g. a
manifest's own); the listing itself is in DEST's listing parts, each with the digests of its rows and
of its inputs' stamps (sizes and modification times or ETags, as the listing saw them), checked part
by part on a rerun (`planning.Planner`). A rerun with another config, another listing or changed
inputs is refused (one line, exit 2) unless ``--overwrite``. A record of release <= 0.2 (the listing's
digests in ``_run.json``) is checked against the whole listing before anything is converted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from resize_pipeline.config import digest
from resize_pipeline.errorlog import ShardErrors, line
from resize_pipeline.errors import OutputError
from resize_pipeline.layout import ERRORS_FILE, INPUTS_DIR, MANIFEST_FILE, RUN_FILE, STATS_DIR, OutputNames
from resize_pipeline.ownership import check_foreign, check_not_in_the_way, clear_dest
from resize_pipeline.shards import ShardResult
from resize_pipeline.sinks.dest import Dest
from resize_pipeline.version import __version__

log = logging.getLogger(__name__)

__all__ = ["DestState", "finalize", "inspect_dest", "prepare_dest", "run_record"]


def run_record(config, resolved, listing: Any = None) -> dict[str, Any]:
    """What ``_run.json`` holds: the fingerprint of everything that decides the bytes written (the
    config's output fields and the driver's resolved decisions), the listing's extent (its inputs'
    bound, kind, the stamps of the files it comes from) and the names of the shard files this run
    writes (what ``--overwrite`` may later remove). Without a listing (a folder about to be listed
    in parallel on Ray, after DEST is locked) the last two are None until it is listed."""
    output = config.output_dict()
    # knobs that cannot change this job's bytes do not block its resume
    for name in resolved.unused_output_options():
        output.pop(name, None)
    output["resolved"] = resolved.output_dict()
    known = listing is not None and listing.prepared
    return {
        "fingerprint": digest(output),
        "listing": {"inputs": listing.bound, "kind": listing.kind, "source": list(listing.source_stamps)}
        if known else None,
        "outputs": OutputNames.of(config, listing.bound).to_dict() if known else None,
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
    """What `inspect_dest` found: the earlier run's record (None: DEST holds no output of ours);
    `legacy`: it was written by a release that recorded the listing's digests in ``_run.json``."""

    old: dict[str, Any] | None
    entries: dict[str, str]
    legacy: bool = False


def names_of(run: dict[str, Any]) -> OutputNames | None:
    out = run.get("outputs")
    return OutputNames(**{**out, "exts": tuple(out["exts"])}) if isinstance(out, dict) else None


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
    names = names_of(run)
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
    if isinstance(old.get("listing"), str):  # release <= 0.2: checked against the whole listing first
        return DestState(old, entries, legacy=True)
    check_listing(dest, config, old, run)
    return DestState(old, entries)


def check_listing(dest: Dest, config, old: dict[str, Any], run: dict[str, Any]) -> None:
    """The listing's extent against the earlier run's (when both are known)."""
    a, b = old.get("listing"), run.get("listing")
    if not isinstance(a, dict) or not isinstance(b, dict) or a == b:
        return
    if {k: v for k, v in a.items() if k != "source"} == {k: v for k, v in b.items() if k != "source"}:
        raise OutputError(
            f"inputs of {config.source} changed since {dest.url} was started (the manifest itself changed): "
            "resuming would mix old and new images; use --overwrite to convert them again, or restore the inputs")
    raise OutputError(
        f"{dest.url} holds output of a different input listing ({a.get('inputs')} inputs then, "
        f"{b.get('inputs')} now); use --overwrite to replace it, or another destination")


def check_legacy(dest: Dest, config, old: dict[str, Any], digest_: str, stamps: str | None, inputs: int) -> None:
    """A record of release <= 0.2 against the whole listing's digests (`planning.Outcome`)."""
    if old.get("listing") != digest_:
        raise OutputError(
            f"{dest.url} holds output of a different input listing ({old.get('inputs')} inputs then, "
            f"{inputs} now); use --overwrite to replace it, or another destination")
    if old.get("stamps") is not None and old.get("stamps") != stamps:
        raise OutputError(
            f"inputs of {config.source} changed since {dest.url} was started (same names, other sizes or "
            "modification times): resuming would mix old and new images; use --overwrite to convert them "
            "again, or restore the inputs")
    if old.get("stamps") is None:
        log.warning("%s was started by a version that did not record the inputs' sizes and times: changes "
                    "to the inputs since then cannot be detected", dest.url)


def prepare_dest(dest: Dest, config, run: dict[str, Any], state: DestState) -> None:
    """Write this run's record (after `inspect_dest`): with ``--overwrite``, first remove what the
    earlier run's records say it wrote. A record whose listing is not known yet (`run_record`) does
    not replace an earlier run's complete one (the rerun of that job lists, then rewrites it)."""
    names = names_of(run)
    if config.overwrite and state.old is not None:
        n = clear_dest(dest, state.old, names)
        log.info("--overwrite: removed %d file(s) of the earlier run in %s", n, dest.url)
    if run["listing"] is not None or state.old is None or config.overwrite or state.legacy:
        dest.write_json(run, RUN_FILE)  # first: from here on DEST is ours (and says what it will hold)
    dest.makedirs(STATS_DIR)
    dest.makedirs(INPUTS_DIR)


def finalize(
    dest: Dest,
    config,
    run: dict[str, Any],
    results: Sequence[ShardResult],
    *,
    listing_kind: str,
    list_errors: Any = (),
    shard_errors: Any = None,
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
    """Write ``_errors.jsonl`` (the listing's error rows, then each shard's failed inputs in shard
    order, streamed from `errorlog` spools, then `extra_errors`) then ``_manifest.json`` (last) from
    the per-shard results. `shard_errors` None: the failed inputs are the results' own ``errors``.

    A plain run is generation 1. An update (`generation`: its entry, `previous`: the manifest it
    grows, `counts`: DEST's counts after it) lists the previous generations' shards and its own."""
    results = sorted(results, key=lambda r: r.index)
    if shard_errors is None:
        shard_errors = ShardErrors()
        for r in results:
            shard_errors.put(r.index, r.errors)
    by_stage: dict[str, int] = {}
    with Dest.spool() as spool:
        for src in (list_errors, shard_errors):
            if hasattr(src, "copy_to"):
                src.copy_to(spool)
                for stage, n in src.by_stage.items():
                    by_stage[stage] = by_stage.get(stage, 0) + n
            else:
                for e in src:
                    spool.write(line(e))
                    by_stage[e["stage"]] = by_stage.get(e["stage"], 0) + 1
        for e in extra_errors:
            spool.write(line(e))
            by_stage[e["stage"]] = by_stage.get(e["stage"], 0) + 1
        dest.commit(spool, ERRORS_FILE)
    total = sum(r.total for r in results) + len(list_errors)
    written = sum(r.written for r in results)
    failed = sum(r.failed for r in results) + len(list_errors)
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
