"""`generations.dedup` (pure) and `generations.partition` (the disk partitions both joins use)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from resize_pipeline.generations import partition
from resize_pipeline.generations.dedup import dedup
from resize_pipeline.generations.diff import diff

from .helpers import column, held, keys_of, listed, sha


def _todo(keys, contents, **held_kw):
    """Rows to convert (through a real diff against an empty DEST) with the sha256 of `contents`."""
    h = held_kw.pop("held", held([]))
    with diff([listed(keys, held_kw.pop("stamps", None))], h.to_batches(), generation=2,
              on_change="replace", hashes=True) as d:
        rows = []
        for b in d.todo():
            t = pa.Table.from_batches([b])
            digests = [sha(contents[k]) if contents.get(k) is not None else None for k in t.column("key").to_pylist()]
            rows.append(t.append_column("sha256", pa.array(digests, pa.binary(32))).to_batches()[0])
        live = [d.live_hashes.read(i) for i in range(d.live_hashes.n)]
    return rows, live


@pytest.mark.parametrize("per", [10**9, 1])
def test_duplicates_within_the_run_keep_the_first_in_listing_order(per):
    keys = ["a", "b", "c", "d", "e"]
    rows, _ = _todo(keys, {"a": "X", "b": "Y", "c": "X", "d": None, "e": "X"})
    with dedup(rows, [], generation=2, rows_per_partition=per, expected_rows=10) as dd:
        assert keys_of(dd.kept()) == ["a", "b", "d"]  # d could not be read: converted (its read fails there)
        prov = [r for t in dd.provisional for r in t.to_pylist()]
        assert sorted((r["key"], r["of_key"], r["status"]) for r in prov) == [("c", "a", "duplicate"),
                                                                             ("e", "a", "duplicate")]
        assert dd.report == {"duplicates": 2, "restamped": 0}


def test_duplicates_of_held_samples_and_restamps():
    h = pa.concat_tables([
        held(["old1"], [1], sha256=[sha("P")], shard=["shard-00001"], sample=[4]),
        held(["old0"], [1], sha256=[sha("P")], shard=["shard-00000"], sample=[2]),  # also P: the oldest wins
        held(["touched"], [5], sha256=[sha("T")], sample=[3]),
    ])
    keys = ["new", "touched", "twin"]
    rows, live = _todo(keys, {"new": "P", "touched": "T", "twin": "T"}, held=h, stamps=[9, 6, 9])
    # the diff's live samples: not "touched", which the update replaces (its stamp changed)
    assert sorted(r["key"] for t in live for r in t.to_pylist()) == ["old0", "old1"]
    with dedup(rows, [b for t in live for b in t.to_batches()], generation=2) as dd:
        assert keys_of(dd.kept()) == []
        recs = sorted((r["key"], r["status"], r["of_key"], r["shard"], r["sample"], r["target"])
                      for t in dd.records for r in t.to_pylist())
        assert recs == [
            ("new", "duplicate", "old0", None, -1, None),  # the same bytes as a held sample
            ("touched", "retired", None, None, -1, 1),     # its bytes did not change: the old record retires,
            ("touched", "written", None, "shard-00000", 3, None),  # a new one points at the same sample
            ("twin", "duplicate", "touched", None, -1, None),  # equal to the restamped sample: a duplicate
        ]
        assert dd.report == {"duplicates": 2, "restamped": 1}


def test_bucket_ids_are_stable_and_spread(tmp_path):
    keys = pa.array([f"k{i}" for i in range(20000)] + [None, ""], pa.large_string())
    ids = partition.bucket_ids(keys, 16)
    assert ids.min() >= 0 and ids.max() < 16
    assert (ids == partition.bucket_ids(keys.cast(pa.large_binary()), 16)).all()  # text or bytes alike
    assert (partition.bucket_ids(keys.slice(5, 100), 16) == ids[5:105]).all()  # offsets honoured
    counts = [int((ids == i).sum()) for i in range(16)]
    assert min(counts) > 20000 / 16 * 0.8
    assert partition.partitions_for(0) == 1 and partition.partitions_for(10**12) == partition.MAX_PARTITIONS


def test_sorted_runs_merge_back_in_order(tmp_path):
    import random

    rng = random.Random(1)
    pos = list(range(0, 5000, 3))
    rng.shuffle(pos)
    runs = partition.SortedRuns(str(tmp_path), "r", pa.schema([("pos", pa.int64()), ("v", pa.large_string())]))
    for i in range(0, len(pos), 300):
        chunk = pos[i:i + 300]
        runs.add(pa.table({"pos": chunk, "v": [str(p) for p in chunk]},
                          schema=pa.schema([("pos", pa.int64()), ("v", pa.large_string())])))
    merged = list(runs.merge(window=97))
    assert column(merged, "pos") == sorted(pos) and column(merged, "v") == [str(p) for p in sorted(pos)]
