"""``convert --update``: plan the next generation of DEST, or resume the one a crash interrupted.

    under the DEST lock:
      read _run.json and the published manifest; refuse another config (one line)
      an interrupted update?  -> resume its recorded plan (the same rows, the same shards)
      else: held records + SOURCE's listing -> `diff` -> [refuse changed inputs]
            -> [--dedup: hash the rows to convert -> `dedup`]
            -> _generations/{g}.plan.parquet (rows) + {g}.pending.parquet (records), then _run.json
    the engine converts the plan's rows into shards numbered from the first free index
    -> `publish`: records, superseded samples, _manifest.json (generation g becomes visible)

`prepare` is the integration point: it takes the listing as batches (`records.listed_batches`) and
the held records, and returns the rows to convert with the generation's report (`Planned`); the
caller plans shards from ``Planned.base`` and runs them like any other shards.

A DEST written before generations existed is adopted on its first update: its shards' keys are read
back from the shard files, matched to SOURCE's rows, and recorded (``_generations/000001.records``)
with their stamps when the earlier run's listing and stamps digests prove nothing changed since
(else with stamp 0: kept, reported as unchecked).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.errors import OutputError
from resize_pipeline.generations.held import Published, held_batches, read_published
from resize_pipeline.generations.records import Spool, held_schema, plan_schema, read_table, to_columns
from resize_pipeline.layout import (
    GENERATION_KINDS,
    GENERATIONS_DIR,
    RUN_FILE,
    OutputNames,
    generation_file,
    shard_width,
)

log = logging.getLogger(__name__)

#: the options that decide what a generation converts (recorded with it)
OPTIONS = ("on_change", "prune_deleted", "dedup")
#: inputs hashed at once for ``--dedup`` (each read on its own thread)
HASH_THREADS = 16


def options_of(config) -> dict[str, Any]:
    return {k: getattr(config, k) for k in OPTIONS}


class PlanRows:
    """The rows a generation converts (an Arrow table in `plan_schema`), as shard tasks take them:
    ``len``, ``columns(a, b)`` and slices of `SourceItem`s."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.n = table.num_rows

    def __len__(self) -> int:
        return self.n

    def columns(self, a: int, b: int) -> dict[str, list]:
        a, b = max(0, a), min(self.n, b)
        return to_columns(self.table.slice(a, max(0, b - a)).combine_chunks().to_batches()[0]) if b > a else \
            {c: [] for c in plan_schema().names}

    def __getitem__(self, i: Any) -> Any:
        from resize_pipeline.sources.base import SourceItem

        if isinstance(i, slice):
            a, b, step = i.indices(self.n)
            cols = self.columns(a, b)
            items = [SourceItem(*row) for row in zip(*cols.values(), strict=True)]
            return items if step == 1 else items[::step]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self[i : i + 1][0]


@dataclass
class Planned:
    """A generation about to be converted (`prepare`)."""

    generation: int
    base: int  # index of its first shard
    width: int  # digits of shard numbers (the first generation's)
    rows: PlanRows
    report: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)  # plan, pending, adopted: file records
    resumed: bool = False
    #: nothing to convert and nothing to record: the update writes nothing
    empty: bool = False
    #: the plan's files, built locally, committed to DEST after the run record (`prepare`)
    spools: dict[str, Spool] = field(default_factory=dict)


@dataclass
class Prepared:
    """What `prepare` decided: ``convert`` (`planned` is set), ``nothing`` new, or ``plain``: an
    interrupted first conversion without ``--update`` of the same listing (resume it as it was)."""

    kind: str
    published: Published
    old: dict[str, Any] | None
    planned: Planned | None = None
    run: dict[str, Any] | None = None
    names: list[OutputNames] = field(default_factory=list)


def config_refusal(dest, old: dict[str, Any], run: dict[str, Any]) -> OutputError:
    from resize_pipeline.manifest import diff_fields

    fields = ", ".join(diff_fields(old.get("config", {}) if isinstance(old.get("config"), dict) else {},
                                   run["config"])) or "config"
    return OutputError(f"{dest.url} was converted with another config (differs in: {fields}): one dataset never "
                       "mixes geometries or encodings; convert into another DEST, or --overwrite to start over")


def changed_refusal(report: dict[str, int], examples: dict[str, list[str]]) -> OutputError:
    n, shown = report["changed"], examples.get("changed", [])
    names = ", ".join(shown) + (f" (+{n - len(shown)} more)" if n > len(shown) else "")
    return OutputError(f"{n} input(s) changed since they were converted: {names}; --on-change skip keeps their "
                       "old samples, --on-change replace converts them again (the old samples are superseded)")


