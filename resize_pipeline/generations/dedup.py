"""``--dedup sha256``: inputs whose bytes equal a sample DEST holds, or another input of the same run.

`dedup(todo, held_hashes, ...)` is a pure function over Arrow record batches:

- `todo`: the rows to convert (`diff.todo_schema` plus ``sha256``: the digest of the input's bytes,
  null where they could not be read), in listing order;
- `held_hashes`: the live samples' digests (`diff.live_hash_schema`), e.g. `Diff.live_hashes`.

It decides, the same way whatever the engine or the order inputs are read in:

- a changed input (``reason`` ``changed``) whose bytes are those of the sample it replaces is
  **restamped**: not converted; a record points the key's new stamp at the old sample
  (`Dedup.records`, status ``written``), and the old record is retired;
- an input whose bytes equal a live sample's is a **duplicate** of it (``of_key``: that sample's key,
  the oldest one when several hold those bytes);
- among inputs of this run with equal bytes, the first in listing order is converted and the others
  are its duplicates (`Dedup.provisional`: they hold only if that first one is written; the caller
  records them as failed otherwise);
- everything else is converted (`Dedup.kept`, in listing order).

Both sides are hash-partitioned by digest on local disk, like `diff`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.generations import partition
from resize_pipeline.generations.diff import live_hash_schema, todo_schema
from resize_pipeline.generations.records import held_schema


def hashed_schema():
    """`diff.todo_schema` plus the input's ``sha256``."""
    import pyarrow as pa

    return pa.schema(list(todo_schema()) + [pa.field("sha256", pa.binary(32))])


@dataclass
class Dedup:
    report: dict[str, int] = field(default_factory=dict)
    directory: str = ""
    _kept: Any = None
    records: list[Any] = field(default_factory=list)
    provisional: list[Any] = field(default_factory=list)

    def kept(self) -> Iterator[Any]:
        """The rows still to convert (`hashed_schema`), in listing order."""
        return self._kept.merge()

    def close(self) -> None:
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = ""

    def __enter__(self) -> Dedup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dedup(todo: Iterable[Any], held_hashes: Iterable[Any] | Any, *, generation: int, expected_rows: int = 0,
          rows_per_partition: int | None = None, workdir: str | None = None) -> Dedup:
    """Split `todo` into rows to convert, duplicates and restamps (see the module docstring).
    `held_hashes`: batches, or a `partition.PartitionSet` by ``sha256`` (read partition by partition
    when its count matches this call's)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    per = rows_per_partition or partition.ROWS_PER_PARTITION
    n = int(min(partition.MAX_PARTITIONS, max(1, -(-int(expected_rows) // per))))
    directory = tempfile.mkdtemp(prefix="resize-dedup-", dir=workdir)
    out = Dedup(directory=directory, report={"duplicates": 0, "restamped": 0})
    try:
        schema = hashed_schema()
        out._kept = partition.SortedRuns(directory, "kept", schema)
        tp = partition.PartitionSet(directory, "todo", n, schema, "sha256")
        extra = partition.PartitionSet(directory, "restamped", n, live_hash_schema(), "sha256")
        for batch in todo:
            t = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
            unread = t.filter(pc.invert(pc.is_valid(t.column("sha256"))))
            if unread.num_rows:
                out._kept.add(unread)
            t = t.filter(pc.is_valid(t.column("sha256")))
            same = pc.and_(pc.equal(t.column("reason"), "changed"),
                           pc.and_(pc.equal(pc.fill_null(t.column("prev_status"), ""), "written"),
                                   pc.fill_null(pc.equal(t.column("sha256"), t.column("prev_sha256")), False)))
            restamped = t.filter(same)
            if restamped.num_rows:
                out.report["restamped"] += restamped.num_rows
                out.records.append(_restamps(restamped, generation))
                for b in _as_live(restamped).to_batches():
                    extra.add(b)
            for b in t.filter(pc.invert(same)).to_batches():
                tp.add(b)
        tp.close()
        extra.close()
        hp = held_hashes if isinstance(held_hashes, partition.PartitionSet) and held_hashes.n == n else None
        if hp is None:
            hp = partition.PartitionSet(directory, "held", n, live_hash_schema(), "sha256")
            for batch in _batches_of(held_hashes):
                hp.add(batch)
            hp.close()
        for p in range(n):
            rows = tp.read(p)
            if rows.num_rows:
                held = pa.concat_tables([hp.read(p), extra.read(p)])
                _partition(out, rows, held, generation)
        return out
    except BaseException:
        out.close()
        raise


def _batches_of(source: Any) -> Iterator[Any]:
    if source is None:
        return
    if isinstance(source, partition.PartitionSet):
        for i in range(source.n):
            yield from source.read(i).to_batches()
        return
    yield from source


def _as_live(restamped: Any) -> Any:
    import pyarrow as pa

    return pa.table({"sha256": restamped.column("sha256"), "key": restamped.column("key"),
                     "shard": restamped.column("prev_shard"), "sample": restamped.column("prev_sample"),
                     "generation": restamped.column("prev_generation")}, schema=live_hash_schema())


def _records(rows: Any, generation: int, status: str, **cols: Any) -> Any:
    """Held records for `rows` (todo columns) with `status` and extra columns `cols`."""
    import pyarrow as pa

    n = rows.num_rows
    base = {
        "key": rows.column("key"), "url": rows.column("url"), "offset": rows.column("offset"),
        "length": rows.column("length"), "row": rows.column("row"), "label": rows.column("label"),
        "stamp": rows.column("stamp"), "status": pa.array([status] * n, type=pa.large_string()),
        "generation": pa.array([generation] * n, type=pa.int64()), "shard": pa.nulls(n, pa.large_string()),
        "sample": pa.array([-1] * n, type=pa.int64()), "sha256": rows.column("sha256"),
        "of_key": pa.nulls(n, pa.large_string()), "target": pa.nulls(n, pa.int64()),
        "stage": pa.nulls(n, pa.large_string()),
    }
    base.update(cols)
    schema = held_schema()
    return pa.Table.from_arrays([base[f.name] for f in schema], schema=schema)


def _restamps(rows: Any, generation: int) -> Any:
    """A record pointing each key's new stamp at its old sample, and a mark retiring the old record."""
    import pyarrow as pa

    n = rows.num_rows
    new = _records(rows, generation, "written", shard=rows.column("prev_shard"), sample=rows.column("prev_sample"))
    retire = _records(rows, generation, "retired", target=rows.column("prev_generation"),
                      url=pa.array([b""] * n, type=pa.large_binary()), stamp=pa.array([0] * n, type=pa.int64()),
                      sha256=pa.nulls(n, pa.binary(32)))
    return pa.concat_tables([new, retire])


