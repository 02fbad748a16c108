"""Publishing a generation: its records, the samples it supersedes, then ``_manifest.json``.

After the engine converted a generation's shards, what the plan made conditional is decided:

- a changed input's old sample is superseded only if the new version was written, or recorded as a
  duplicate (not if it failed: the old sample stays until a later update succeeds; not if it was
  restamped: its bytes did not change);
- a duplicate of an input of this same run holds only if that input was written; otherwise it is
  recorded as failed (stage ``dedup``), and both are retried by the next update.

Then ``_generations/{g}.records.parquet`` (what the next diff reads besides the shards' input
records), ``_generations/{g}.superseded.parquet`` (what readers skip: one row per shard file and
sample, with its position in that file) and the manifest, last: the generation becomes visible at
once. The plan files are removed after that.
"""

from __future__ import annotations

import logging
from typing import Any

from resize_pipeline.errors import error_record
from resize_pipeline.generations.records import decode_raw, read_table, superseded_schema
from resize_pipeline.layout import generation_file

log = logging.getLogger(__name__)


def _decide(dest, planned, failed: set[str]) -> tuple[Any, list[dict[str, str]]]:
    """The generation's final records (held schema) and the errors its conditions produced."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ref = planned.files.get("pending")
    if ref is None:
        return None, []
    pending = read_table(dest.fs, dest.path(ref["name"]))
    cond = pending.column("condition")
    final = pending.filter(pc.invert(pc.is_valid(cond)))
    restamped = pc.unique(final.filter(pc.equal(final.column("status"), "written")).column("key"))
    failed_arr = pa.array(sorted(failed), type=pa.large_string())
    prov = pending.filter(pc.fill_null(pc.equal(cond, "provisional"), False))
    lost = pc.fill_null(pc.is_in(prov.column("of_key"), value_set=failed_arr), False)
    prov_failed, prov_ok = prov.filter(lost), prov.filter(pc.invert(lost))
    errors = [error_record(key=k, source=u, stage="dedup", error_type="DuplicateOfFailed",
                           exc=f"its bytes equal those of {o}, which failed in this generation; both are retried by "
                               "the next --update")
              for k, u, o in zip(prov_failed.column("key").to_pylist(), decode_raw(prov_failed.column("url").to_pylist()),
                                 prov_failed.column("of_key").to_pylist(), strict=True)]
    dropped = pa.concat_arrays([failed_arr, restamped.cast(pa.large_string()),
                                prov_failed.column("key").combine_chunks().cast(pa.large_string())])
    repl = pending.filter(pc.fill_null(pc.equal(cond, "replaced"), False))
    repl = repl.filter(pc.invert(pc.is_in(repl.column("key"), value_set=dropped)))
    records = pa.concat_tables([final, prov_ok, repl]).drop_columns(["condition"])
    failing = pending.filter(pc.fill_null(pc.equal(cond, "failing"), False)).column("key").to_pylist()
    return records, errors + _still_failing(dest, set(failing))


def _still_failing(dest, keys: set[str]) -> list[dict[str, str]]:
    """The error records of inputs that still fail as before (not converted again), from the error list
    of the generation that recorded them last."""
    import json

    from resize_pipeline.layout import ERRORS_FILE

    if not keys:
        return []
    try:
        with dest.fs.open(dest.path(ERRORS_FILE), "rb") as fh:
            lines = fh.read().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and e.get("key") in keys and e.get("stage") != "list":
            out.append(e)
            keys.discard(e["key"])
    return out


def _superseded_rows(records: Any, files: dict[str, list[dict[str, Any]]]) -> Any:
    """One row per shard file holding each superseded sample, with its position in that file."""
    import pyarrow as pa
    import pyarrow.compute as pc

    marks = records.filter(pc.equal(records.column("status"), "superseded"))
    out: dict[str, list[Any]] = {c: [] for c in superseded_schema().names}
    for key, shard, sample in zip(marks.column("key").to_pylist(), marks.column("shard").to_pylist(),
                                  marks.column("sample").to_pylist(), strict=True):
        entries = files.get(shard or "")
        if not entries or sample is None or sample < 0:
            log.warning("superseded sample %s (shard %s, #%s) is not in the manifest's shards", key, shard, sample)
            continue
        by_format: dict[str, list[dict[str, Any]]] = {}
        for f in entries:
            by_format.setdefault(str(f.get("format")), []).append(f)
        for parts in by_format.values():
            base = 0
            for f in parts:
                n = int(f.get("samples", 0))
                if sample < base + n:
                    for c, v in zip(out, (f["name"], sample - base, key, shard, sample), strict=True):
                        out[c].append(v)
                    break
                base += n
    return pa.table(out, schema=superseded_schema())


def publish(dest, config, prepared, results: list, *, listing, seconds: float, components: dict[str, Any],
            converted: int) -> dict[str, Any]:
    """Write generation `prepared.planned`'s records and superseded samples, then the manifest."""
    import pyarrow.compute as pc

    from resize_pipeline.generations.records import write_table
    from resize_pipeline.manifest import finalize

    planned, published = prepared.planned, prepared.published
    g = planned.generation
    failed = {e["key"] for r in results for e in r.errors}
    records, extra_errors = _decide(dest, planned, failed)
    refs: dict[str, Any] = {"records": None, "superseded": None}
    superseded = ended_dups = new_dups = 0
    if records is not None and records.num_rows:
        refs["records"] = write_table(dest, records, *generation_file(g, "records"))
        status = records.column("status")
        new_dups = int(pc.sum(pc.equal(status, "duplicate")).as_py() or 0)
        restamped = records.filter(pc.equal(status, "written")).column("key")
        retired = records.filter(pc.equal(status, "retired"))
        ended_dups = int(pc.sum(pc.invert(pc.is_in(retired.column("key"), value_set=restamped))).as_py() or 0)
        rows = _superseded_rows(records, published.files)
        superseded = int(pc.sum(pc.equal(status, "superseded")).as_py() or 0)
        if rows.num_rows:
            refs["superseded"] = dict(write_table(dest, rows, *generation_file(g, "superseded")), samples=superseded)
    written = sum(r.written for r in results)
    failed_n = sum(r.failed for r in results) + len(listing.errors) + len(extra_errors)
    report = planned.report
    entry = {
        "generation": g, "kind": "update", "first_shard": planned.base,
        "shards": [r.name for r in sorted(results, key=lambda r: r.index)],
        "counts": {**{k: report.get(k, 0) for k in ("listed", "new", "retried", "changed", "unchanged", "unchecked",
                                                    "deleted", "requeued", "duplicates", "restamped", "failing")},
                   "converted": len(planned.rows), "written": written, "failed": failed_n, "superseded": superseded},
        "options": planned.options, **refs,
    }
    previous = published.manifest
    if previous is not None and planned.files.get("adopted"):  # a DEST of an earlier version, adopted now
        from resize_pipeline.readers.generations import entries

        first, *rest = entries(previous)
        previous = dict(previous, generations=[dict(first, records=planned.files["adopted"]), *rest])
    c = previous.get("counts", {}) if previous else {}
    live = int(c.get("written", 0)) + written - superseded
    dups = int(c.get("duplicates", 0)) + new_dups - ended_dups
    counts = {"total": live + failed_n + dups, "written": live, "failed": failed_n, "duplicates": dups,
              "superseded": int(c.get("superseded", 0)) + superseded}
    manifest = finalize(dest, config, prepared.run, results, listing_kind=listing.kind, list_errors=listing.errors,
                        classes=listing.classes, skipped=listing.skipped, skipped_members=listing.skipped_members,
                        skipped_examples=listing.skipped_examples, seconds=seconds, components=components,
                        converted=converted, generation=entry, previous=previous, counts=counts,
                        extra_errors=extra_errors)
    for kind in ("plan", "pending"):  # published: a rerun has nothing left to resume
        if planned.files.get(kind):
            dest.remove(*generation_file(g, kind))
    return manifest
