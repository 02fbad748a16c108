"""Held vs listed: what a new generation converts, keeps, supersedes and reports.

`diff(listed, held, ...)` is a pure function over two streams of Arrow record batches:

- `listed`: SOURCE's rows in listing order (`records.plan_schema`, or `sources.base.arrow_schema`);
- `held`: DEST's records (`records.held_schema`): the inputs committed shards took, generation
  records (duplicates, restamps) and marks (``superseded``/``retired`` end the record named by key
  and ``target`` generation). Records of generation 0 are those of a DEST written before generations
  existed: they count as generation 1, carry no identity or stamp, and come back matched to their
  listed rows (`Diff.adopted`) so that the caller can complete them.

For each key, the record that counts is the newest one (by generation) that is ``written`` or
``duplicate`` and not ended by a mark. A listed row is then

- **new** (no such record; **retried** if the key's newest record is a failure; **failing**, and
  left alone, if that failure was a decode, resize or encode error of this very input: the same url
  and stamp give the same error on every try),
- **unchanged** (same identity, label and stamp), **unchecked** (same identity and label, but a stamp
  is 0: not known, so it cannot be compared: kept as it is),
- **changed** (another stamp, url, byte range, row or label): ``on_change`` decides: ``skip`` keeps
  the old sample, ``replace`` converts it again and marks the old record superseded *if* the new
  version is written or found a duplicate (`Diff.replaced`: the caller applies them after the run),
  ``refuse`` only counts them (the caller refuses the update);
- and a held record whose key is not listed is **deleted**: reported; with ``prune_deleted`` its
  sample is marked superseded (`Diff.marks`).

A duplicate whose original sample is superseded in this generation is converted again
(**requeued**): nothing it stood for is lost.

Memory: both streams are hash-partitioned by key into Arrow IPC files on local disk
(`partition.PartitionSet`, sized from `expected_rows`), and one partition of each side is joined at a
time; the rows to convert are kept per partition sorted by listing position and merged back in
listing order (`Diff.todo`). The driver holds one partition, never the whole listing.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.generations import partition
from resize_pipeline.generations.records import MARKS, held_schema, normalise, plan_schema

log = logging.getLogger(__name__)

ON_CHANGE = ("refuse", "skip", "replace")
#: columns the rows to convert carry besides the plan columns: listing position, why they are
#: converted, and the record they replace (for `dedup`: a changed input with the same bytes)
TODO_EXTRA = ("pos", "reason", "prev_shard", "prev_sample", "prev_generation", "prev_status", "prev_sha256")
#: stages whose failure is the same on every try: an input that failed there, unchanged, is not retried
DETERMINISTIC = ("decode", "resize", "encode")
#: the columns of a held record a listed row is compared with (prefixed ``h_`` after the join)
_HELD = ("url", "offset", "length", "row", "label", "stamp", "status", "generation", "shard", "sample", "sha256",
         "of_key")


def todo_schema():
    import pyarrow as pa

    extra = [("pos", pa.int64()), ("reason", pa.large_string()), ("prev_shard", pa.large_string()),
             ("prev_sample", pa.int64()), ("prev_generation", pa.int64()), ("prev_status", pa.large_string()),
             ("prev_sha256", pa.binary(32))]
    return pa.schema(list(plan_schema()) + [pa.field(n, t) for n, t in extra])


def live_hash_schema():
    """A live sample's bytes digest and where the sample is (what `dedup` compares against)."""
    import pyarrow as pa

    return pa.schema([("sha256", pa.binary(32)), ("key", pa.large_string()), ("shard", pa.large_string()),
                      ("sample", pa.int64()), ("generation", pa.int64())])


def _watch_schema():
    """An unchanged duplicate, routed by the key of the sample it duplicates (requeue pass)."""
    import pyarrow as pa

    return pa.schema([("of_key", pa.large_string()), ("dup_generation", pa.int64())] + list(plan_schema())
                     + [pa.field("pos", pa.int64())])