def _partition(out: Dedup, rows: Any, held: Any, generation: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if held.num_rows:
        held = held.sort_by([("sha256", "ascending"), ("generation", "ascending"), ("shard", "ascending"),
                             ("sample", "ascending")])
        digests = held.column("sha256").to_numpy(zero_copy_only=False)
        first = np.ones(len(digests), dtype=bool)
        first[1:] = digests[1:] != digests[:-1]
        best = held.filter(pa.array(first)).select(["sha256", "key"]).rename_columns(["sha256", "held_key"])
        rows = rows.join(best, keys="sha256", join_type="left outer", use_threads=False)
        of_held = rows.filter(pc.is_valid(rows.column("held_key")))
        if of_held.num_rows:
            out.report["duplicates"] += of_held.num_rows
            out.records.append(_records(of_held, generation, "duplicate", of_key=of_held.column("held_key")))
        rows = rows.filter(pc.invert(pc.is_valid(rows.column("held_key")))).drop_columns(["held_key"])
    if not rows.num_rows:
        return
    rows = rows.sort_by([("sha256", "ascending"), ("pos", "ascending")])
    digests = rows.column("sha256").to_numpy(zero_copy_only=False)
    first = np.ones(len(digests), dtype=bool)
    first[1:] = digests[1:] != digests[:-1]
    starts = np.maximum.accumulate(np.where(first, np.arange(len(first)), 0))
    out._kept.add(rows.filter(pa.array(first)))
    later = ~first
    if later.any():
        keys = rows.column("key").to_numpy(zero_copy_only=False)
        dups = rows.filter(pa.array(later))
        of = pa.array(keys[starts[later]].tolist(), type=pa.large_string())
        out.report["duplicates"] += dups.num_rows
        out.provisional.append(_records(dups, generation, "duplicate", of_key=of))
