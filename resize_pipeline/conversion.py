"""`convert(config)`: the one public function behind ``resize-pipeline convert``.

    check (device, decoder, resizer; SOURCE and DEST apart: before DEST is touched)
      -> open SOURCE (a manifest's columns and rows counted; a folder listed, in parallel: here, or
         on Ray once DEST is locked) -> [--dry-run: read the listing, report, write nothing]
      -> lock DEST -> check DEST (ownership, resume guard) -> record the run
      -> a planner thread streams the listing into parts in DEST (`planning`) and releases each
         part's shards, while the engine (local or Ray) runs `ShardRunner`s on them
      -> finalize (_errors.jsonl, _manifest.json) -> unlock

With ``--update`` the plan is a new generation of DEST instead (`generations.update.prepare`: what
DEST holds vs what SOURCE lists, the listing read into memory), its shards numbered after DEST's
last, published by `generations.publish.publish`; the engines run its shards like any others.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.config import ConvertConfig, ray_knobs_from_env
from resize_pipeline.errors import ConfigError, OutputError, SourceError
from resize_pipeline.layout import ERRORS_FILE, MANIFEST_FILE, OutputNames
from resize_pipeline.manifest import check_legacy, finalize, inspect_dest, prepare_dest, run_record
from resize_pipeline.ownership import check_overlap, remove_partials
from resize_pipeline.planning import DoneShards, Layout, Planner, PlanThread, read_index
from resize_pipeline.shards import ShardResult, ShardTask, plan_shards
from resize_pipeline.sources.listing import open_source
from resize_pipeline.urls import normalise, store_options

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Summary:
    total: int
    written: int
    failed: int
    seconds: float
    dest: str
    resumed_shards: int = 0
    shards: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)
    #: inputs converted by this run (resumed shards excluded)
    converted: int = 0
    #: a ``--dry-run``: nothing was converted or written
    dry_run: bool = False
    #: inputs that could not be listed (stage ``list``; counted in `failed`)
    list_failed: int = 0
    #: with `dry_run`: what a run would do
    plan: dict[str, Any] = field(default_factory=dict)
    #: ``--update``: the generation's number and counts (None: a plain run); ``{}``: nothing new
    generation: dict[str, Any] | None = None

    @property
    def images_per_second(self) -> float:
        """Inputs this run converted per second (shards reused from an earlier run do not count)."""
        return self.converted / self.seconds if self.seconds > 0 else 0.0

    @property
    def manifest_path(self) -> str:
        return posixpath.join(self.dest, MANIFEST_FILE)

    @property
    def errors_path(self) -> str:
        return posixpath.join(self.dest, ERRORS_FILE)

    def line(self) -> str:
        if self.generation is not None:
            return self._update_line()
        if self.dry_run:
            p = self.plan
            shards = f"{p['first']} .. {p['last']}" if self.shards > 1 else p["first"]
            return (f"dry run: {self.total} inputs ({p['kind']}, {self.list_failed} could not be listed) -> "
                    f"{self.shards} shard(s) of up to {p['per_shard']} ({shards}); {self.resumed_shards} complete "
                    f"in {self.dest}, {self.shards - self.resumed_shards} to convert; nothing written")
        return (
            f"{self.total} inputs: {self.written} written, {self.failed} failed "
            f"({self.images_per_second:.1f} img/s, {self.seconds:.1f} s) -> {self.dest}"
            + (f" [{self.resumed_shards} shard(s) reused]" if self.resumed_shards else "")
        )


    def _update_line(self) -> str:
        g = self.generation or {}
        c = g.get("counts", {})
        seen = (f"{c.get('listed', 0)} inputs listed: {c.get('new', 0)} new, {c.get('changed', 0)} changed, "
                f"{c.get('deleted', 0)} deleted, {c.get('duplicates', 0)} duplicates"
                + (f", {c['retried']} retried" if c.get("retried") else "")
                + (f", {c['requeued']} requeued" if c.get("requeued") else "")
                + (f", {c['unchecked']} unchecked" if c.get("unchecked") else "")
                + (f", {c['failing']} failing as before" if c.get("failing") else ""))
        if not g.get("generation"):
            if c.get("same_listing"):
                seen += "; the same listing and stamps as when it was made"
            return (f"{'dry run: ' if self.dry_run else ''}nothing new: {self.dest} stays at generation "
                    f"{g.get('current', 0)} ({seen}; nothing written)")
        if self.dry_run:
            p = self.plan
            shards = f"{p['first']} .. {p['last']}" if self.shards > 1 else p.get("first", "none")
            dedup = "; --dedup finds duplicates when it reads the inputs, not in a dry run" \
                if (g.get("options") or {}).get("dedup") else ""
            return (f"dry run: generation {g.get('generation')} would convert {c.get('converting', 0)} input(s) in "
                    f"{self.shards} shard(s) ({shards}); {seen}{dedup}; nothing written")
        if not g.get("generation"):
            return f"nothing new: {self.dest} stays at generation {g.get('current', 0)} ({seen})"
        return (f"generation {g['generation']}: {seen} -> {self.written} written, {self.failed} failed "
                f"({self.images_per_second:.1f} img/s, {self.seconds:.1f} s) -> {self.dest}"
                + (f" [{self.resumed_shards} shard(s) reused]" if self.resumed_shards else ""))


def _components(built: list[dict[str, Any]], config, resolved) -> dict[str, Any]:
    """What the workers reported they built (the first one's, plus any that differ)."""
    distinct: list[dict[str, Any]] = []
    for b in built:
        b = {k: v for k, v in b.items() if k != "pid"}
        if b not in distinct:
            distinct.append(b)
    out: dict[str, Any] = dict(distinct[0]) if distinct else {}
    if len(distinct) > 1:
        out["workers"] = distinct
    out["resolved"] = resolved.to_dict()
    out["requested"] = {"decoder": config.decoder, "device": config.device, "resizer": config.resizer}
    return out


def _previous_components(dest, run: dict[str, Any]) -> dict[str, Any] | None:
    """The components an earlier run of the same job recorded (kept when this run converts nothing)."""
    try:
        old = dest.read_json(MANIFEST_FILE)
    except (OSError, ValueError):
        return None
    if isinstance(old, dict) and old.get("fingerprint") == run["fingerprint"]:
        return old.get("components")
    return None


def convert(config: ConvertConfig, *, progress: bool | None = None) -> Summary:
    """Convert `config.source` into shards in `config.dest`; resumes completed shards.

    Raises `ConfigError` (nothing can work: bad device, decoder, resizer), `SourceError` or
    `OutputError` when the job cannot run at all; a config error leaves DEST untouched. Bad inputs
    never raise: they are recorded in ``_errors.jsonl``.
    """
    from resize_pipeline.preflight import check, resolve

    t0 = time.perf_counter()
    config = config.replace(source=normalise(config.source), dest=normalise(config.dest))
    config = config.replace(storage_options=store_options(config.storage_options, [config.source, config.dest],
                                                          config.io_timeout))
    checked = check(config)  # before anything else: a config error costs nothing and touches nothing
    check_overlap(config.source, config.dest, config.storage_options)
    if config.engine == "ray":
        try:
            from workers.ray_engine import session
        except ImportError as exc:
            raise ConfigError(f"--engine ray needs `pip install 'resize-pipeline[ray]'`: {exc}") from None
        config = ray_knobs_from_env(config)
        cluster: Any = session(config)
    else:
        cluster = contextlib.nullcontext(None)
    with cluster as cluster_gpus:
        worker_env = None
        if config.engine == "ray":  # the actors' environment decides (DALI, OpenCV), not this process's
            from workers.ray_engine import worker_environment

            worker_env = worker_environment(cluster_gpus)
        resolved = resolve(config, gpus=cluster_gpus, checked=checked, worker_env=worker_env)
        return _convert(config, resolved, t0, progress)


def _open_listing(config):
    """SOURCE, opened (what is cheap, before DEST is touched)."""
    try:  # a filesystem instance fsspec kept from an earlier run in this process must not answer from
        from resize_pipeline.urls import url_to_fs  # its cache: the listing and every read see SOURCE now

        url_to_fs(config.source, config.storage_options)[0].invalidate_cache()
    except (ImportError, ValueError, OSError):
        pass  # cannot be opened: the listing says why
    return open_source(config.source, storage_options=config.storage_options, path_column=config.path_column,
                       label_column=config.label_column, io_timeout=config.io_timeout)
def _prepare_here(config, listing) -> None:
    """List a folder-like SOURCE in this process (threads; runs in a local temporary folder)."""
    from resize_pipeline.sources.common import LISTING_ERRORS, one_line

    try:
        listing.prepare()
    except SourceError:
        raise
    except LISTING_ERRORS as exc:
        raise one_line(config.source, exc) from None


def _require_inputs(config, listing) -> None:
    if listing.bound:
        log.info("listed %s: up to %d inputs (%s)%s", config.source, listing.bound, listing.kind,
                 f"; {len(listing.errors)} could not be listed" if listing.errors else "")
        return
    raise _no_inputs(config, listing.errors)


def _no_inputs(config, errors) -> SourceError:
    first = errors.first
    why = f" ({len(errors)} could not be listed: {first['error']})" if first else ""
    return SourceError(f"no images found in {config.source}{why}")


def _list(config):
    """SOURCE listed here, every row in memory (``--update``: the diff against DEST's records)."""
    listing = _open_listing(config)
    _prepare_here(config, listing)
    _require_inputs(config, listing)
    listing.items  # noqa: B018 - read now: a listing streams once
    return listing


def _open_dest(config):
    from resize_pipeline.sinks.dest import Dest

    try:
        dest = Dest(config.dest, config.storage_options, io_timeout=config.io_timeout)
    except (OSError, ValueError, ImportError) as exc:
        raise OutputError(f"cannot write to {config.dest}: {exc}") from None
    dest.check_bucket()
    return dest


def _layout(config, listing) -> Layout:
    return Layout(listing.bound, config.samples_per_shard, config.shard_prefix)


def _dry_run(config, resolved, dest, listing, t0: float) -> Summary:
    """Everything a run checks before it writes, read-only; then what it would do (the whole listing
    is read: counts, shards, and how many DEST holds complete, its recorded parts compared)."""
    from resize_pipeline.sinks.lock import DestLock

    run = run_record(config, resolved, listing)
    state = inspect_dest(dest, config, run)
    resume = state.old is not None and not config.overwrite
    if resume and state.legacy:
        listing = _check_legacy(config, dest, state, listing)
    lock = DestLock(dest)
    held = lock.read()
    if held and lock.stale(held) is None:
        log.warning("%s is being written by another job now (%s)", dest.url, lock.describe(held))
    layout = _layout(config, listing)
    planner = Planner(listing, layout, dest if resume else None, write=False,
                      recorded=read_index(dest) if resume and not state.legacy else None,
                      done=DoneShards(dest if resume else None), source=config.source)
    counts = {"shards": 0, "done": 0}
    pending: list[str] = []

    def on_part(ev) -> None:
        counts["shards"] += len(ev.tasks) + len(ev.done)
        counts["done"] += len(ev.done)
        pending.extend(t.name for t in ev.tasks[: max(0, 20 - len(pending))])

    outcome = planner.run(on_part)
    n, errors = outcome.inputs, len(listing.errors)
    if not n:
        raise _no_inputs(config, listing.errors)
    shards = counts["shards"]
    plan = {"kind": listing.kind, "per_shard": config.samples_per_shard, "first": layout.name(0),
            "last": layout.name(max(0, shards - 1)), "pending": pending}
    return Summary(n + errors, 0, errors, time.perf_counter() - t0, config.dest, counts["done"], shards, {}, 0,
                   dry_run=True, list_failed=errors, plan=plan)


def _check_legacy(config, dest, state, listing):
    """A DEST started by release <= 0.2 (the listing's digests in ``_run.json``): the whole listing is
    read and checked first; returns a fresh listing for the run."""
    log.info("%s was started by an earlier release: checking the whole listing against its record first",
             dest.url)
    planner = Planner(listing, _layout(config, listing), None, write=False, legacy=True, source=config.source)
    outcome = planner.run(lambda ev: None)
    check_legacy(dest, config, state.old, outcome.digest, outcome.stamps, outcome.inputs)
    fresh = _open_listing(config)
    _prepare_here(config, fresh)
    return fresh


@contextlib.contextmanager
def _document_step(dest, step: str, then: str):
    """A DEST document the driver writes that still fails after `Dest`'s retries (a persistent S3 500
    on ``_manifest.json``): a one-line job error. Shards already committed stay; a rerun reuses them."""
    try:
        yield
    except (OutputError, ConfigError, SourceError):
        raise
    except OSError as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OutputError(f"cannot {step} {dest.url}: {text}; {then}") from None


@contextlib.contextmanager
def _show_waits(bar):
    """While the bar is shown, its postfix says what this process is waiting on (an object store that
    does not answer: `waits`), refreshed every second."""
    if bar.disable:
        yield
        return
    import threading

    from resize_pipeline.waits import describe_waits

    stop = threading.Event()

    def tick() -> None:
        shown = ""
        while not stop.wait(1.0):
            text = describe_waits()
            if text != shown:
                bar.set_postfix_str(text, refresh=True)
                shown = text

    thread = threading.Thread(target=tick, name="progress-waits", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def _convert(config: ConvertConfig, resolved, t0: float, progress: bool | None) -> Summary:
    from resize_pipeline.sinks.lock import DestLock

    if config.engine != "ray" and not config.dry_run:
        from resize_pipeline.engine.local import start_early

        start_early(config)
    if config.update:
        return _convert_update(config, resolved, t0, progress)
    listing = _open_listing(config)
    # folders are listed here, before DEST is touched; on Ray, in parallel once DEST is locked (the
    # listing tasks write their sorted runs into DEST/_listing/, which must be ours by then)
    on_ray = config.engine == "ray" and not config.dry_run and not listing.prepared
    if not on_ray:
        _prepare_here(config, listing)
        _require_inputs(config, listing)
    dest = _open_dest(config)
    if config.dry_run:
        return _dry_run(config, resolved, dest, listing, t0)
    dest.makedirs()
    with DestLock(dest) as lock:
        return _plain(config, resolved, dest, listing, t0, progress, lock)


def _plain(config, resolved, dest, listing, t0, progress, lock) -> Summary:
    """A plain run (generation 1), DEST locked."""
    run = run_record(config, resolved, listing)
    state = inspect_dest(dest, config, run)
    if state.legacy and not config.overwrite:
        listing = _check_legacy(config, dest, state, listing)
        run = run_record(config, resolved, listing)
    previous = _previous_components(dest, run) if state.old is not None else None
    lock.check()
    with _document_step(dest, "start", "nothing was converted yet"):
        prepare_dest(dest, config, run, state)
    if not listing.prepared:
        run = _prepare_on_ray(config, resolved, dest, listing, state)
    records = [run] + ([state.old] if state.old is not None else [])
    names = [n for n in (OutputNames.from_record(r) for r in records) if n is not None]
    remove_partials(dest, names)
    return _run(config, resolved, dest, run, listing, state, names, previous, t0, progress, lock)


def _update_run(config, resolved, listing) -> dict[str, Any]:
    """The run record of an ``--update`` (its listing in memory): the plain record with the whole
    listing's digests, row count and shard names, as `generations.update` compares them; the plain
    record's listing extent is kept (``extent``) to recognise an interrupted plain run of it."""
    from resize_pipeline.planning import listing_digests

    run = run_record(config, resolved, listing)
    items = listing.items
    digest_, stamps = listing_digests(listing)
    return dict(run, extent=run["listing"], listing=digest_, stamps=stamps, inputs=len(items),
                outputs=OutputNames.of(config, len(items)).to_dict())


def _convert_update(config: ConvertConfig, resolved, t0: float, progress: bool | None) -> Summary:
    """``--update``: a new generation of DEST (or the one a crash interrupted). DEST is locked before
    SOURCE is listed: a second job on the same DEST (a night that overlaps the next) is refused at once."""
    from resize_pipeline.generations.publish import publish
    from resize_pipeline.generations.update import prepare
    from resize_pipeline.sinks.lock import DestLock

    dest = _open_dest(config)
    if config.dry_run:
        listing = _list(config)
        prepared = prepare(dest, config, _update_run(config, resolved, listing), listing, dry_run=True)
        return _update_summary(config, prepared, listing, t0, dry_run=True)
    dest.makedirs()
    with DestLock(dest) as lock:
        listing = _list(config)
        run = _update_run(config, resolved, listing)
        prepared = prepare(dest, config, run, listing)
        if prepared.kind == "plain":  # the first conversion, interrupted, of this very listing: finish it
            log.info("%s holds an unfinished conversion of this listing (not made with --update): completing it",
                     dest.url)
            plain = config.replace(update=False, on_change="refuse", prune_deleted=False, dedup=None)
            fresh = _open_listing(plain)
            _prepare_here(plain, fresh)
            _require_inputs(plain, fresh)
            return _plain(plain, resolved, dest, fresh, t0, progress, lock)
        if prepared.kind == "nothing":
            return _update_summary(config, prepared, listing, t0)
        planned = prepared.planned
        assert planned is not None and prepared.run is not None
        previous = _previous_components(dest, prepared.run)
        remove_partials(dest, prepared.names)
        tasks = plan_shards(planned.rows, config.samples_per_shard, config.shard_prefix, first=planned.base,
                            width=planned.width, classes=listing.classes)
        results, built, done = _execute(config, resolved, dest, tasks, prepared.names, len(planned.rows), progress,
                                        lock)
        seconds = time.perf_counter() - t0
        converted = sum(r.total for r in results) - sum(r.total for r in done.values())
        with _document_step(dest, "finish", "the shards written so far are kept: rerun the same command to finish"):
            manifest = publish(dest, config, prepared, results, listing=listing, seconds=seconds,
                               components=previous if previous and not built else _components(built, config,
                                                                                               resolved),
                               converted=converted)
        s = _update_summary(config, prepared, listing, t0, manifest=manifest, results=results, done=len(done))
        s.converted = converted
        return s


def _update_summary(config, prepared, listing, t0: float, *, dry_run: bool = False,
                    manifest: dict[str, Any] | None = None, results: list | None = None, done: int = 0) -> Summary:
    planned = prepared.planned
    seconds = time.perf_counter() - t0
    if prepared.kind == "nothing":
        report = {"generation": 0, "current": prepared.published.generation, "counts": planned.report}
        return Summary(len(listing.items), 0, 0, seconds, config.dest, generation=report, dry_run=dry_run,
                       list_failed=len(listing.errors))
    k = -(-len(planned.rows) // config.samples_per_shard)
    if dry_run or manifest is None:
        from resize_pipeline.layout import shard_name

        names = [shard_name(config.shard_prefix, planned.base + i, planned.width) for i in (0, k - 1)] if k else []
        plan = {"first": names[0], "last": names[-1]} if names else {}
        return Summary(len(listing.items), 0, len(listing.errors), seconds, config.dest, shards=k, dry_run=True,
                       list_failed=len(listing.errors), plan=plan,
                       generation={"generation": planned.generation, "counts": planned.report,
                                   "options": planned.options})
    entry = manifest["generations"][-1]
    c = entry["counts"]
    return Summary(c["converted"] + len(listing.errors), c["written"], c["failed"], seconds, config.dest, done, k,
                   manifest, list_failed=len(listing.errors), generation=entry)


def completed_shards(dest, tasks: list[ShardTask]) -> dict[int, ShardResult]:
    """Shards of an ``--update`` plan whose stats exist and whose files and input record are all
    present (a rerun skips them)."""
    from resize_pipeline.layout import INPUTS_DIR, STATS_DIR, inputs_name, stats_name

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


def _execute(config, resolved, dest, tasks, names, total: int, progress, lock):
    """Run the shards of an ``--update`` plan not complete yet on the engine; (every result, what the
    workers built, the results of the shards that were complete already)."""
    from tqdm.auto import tqdm

    done = completed_shards(dest, tasks)
    pending = [t for t in tasks if t.index not in done]
    if done:
        log.info("resuming: %d of %d shards already complete", len(done), len(tasks))
    results: list[ShardResult] = list(done.values())
    built: list[dict[str, Any]] = []
    show = (not config.quiet) if progress is None else progress
    bar = tqdm(total=total, initial=sum(r.total for r in results), unit="img",
               disable=not show, desc="convert", dynamic_ncols=True)
    with bar, _show_waits(bar):
        if config.engine == "ray":
            from workers.ray_engine import run_ray

            stream = run_ray(config, resolved, pending, on_progress=bar.update)
        else:
            from resize_pipeline.engine.local import run_local

            stream = run_local(config, resolved, pending, on_progress=bar.update)
        for res in stream:
            lock.check()  # another job took DEST over: stop now (workers ended), delete nothing
            if res.built and res.built not in built:
                built.append(res.built)
            results.append(res)
    lock.check()
    remove_partials(dest, names)  # temp files of a worker that died mid-commit (its shard was redone)
    return results, built, done


def _prepare_on_ray(config, resolved, dest, listing, state) -> dict[str, Any]:
    """List a folder-like SOURCE in parallel on Ray (runs in ``DEST/_listing/``), then record it."""
    from resize_pipeline.layout import RUN_FILE
    from resize_pipeline.manifest import check_listing
    from resize_pipeline.ownership import remove_listing
    from resize_pipeline.sources.runs import RunStore
    from workers.listing_tasks import ray_runner

    remove_listing(dest, runs_only=True)
    from resize_pipeline.sources.common import LISTING_ERRORS, one_line

    try:
        listing.prepare(ray_runner(config), RunStore.in_dest(dest.url, dest.storage_options))
        _require_inputs(config, listing)
    except (SourceError, *LISTING_ERRORS) as exc:  # type: ignore[misc]
        if state.old is None:  # nothing of ours was here: leave DEST as it was found
            from resize_pipeline.layout import RECORD_DIRS

            dest.remove(RUN_FILE)
            for folder in RECORD_DIRS:
                if not dest.object_store and dest.isdir(folder) and not dest.entries(folder):
                    dest.remove(folder, recursive=True)
        if isinstance(exc, SourceError):
            raise
        raise one_line(config.source, exc) from None
    run = run_record(config, resolved, listing)
    if state.old is not None and not config.overwrite:
        check_listing(dest, config, state.old, run)
    dest.write_json(run, RUN_FILE)
    return run


def _run(config, resolved, dest, run, listing, state, names, previous, t0, progress, lock) -> Summary:
    from tqdm.auto import tqdm

    from resize_pipeline.errorlog import ShardErrors

    layout = _layout(config, listing)
    resume = state.old is not None and not config.overwrite
    planner = Planner(listing, layout, dest, recorded=read_index(dest) if resume and not state.legacy else None,
                      source=config.source)
    plan = PlanThread(planner)
    shard_errors = ShardErrors()
    results: dict[int, ShardResult] = {}
    built: list[dict[str, Any]] = []
    show = (not config.quiet) if progress is None else progress
    bar = tqdm(total=listing.bound, unit="img", disable=not show, desc="convert", dynamic_ncols=True)

    def take(res: ShardResult) -> None:
        if res.index in results:  # reported twice (a Ray task retried after it finished): once counts
            return
        shard_errors.put(res.index, res.errors)
        res.errors = []
        results[res.index] = res
        if res.built and res.built not in built:
            built.append(res.built)

    try:
        with bar, _show_waits(bar):
            if config.engine == "ray":
                from workers.ray_engine import run_ray

                stream = run_ray(config, resolved, plan, on_progress=bar.update)
            else:
                from resize_pipeline.engine.local import run_local

                plan.start()
                stream = run_local(config, resolved, plan.tasks, on_progress=bar.update)
            for res in stream:
                lock.check()  # another job took DEST over: stop now (workers ended), delete nothing
                take(res)
                for done in plan.take_done():
                    bar.update(done.total)
                    take(done)
            plan.join()
            for done in plan.take_done():
                bar.update(done.total)
                take(done)
            bar.total = plan.outcome.inputs if plan.outcome else bar.total
        lock.check()
        plan.planner.write_index()
    finally:
        plan.stop()
    seconds = time.perf_counter() - t0
    remove_partials(dest, names)  # temp files of a worker that died mid-commit (its shard was redone)
    reused = [r for r in results.values() if r.reused]
    converted = sum(r.total for r in results.values() if not r.reused)
    with _document_step(dest, "finish", "the shards written so far are kept: rerun the same command to finish"):
        manifest = finalize(
            dest, config, run, list(results.values()),
            listing_kind=listing.kind, list_errors=listing.errors, shard_errors=shard_errors,
            classes=listing.classes, skipped=listing.skipped, skipped_members=listing.skipped_members,
            skipped_examples=listing.skipped_examples, seconds=seconds,
            components=previous if previous and not built else _components(built, config, resolved),
            converted=converted,
        )
    shard_errors.close()
    c = manifest["counts"]
    return Summary(c["total"], c["written"], c["failed"], seconds, config.dest, len(reused), len(results), manifest,
                   converted, list_failed=len(listing.errors))