@dataclass
class Diff:
    """The result of `diff`: counts and examples now, the row streams on demand. Use it as a context
    manager (its partition files live in a temporary folder until `close`)."""

    report: dict[str, int] = field(default_factory=dict)
    #: a few keys per kind (``changed``, ``deleted``), in listing (changed) or key (deleted) order
    examples: dict[str, list[str]] = field(default_factory=dict)
    directory: str = ""
    _todo: Any = None
    _marks: list[Any] = field(default_factory=list)
    _replaced: list[Any] = field(default_factory=list)
    _adopted: Any = None
    live_hashes: Any = None  # a PartitionSet by sha256 (with ``hashes=True``)
    #: keys of the inputs that fail as they did before (`_State._failing`): not converted again
    failing: list[Any] = field(default_factory=list)

    def todo(self) -> Iterator[Any]:
        """The rows to convert (`todo_schema`), in listing order."""
        return self._todo.merge() if self._todo is not None else iter(())

    def marks(self) -> Iterator[Any]:
        """Marks (held schema) this generation writes whatever happens: pruned samples, retired duplicates."""
        return iter(self._marks)

    def replaced(self) -> Iterator[Any]:
        """Marks of the records changed inputs replace: to apply only for keys whose new version is
        written or recorded as a duplicate."""
        return iter(self._replaced)

    def adopted(self) -> Iterator[Any]:
        """Generation-0 records joined to their listed rows, in listing order: ``shard``, ``sample``,
        ``status`` and the plan columns with ``pos``."""
        return self._adopted.merge() if self._adopted is not None else iter(())

    def close(self) -> None:
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = ""

    def __enter__(self) -> Diff:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _adopted_schema():
    import pyarrow as pa

    return pa.schema([("shard", pa.large_string()), ("sample", pa.int64()), ("status", pa.large_string()),
                      ("stage", pa.large_string())] + list(plan_schema()) + [pa.field("pos", pa.int64())])