def prepare(dest, config, run: dict[str, Any], listing, *, dry_run: bool = False,
            workdir: str | None = None) -> Prepared:
    """Decide and record what this ``--update`` does (see the module docstring). `run` is this job's
    run record (`manifest.run_record`); with `dry_run` nothing is written."""
    from resize_pipeline.manifest import read_run, same_output
    from resize_pipeline.ownership import check_foreign, check_not_in_the_way, remove_shards_from

    entries = dest.entries()
    old = read_run(dest, entries.get(RUN_FILE) == "file")
    published = read_published(dest)
    provisional = OutputNames(**{**run["outputs"], "exts": tuple(run["outputs"]["exts"])})
    recorded = OutputNames.from_record(old) if old is not None else None
    check_not_in_the_way(dest, entries, recorded or provisional)
    if old is None:
        check_foreign(dest, entries, provisional, False)
    elif not same_output(old, run):
        raise config_refusal(dest, old, run)
    names = [n for n in (recorded,) if n is not None]
    update = old.get("update") if old is not None else None
    if old is not None and int(old.get("generation", 1)) == published.generation + 1:  # interrupted
        if isinstance(update, dict):
            planned = _resume(dest, config, old, published)
            if planned is not None:
                return Prepared("convert", published, old, planned, old, names)
        elif published.generation == 0 and old.get("listing") in (run["listing"], run.get("extent")) and \
                old.get("dedup") == config.dedup and not dry_run:
            return Prepared("plain", published, old, names=names)
        if not dry_run and recorded is not None:  # its unpublished shards were planned from other rows
            n = remove_shards_from(dest, recorded, published.next_index)
            log.warning("the interrupted generation %s of %s could not be resumed as planned: its %d unpublished "
                        "file(s) were removed; planning it again", old.get("generation"), dest.url, n)
    _check_classes(dest, published, listing)
    if not dry_run:
        _remove_leftover_plans(dest, published)
    same = _same_as_last(config, run, old, published)
    if same is not None:
        return Prepared("nothing", published, old, same, names=names)
    planned = _plan(dest, config, run, listing, published, old, dry_run=dry_run, workdir=workdir)
    if planned.empty:
        return Prepared("nothing", published, old, planned, names=names)
    k = -(-len(planned.rows) // config.samples_per_shard)
    new = dict(run, generation=planned.generation)
    new["outputs"] = OutputNames(config.shard_prefix, planned.width, planned.base + k, provisional.exts,
                                 provisional.parts).to_dict()
    new["update"] = {"base": planned.base, "shards": k, "rows": len(planned.rows), "report": planned.report,
                     "examples": planned.examples, "options": planned.options, "files": planned.files}
    if not dry_run:
        from resize_pipeline.layout import INPUTS_DIR, STATS_DIR

        # the record first (from here on DEST is ours and names its plan: a crash before the plan's
        # files are in place is planned again), then the plan's files, then the shards
        dest.write_json(new, RUN_FILE)
        for kind, spool in planned.spools.items():
            spool.commit(dest, *generation_file(planned.generation, kind))
        dest.makedirs(STATS_DIR)
        dest.makedirs(INPUTS_DIR)
    for spool in planned.spools.values():
        spool.drop()
    planned.spools = {}
    return Prepared("convert", published, old, planned, new, names + [OutputNames.from_record(new)])  # type: ignore[list-item]


#: the stages whose failures are not tried again while their input is unchanged (`diff.DETERMINISTIC`)
_STAY_FAILED = ("decode", "resize", "encode")


def _same_as_last(config, run: dict[str, Any], old: dict[str, Any] | None, published: Published) -> Planned | None:
    """Nothing new without comparing a single row: SOURCE lists exactly the inputs, with exactly the
    stamps, that the last generation was made from (the listing and stamps digests of its run
    record), under the same options, and no failure of it would be retried (all of them are of a
    stage that fails the same way again). None when that cannot be told so cheaply."""
    if old is None or not published.generation or int(old.get("generation", 1)) != published.generation:
        return None
    recorded = (old.get("update") or {}).get("options", {"on_change": "refuse", "prune_deleted": False,
                                                        "dedup": None})
    by_stage = (published.manifest or {}).get("counts", {}).get("failed_by_stage", {})
    if run.get("stamps") is None or old.get("listing") != run["listing"] or old.get("stamps") != run["stamps"] \
            or recorded != options_of(config) or any(s not in _STAY_FAILED for s in by_stage if s != "list"):
        return None
    last = published.entries[-1].get("counts", {})
    report = {"listed": int(run["inputs"]), "new": 0, "changed": 0, "duplicates": 0, "converting": 0,
              # what the last generation found kept, still so: the same rows against the same records
              "deleted": 0 if recorded.get("prune_deleted") else int(last.get("deleted", 0)),
              "unchecked": int(last.get("unchecked", 0)), "failing": int(last.get("failing", 0)),
              "same_listing": 1}
    return Planned(published.generation + 1, published.next_index, 0, PlanRows(plan_schema().empty_table()),
                   report, {}, options_of(config), {}, empty=True)


def _check_classes(dest, published: Published, listing) -> None:
    """Labels are indices into the class list: a class list that does not extend DEST's (a new class
    sorted before an old one) would give the same class another label in the new samples."""
    old = [str(c) for c in (published.manifest or {}).get("classes", [])]
    new = list(listing.classes)
    if old and new[: len(old)] != old:
        added = sorted(set(new) - set(old))
        gone = sorted(set(old) - set(new))
        what = ", ".join(p for p in (f"new: {', '.join(added[:5])}" if added else "",
                                     f"gone: {', '.join(gone[:5])}" if gone else "") if p) or "reordered"
        raise OutputError(f"SOURCE's classes changed ({what}): labels are class indices, and new samples would "
                          f"label some classes differently from the {len(old)} classes {dest.url} holds; "
                          "convert into another DEST, or --overwrite to start over")


def _remove_leftover_plans(dest, published: Published) -> None:
    """Plan files of generations already published (a crash after the manifest, before their removal)."""
    for name in dest.ls(GENERATIONS_DIR):
        stem = name.split(".", 2)
        if len(stem) == 3 and stem[0].isdigit() and stem[1] in ("plan", "pending") \
                and int(stem[0]) <= published.generation:
            dest.remove(GENERATIONS_DIR, name)


def _resume(dest, config, old: dict[str, Any], published: Published) -> Planned | None:
    """The recorded plan of the interrupted generation; None when its files are gone or torn."""
    update = old["update"]
    g = int(old["generation"])
    files = update.get("files", {})
    try:
        plan = _checked(dest, files.get("plan"))
        if files.get("pending") is not None:
            _checked(dest, files.get("pending"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("the plan of the interrupted generation %d cannot be read (%s)", g, exc)
        return None
    if options_of(config) != update.get("options"):
        log.warning("completing the interrupted generation %d as it was planned (%s); the options given now "
                    "apply from the next --update", g, update.get("options"))
    rows = plan if plan is not None else plan_schema().empty_table()
    log.info("resuming the interrupted generation %d: %d input(s) in %d shard(s) from %d", g, rows.num_rows,
             update["shards"], update["base"])
    width = int(old["outputs"]["width"])
    return Planned(g, int(update["base"]), width, PlanRows(rows), dict(update["report"]), dict(update.get("examples", {})),
                   dict(update["options"]), dict(files), resumed=True)


def _checked(dest, ref: dict[str, Any] | None) -> Any:
    """A recorded generation file, read and checked against its recorded sha256 (None: no file)."""
    import io

    import pyarrow.parquet as pq

    if ref is None:
        return None
    with dest.fs.open(dest.path(ref["name"]), "rb") as fh:
        data = fh.read()
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise ValueError(f"{ref['name']} does not match its recorded sha256")
    return pq.read_table(io.BytesIO(data), use_threads=False)  # see records.read_table


def _plan(dest, config, run, listing, published: Published, old, *, dry_run: bool, workdir) -> Planned:
    from resize_pipeline.generations.dedup import dedup
    from resize_pipeline.generations.diff import diff
    from resize_pipeline.generations.records import listed_batches

    g = published.generation + 1
    expected = len(listing.items) + sum(int(s.get("total", 0)) for _, s in published.shards.values())
    held = held_batches(dest, published)
    with diff(listed_batches(listing.items), held, generation=g, on_change=config.on_change,
              prune_deleted=config.prune_deleted, hashes=config.dedup is not None and not dry_run,
              expected_rows=expected, workdir=workdir) as d:
        report, examples = dict(d.report), dict(d.examples)
        if config.on_change == "refuse" and report["changed"]:
            raise changed_refusal(report, examples)
        files: dict[str, Any] = {}
        if published.legacy and not published.adopted():
            from resize_pipeline.generations.adopt import adopt

            adopted = adopt(d, published, old, report)
            if adopted is not None and not dry_run:
                files["adopted"] = adopted.commit(dest, *generation_file(1, "records"))
        todo = d.todo()
        pending = Spool(pending_schema())
        dd = None
        if config.dedup is not None and not dry_run:
            dd = dedup(hash_rows(todo, config.storage_options), d.live_hashes, generation=g,
                       expected_rows=expected, workdir=workdir)
            todo = dd.kept()
            report.update(dd.report)
        try:
            plan = Spool(plan_schema())
            for b in todo:
                plan.write(b)
            if dd is not None:
                for t in dd.records:
                    _write_pending(pending, t, None)
                for t in dd.provisional:
                    _write_pending(pending, t, "provisional")
            for t in d.marks():
                _write_pending(pending, t, None)
            for t in d.replaced():
                _write_pending(pending, t, "replaced")
            records = pending.rows
            for keys in d.failing:  # their errors are carried into this generation's error list
                _write_pending(pending, _failing_rows(keys, g), "failing")
        finally:
            if dd is not None:
                dd.close()
    report["converting"] = plan.rows
    if plan.rows == 0 and records == 0:  # nothing new: nothing is written
        plan.drop()
        pending.drop()
        return Planned(g, published.next_index, 0, PlanRows(plan_schema().empty_table()), report, examples,
                       options_of(config), files, empty=True)
    width = int(old["outputs"]["width"]) if old is not None and published.generation else \
        shard_width(plan.rows, config.samples_per_shard)
    if published.legacy and old is not None:
        legacy_names = OutputNames.from_record(old)
        width = legacy_names.width if legacy_names is not None else width
    rows = plan.table()
    files["plan"] = plan.ref(*generation_file(g, "plan"))
    spools = {"plan": plan}
    if pending.rows:
        files["pending"] = pending.ref(*generation_file(g, "pending"))
        spools["pending"] = pending
    else:
        pending.drop()
    return Planned(g, published.next_index, width, PlanRows(rows), report, examples, options_of(config), files,
                   spools=spools)


def pending_schema():
    """Held records plus ``condition``: null (kept), ``replaced`` (kept unless the key's new version
    failed or was restamped), ``provisional`` (a duplicate kept only if its original is written)."""
    import pyarrow as pa

    return pa.schema(list(held_schema()) + [pa.field("condition", pa.large_string())])


def _failing_rows(keys: Any, generation: int) -> Any:
    from resize_pipeline.generations.records import held_table

    n = len(keys)
    return held_table({"key": keys.to_pylist(), "url": [""] * n, "status": ["failed"] * n,
                       "generation": [generation] * n})


def _write_pending(spool: Spool, table: Any, condition: str | None) -> None:
    import pyarrow as pa

    t = table.append_column("condition", pa.array([condition] * table.num_rows, type=pa.large_string()))
    for b in t.to_batches():
        spool.write(b)


def hash_rows(batches, storage_options: dict[str, Any] | None = None, threads: int = HASH_THREADS):
    """Rows to convert with ``sha256``: the digest of each input's bytes, read here (null when they
    cannot be read: the conversion then records why)."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    from resize_pipeline.sources.base import SourceItem
    from resize_pipeline.sources.reader import read_items

    def digests(items: list[SourceItem]) -> list[bytes | None]:
        got = read_items(items, storage_options, retries=1)
        return [None if isinstance(g, Exception) else hashlib.sha256(g).digest() for g in got]

    with ThreadPoolExecutor(threads) as pool:
        for batch in batches:
            cols = to_columns(batch)
            items = [SourceItem(*row) for row in zip(*(cols[c] for c in plan_schema().names), strict=True)]
            chunks = [items[i : i + 8] for i in range(0, len(items), 8)]
            values = [d for part in pool.map(digests, chunks) for d in part]
            yield batch.append_column("sha256", pa.array(values, type=pa.binary(32)))


def plan_file_names(generation: int) -> list[tuple[str, str]]:
    return [generation_file(generation, k) for k in GENERATION_KINDS if k in ("plan", "pending")]


def read_pending(dest, ref: dict[str, Any] | None) -> Any:
    return None if ref is None else read_table(dest.fs, dest.path(ref["name"]))