def diff(listed: Iterable[Any], held: Iterable[Any], *, generation: int, on_change: str = "refuse",
         prune_deleted: bool = False, hashes: bool = False, expected_rows: int = 0,
         rows_per_partition: int | None = None, workdir: str | None = None, examples: int = 5) -> Diff:
    """Compare `listed` with `held` (see the module docstring); `generation` is the one being planned
    (its marks carry it). `hashes`: also collect the live samples' sha256 (`Diff.live_hashes`, for
    `dedup`). `expected_rows` sizes the partitions (listed + held rows, roughly)."""
    import pyarrow as pa

    if on_change not in ON_CHANGE:
        raise ValueError(f"on_change must be one of {', '.join(ON_CHANGE)}, not {on_change!r}")
    per = rows_per_partition or partition.ROWS_PER_PARTITION
    n = int(min(partition.MAX_PARTITIONS, max(1, -(-int(expected_rows) // per))))
    directory = tempfile.mkdtemp(prefix="resize-diff-", dir=workdir)
    out = Diff(directory=directory)
    try:
        plan = plan_schema()
        listed_schema = pa.schema(list(plan) + [pa.field("pos", pa.int64())])
        lp = partition.PartitionSet(directory, "listed", n, listed_schema, "key")
        pos = 0
        for batch in listed:
            b = normalise(batch, plan)
            lp.add(pa.RecordBatch.from_arrays(list(b.columns) + [pa.array(range(pos, pos + b.num_rows),
                                                                             type=pa.int64())], schema=listed_schema))
            pos += b.num_rows
        lp.close()
        hp = partition.PartitionSet(directory, "held", n, held_schema(), "key")
        for batch in held:
            hp.add(normalise(batch, held_schema()))
        hp.close()
        state = _State(out, generation, on_change, prune_deleted, hashes, examples, n, directory)
        for p in range(n):
            state.partition(lp.read(p), hp.read(p))
        state.requeue()
        out.report["listed"] = pos
        out.examples = {k: [key for _, key in sorted(v)[:examples]] for k, v in state.examples.items()}
        return out
    except BaseException:
        out.close()
        raise


class _State:
    """What `diff` accumulates over the partitions."""

    def __init__(self, out: Diff, generation: int, on_change: str, prune: bool, hashes: bool, examples: int,
                 n: int, directory: str) -> None:
        self.out, self.generation, self.on_change, self.prune, self.hashes = out, generation, on_change, prune, hashes
        self.n_examples = examples
        self.examples: dict[str, list[tuple[Any, str]]] = {"changed": [], "deleted": []}
        for k in ("new", "retried", "changed", "unchanged", "unchecked", "deleted", "requeued", "failing", "held"):
            out.report[k] = 0
        out._todo = partition.SortedRuns(directory, "todo", todo_schema())
        out._adopted = partition.SortedRuns(directory, "adopted", _adopted_schema())
        self.watch = partition.PartitionSet(directory, "watch", n, _watch_schema(), "of_key")
        self.ended = partition.PartitionSet(directory, "ended", n, _key_schema(), "key")
        if hashes:
            out.live_hashes = partition.PartitionSet(directory, "hashes", n, live_hash_schema(), "sha256")

    def _example(self, kind: str, order: list[Any], keys: list[str]) -> None:
        ex = self.examples[kind] + list(zip(order, keys, strict=True))
        self.examples[kind] = sorted(ex)[: self.n_examples]

    def partition(self, listed: Any, held: Any) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        report = self.out.report
        legacy = held.filter(pc.equal(held.column("generation"), 0))
        if legacy.num_rows:
            self._adopt(listed, legacy)
            gen = pc.if_else(pc.equal(held.column("generation"), 0), 1, held.column("generation"))
            held = held.set_column(held.schema.get_field_index("generation"), "generation", gen)
        status = held.column("status")
        failures = held.filter(pc.equal(status, "failed"))
        failed_keys = pc.unique(failures.column("key"))
        alive = _alive(held)
        report["held"] += int(pc.sum(pc.equal(alive.column("status"), "written")).as_py() or 0)
        h = alive.select(["key", *_HELD]).rename_columns(["key", *(f"h_{c}" for c in _HELD)])
        joined = listed.join(h, keys="key", join_type="left outer", use_threads=False)
        if failures.num_rows:
            f = _newest(failures).select(["key", "url", "stamp", "stage", "generation"])
            joined = joined.join(f.rename_columns(["key", "f_url", "f_stamp", "f_stage", "f_generation"]), keys="key",
                                 join_type="left outer", use_threads=False)
            failing = self._failing(joined)
            if failing is not None:
                joined = joined.filter(pc.invert(failing))
        has = pc.is_valid(joined.column("h_status"))
        known_ident = pc.and_(has, pc.not_equal(pc.fill_null(pc.binary_length(joined.column("h_url")), 0), 0))
        same_ident = pc.equal(joined.column("url"), joined.column("h_url"))
        for c in ("offset", "length", "row", "label"):
            same_ident = pc.and_kleene(same_ident, pc.equal(joined.column(c), joined.column(f"h_{c}")))
        same_ident = pc.or_(pc.invert(known_ident), pc.fill_null(same_ident, False))
        stamps_known = pc.and_(pc.not_equal(joined.column("stamp"), 0),
                               pc.not_equal(pc.fill_null(joined.column("h_stamp"), 0), 0))
        stamp_differs = pc.fill_null(pc.not_equal(joined.column("stamp"), joined.column("h_stamp")), False)
        changed = pc.and_(has, pc.or_(pc.invert(same_ident), pc.and_(stamps_known, stamp_differs)))
        kept = pc.and_(has, pc.invert(changed))
        new = pc.invert(has)
        retried = pc.and_(new, pc.is_in(joined.column("key"), value_set=failed_keys))
        n_new, n_retried = int(pc.sum(new).as_py() or 0), int(pc.sum(retried).as_py() or 0)
        report["new"] += n_new - n_retried
        report["retried"] += n_retried
        report["changed"] += int(pc.sum(changed).as_py() or 0)
        report["unchecked"] += int(pc.sum(pc.and_(kept, pc.invert(stamps_known))).as_py() or 0)
        report["unchanged"] += int(pc.sum(pc.and_(kept, stamps_known)).as_py() or 0)
        ch = joined.filter(changed)
        if ch.num_rows:
            first = ch.sort_by("pos").slice(0, self.n_examples)
            self._example("changed", first.column("pos").to_pylist(), first.column("key").to_pylist())
        replace = self.on_change == "replace"
        todo = joined.filter(pc.or_(new, changed) if replace else new)
        reason = pc.if_else(pc.is_valid(todo.column("h_status")), "changed",
                            pc.if_else(pc.is_in(todo.column("key"), value_set=failed_keys), "retried", "new"))
        self._add_todo(todo, reason)
        ended_keys = []
        if replace and ch.num_rows:
            self.out._replaced.append(self._marks_of(ch, "h_"))
            ended_keys.append(ch.filter(pc.equal(ch.column("h_status"), "written")).column("key"))
        # duplicates whose own input is unchanged: requeued if their original is superseded now
        dups = joined.filter(pc.and_(kept, pc.equal(joined.column("h_status"), "duplicate")))
        if dups.num_rows:
            cols = [dups.column("h_of_key"), dups.column("h_generation")] + \
                   [dups.column(c) for c in plan_schema().names] + [dups.column("pos")]
            for b in pa.Table.from_arrays(cols, schema=_watch_schema()).to_batches():
                self.watch.add(b)
        # deleted: held and alive, not listed
        gone = alive.join(listed.select(["key"]), keys="key", join_type="left anti", use_threads=False)
        report["deleted"] += gone.num_rows
        if gone.num_rows:
            ks = sorted(gone.column("key").to_pylist())[: self.n_examples]
            self._example("deleted", ks, ks)
            if self.prune:
                self.out._marks.append(self._marks_of(gone, ""))
                ended_keys.append(gone.filter(pc.equal(gone.column("status"), "written")).column("key"))
        for keys in ended_keys:
            if len(keys):
                self.ended.add(pa.RecordBatch.from_arrays([keys.combine_chunks()], schema=_key_schema()))
        if self.hashes:
            self._live_hashes(alive, ended_keys)

    def _failing(self, joined: Any) -> Any:
        """Rows whose newest record is a failure no retry can mend: the input is the very one that failed
        (same url and stamp, stamp known) at a stage that gives the same answer every time (decode,
        resize, encode). They are not converted again (reported as ``failing``, their errors kept) until
        the input changes; failures to read, of a whole shard or of an original are retried."""
        import pyarrow as pa
        import pyarrow.compute as pc

        newer = pc.or_kleene(pc.invert(pc.is_valid(joined.column("h_generation"))),
                             pc.greater(joined.column("f_generation"), joined.column("h_generation")))
        same = pc.and_kleene(pc.equal(joined.column("url"), joined.column("f_url")),
                             pc.equal(joined.column("stamp"), joined.column("f_stamp")))
        failing = pc.fill_null(pc.and_kleene(pc.and_kleene(newer, same), pc.and_kleene(
            pc.not_equal(joined.column("stamp"), 0),
            pc.is_in(joined.column("f_stage"), value_set=pa.array(DETERMINISTIC, pa.large_string())))), False)
        n = int(pc.sum(failing).as_py() or 0)
        if not n:
            return None
        self.out.report["failing"] += n
        self.out.failing.append(joined.filter(failing).column("key").combine_chunks())
        return failing

    def _add_todo(self, todo: Any, reason: Any) -> None:
        import pyarrow as pa

        if not todo.num_rows:
            return
        cols = [todo.column(c) for c in plan_schema().names] + [
            todo.column("pos"), reason, todo.column("h_shard"), todo.column("h_sample"),
            todo.column("h_generation"), todo.column("h_status"), todo.column("h_sha256")]
        self.out._todo.add(pa.Table.from_arrays(cols, schema=todo_schema()))

    def _marks_of(self, table: Any, prefix: str) -> Any:
        """Marks ending the records in `table` (columns ``{prefix}status`` etc.)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        status = table.column(f"{prefix}status")
        written = pc.equal(status, "written")
        n = table.num_rows
        cols = {
            "key": table.column("key"),
            "status": pc.if_else(written, "superseded", "retired"),
            "generation": pa.array([self.generation] * n, type=pa.int64()),
            "shard": pc.if_else(written, table.column(f"{prefix}shard"), pa.scalar(None, pa.large_string())),
            "sample": pc.if_else(written, table.column(f"{prefix}sample"), -1),
            "target": table.column(f"{prefix}generation"),
        }
        return _held_from(cols, n)

    def _adopt(self, listed: Any, legacy: Any) -> None:
        """Generation-0 records with their listed rows (``pos`` -1, identity unknown: not listed)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        got = legacy.select(["key", "shard", "sample", "status", "stage"]).join(
            listed, keys="key", join_type="left outer", use_threads=False)
        fill = {"url": pa.scalar(b"", pa.large_binary()), "label_name": pa.scalar(b"", pa.large_binary()),
                "meta": pa.scalar(b"", pa.large_binary()), "stamp": 0, "pos": -1,
                **{c: -1 for c in ("label", "offset", "length", "row")}}
        for c, v in fill.items():
            got = got.set_column(got.schema.get_field_index(c), c, pc.fill_null(got.column(c), v))
        self.out._adopted.add(got.select(_adopted_schema().names).cast(_adopted_schema()))

    def _live_hashes(self, alive: Any, ended_keys: list[Any]) -> None:
        import pyarrow.compute as pc

        live = alive.filter(pc.and_(pc.equal(alive.column("status"), "written"), pc.is_valid(alive.column("sha256"))))
        for keys in ended_keys:
            if len(keys) and live.num_rows:
                live = live.filter(pc.invert(pc.is_in(live.column("key"), value_set=keys)))
        if live.num_rows:
            t = live.select(live_hash_schema().names).cast(live_hash_schema())
            for b in t.to_batches():
                self.out.live_hashes.add(b)

    def requeue(self) -> None:
        """Duplicates whose original is superseded in this generation are converted again."""
        import pyarrow.compute as pc

        self.watch.close()
        self.ended.close()
        if self.out.live_hashes is not None:
            self.out.live_hashes.close()
        for p in range(self.watch.n):
            watch = self.watch.read(p)
            if not watch.num_rows:
                continue
            ended = self.ended.read(p)
            hit = watch.filter(pc.is_in(watch.column("of_key"), value_set=pc.unique(ended.column("key"))))
            if not hit.num_rows:
                continue
            self.out.report["requeued"] += hit.num_rows
            self._add_requeued(hit)

    def _add_requeued(self, hit: Any) -> None:
        import pyarrow as pa

        n = hit.num_rows
        none_s, none_i = pa.nulls(n, pa.large_string()), pa.nulls(n, pa.int64())
        cols = [hit.column(c) for c in plan_schema().names] + [
            hit.column("pos"), pa.array(["requeued"] * n, type=pa.large_string()), none_s, none_i, none_i, none_s,
            pa.nulls(n, pa.binary(32))]
        self.out._todo.add(pa.Table.from_arrays(cols, schema=todo_schema()))
        marks = {"key": hit.column("key"), "status": pa.array(["retired"] * n, type=pa.large_string()),
                 "generation": pa.array([self.generation] * n, type=pa.int64()), "target": hit.column("dup_generation")}
        self.out._marks.append(_held_from(marks, n))


def _key_schema():
    import pyarrow as pa

    return pa.schema([("key", pa.large_string())])


def _held_from(columns: dict[str, Any], n: int) -> Any:
    """A held-schema table from some columns (the others null, or -1 / 0 where not nullable in use)."""
    import pyarrow as pa

    schema = held_schema()
    arrays = []
    for f in schema:
        col = columns.get(f.name)
        if col is None:
            col = pa.array([-1] * n, type=f.type) if f.name in ("offset", "length", "row", "label", "sample") else \
                pa.array([0] * n, type=f.type) if f.name == "stamp" else pa.nulls(n, f.type)
        if f.name == "url" and columns.get("url") is None:
            col = pa.array([b""] * n, type=pa.large_binary())
        arrays.append(col.cast(f.type) if hasattr(col, "cast") else col)
    return pa.Table.from_arrays(arrays, schema=schema)


def _newest(records: Any) -> Any:
    """Per key, its record of the highest generation."""
    import numpy as np
    import pyarrow as pa

    if records.num_rows <= 1:
        return records.combine_chunks()
    records = records.sort_by([("key", "ascending"), ("generation", "ascending")])
    keys = records.column("key").to_numpy(zero_copy_only=False)
    last = np.ones(len(keys), dtype=bool)
    last[:-1] = keys[1:] != keys[:-1]
    return records.filter(pa.array(last)).combine_chunks()


def _alive(held: Any) -> Any:
    """Per key, the newest ``written``/``duplicate`` record that no mark ends."""
    import pyarrow as pa
    import pyarrow.compute as pc

    status = held.column("status")
    recs = held.filter(pc.is_in(status, value_set=pa.array(["written", "duplicate"], type=pa.large_string())))
    marks = held.filter(pc.is_in(status, value_set=pa.array(list(MARKS), type=pa.large_string())))
    if marks.num_rows and recs.num_rows:
        dead = marks.select(["key", "target"]).rename_columns(["key", "generation"])
        dead = dead.group_by(["key", "generation"]).aggregate([])
        recs = recs.join(dead, keys=["key", "generation"], join_type="left anti", use_threads=False)
    return _newest(recs)
