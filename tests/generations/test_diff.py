"""`generations.diff`: held vs listed as a pure function over Arrow batches, with bounded memory."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from resize_pipeline.generations.diff import diff
from resize_pipeline.generations.records import held_table
from resize_pipeline.sources.base import arrow_schema

from .helpers import column, held, keys_of, listed

ROOT = Path(__file__).resolve().parents[2]


def _run(listed_batches, held_table_, **kw):
    kw.setdefault("generation", 2)
    with diff(listed_batches, held_table_.to_batches(), **kw) as d:
        return (dict(d.report), dict(d.examples), keys_of(d.todo()), column(d.todo(), "reason"),
                [t.to_pylist() for t in d.marks()], [t.to_pylist() for t in d.replaced()])


def test_each_kind_of_row_and_what_on_change_does():
    #   a: unchanged  b: held stamp unknown  c: new stamp  d: gone  e: new  f: other url  g: other label
    h = held(list("abcdfg"), [1, 0, 3, 4, 6, 7])
    h = h.set_column(h.schema.get_field_index("label"), "label", pa.array([-1, -1, -1, -1, -1, 2], pa.int64()))
    lst = [listed(list("abcefg"), [1, 2, 30, 5, 6, 7],
                  urls=[*(f"file:///src/{k}.jpg" for k in "abce"), "file:///elsewhere/f.jpg", "file:///src/g.jpg"],
                  labels=[-1, -1, -1, -1, -1, 3])]
    report, examples, todo, reasons, marks, replaced = _run(lst, h, on_change="refuse")
    assert {k: report[k] for k in ("new", "changed", "unchanged", "unchecked", "deleted", "held", "listed")} == \
        {"new": 1, "changed": 3, "unchanged": 1, "unchecked": 1, "deleted": 1, "held": 6, "listed": 6}
    assert examples == {"changed": ["c", "f", "g"], "deleted": ["d"]}
    assert todo == ["e"] and reasons == ["new"] and marks == [] and replaced == []  # refuse: the caller decides

    report, _, todo, reasons, marks, replaced = _run(lst, h, on_change="skip")
    assert todo == ["e"] and replaced == [] and report["changed"] == 3

    _, _, todo, reasons, marks, replaced = _run(lst, h, on_change="replace", prune_deleted=True)
    assert todo == ["c", "e", "f", "g"] and reasons == ["changed", "new", "changed", "changed"]  # listing order
    assert [(m["key"], m["status"], m["shard"], m["sample"], m["target"], m["generation"]) for t in marks for m in t] \
        == [("d", "superseded", "shard-00000", 3, 1, 2)]
    assert sorted((m["key"], m["status"], m["sample"], m["target"]) for t in replaced for m in t) == \
        [("c", "superseded", 2, 1), ("f", "superseded", 4, 1), ("g", "superseded", 5, 1)]


def test_an_empty_dest_converts_everything_in_listing_order():
    keys = [f"k{i:03d}" for i in range(50)]
    report, _, todo, reasons, _, _ = _run([listed(keys[:20]), listed(keys[20:])], held([]), rows_per_partition=7,
                                          expected_rows=50)
    assert todo == keys and set(reasons) == {"new"} and report["new"] == 50 and report["listed"] == 50


def test_failed_inputs_are_retried_and_marks_end_records():
    h = pa.concat_tables([
        held(["a"], status=["failed"], sample=[-1]),                                  # failed: retried
        held(["b"], generation=[1]),                                                  # written, then pruned:
        held(["b"], status=["superseded"], generation=[2], target=[1]),               # ended -> new again
        held(["c"], [5], generation=[1]),                                             # written in 1, its newer
        held(["c"], [6], generation=[2], shard=["shard-00001"], status=["written"]),  # version 2 is the one
        held(["c"], [6], generation=[3], status=["failed"], sample=[-1]),             # a later failure: ignored
    ])
    report, _, todo, reasons, _, _ = _run([listed(["a", "b", "c"], [1, 2, 6])], h, generation=4)
    assert todo == ["a", "b"] and reasons == ["retried", "new"]
    assert report["retried"] == 1 and report["new"] == 1 and report["unchanged"] == 1 and report["held"] == 1


def test_a_duplicate_whose_original_is_superseded_is_converted_again():
    h = pa.concat_tables([
        held(["orig"], [1]),
        held(["dup"], [2], status=["duplicate"], shard=[None], sample=[-1], of_key=["orig"], generation=[1]),
        held(["other"], [3], status=["duplicate"], shard=[None], sample=[-1], of_key=["keep"], generation=[1]),
        held(["keep"], [4]),
    ])
    lst = [listed(["dup", "keep", "orig", "other"], [2, 4, 10, 3])]  # orig changed: replaced
    report, _, todo, reasons, marks, replaced = _run(lst, h, on_change="replace", rows_per_partition=1,
                                                     expected_rows=8)
    assert todo == ["dup", "orig"] and reasons == ["requeued", "changed"] and report["requeued"] == 1
    assert [(m["key"], m["status"], m["target"]) for t in marks for m in t] == [("dup", "retired", 1)]
    assert [(m["key"], m["status"]) for t in replaced for m in t] == [("orig", "superseded")]
    # pruned instead of replaced: the same
    report, _, todo, reasons, marks, _ = _run([listed(["dup", "keep", "other"], [2, 4, 3])], h, prune_deleted=True)
    assert todo == ["dup"] and reasons == ["requeued"]
    assert sorted((m["key"], m["status"]) for t in marks for m in t) == [("dup", "retired"), ("orig", "superseded")]


def test_records_of_an_earlier_version_count_as_generation_1_and_come_back_matched():
    legacy = held(["a", "b", "gone"], [0, 0, 0], url=["", "", ""], generation=[0, 0, 0])
    failed = held(["x"], [0], url=[""], generation=[0], status=["failed"], sample=[-1])
    lst = [listed(["a", "b", "n", "x"], [11, 12, 13, 14])]
    with diff(lst, pa.concat_tables([legacy, failed]).to_batches(), generation=2) as d:
        assert keys_of(d.todo()) == ["n", "x"]  # x failed before: retried
        assert {k: d.report[k] for k in ("unchecked", "deleted", "changed")} == {"unchecked": 2, "deleted": 1,
                                                                                "changed": 0}
        adopted = [r for b in d.adopted() for r in b.to_pylist()]
    assert [(r["key"], r["pos"], r["stamp"], r["status"]) for r in adopted] == [
        ("gone", -1, 0, "written"), ("a", 0, 11, "written"), ("b", 1, 12, "written"), ("x", 3, 14, "failed")]
    assert adopted[1]["url"] == b"file:///src/a.jpg" and adopted[0]["url"] == b""


def test_rows_in_the_plain_listing_schema_and_names_that_are_not_utf8():
    bad = "caf\udce9.jpg"  # a file name with a byte that is not UTF-8
    rows = {"key": ["a", "b"], "url": ["file:///src/a.jpg", "file:///src/b.jpg"], "label": [-1, -1],
            "label_name": ["", ""], "meta": ["", ""], "offset": [-1, -1], "length": [-1, -1], "row": [-1, -1],
            "stamp": [5, 6]}
    as_text = pa.RecordBatch.from_pydict(rows, schema=arrow_schema())
    h = held_table({"key": ["a"], "url": ["file:///src/a.jpg"], "stamp": [5], "status": ["written"],
                    "generation": [1], "shard": ["shard-00000"], "sample": [0]})
    with diff([as_text], h.to_batches(), generation=2) as d:
        assert keys_of(d.todo()) == ["b"] and d.report["unchanged"] == 1
    h2 = held_table({"key": ["c"], "url": [f"file:///src/{bad}"], "stamp": [7], "status": ["written"],
                     "generation": [1], "shard": ["shard-00000"], "sample": [0]})
    with diff([listed(["c"], [7], urls=[f"file:///src/{bad}"])], h2.to_batches(), generation=2) as d:
        assert d.report["unchanged"] == 1  # the exact bytes compare equal


@pytest.mark.parametrize("per", [10**9, 500, 37])
def test_the_result_does_not_depend_on_the_partitions(per):
    rng = random.Random(5)
    keys = [f"img/{rng.getrandbits(40):010x}" for _ in range(3000)]
    held_keys = rng.sample(keys, 2000) + [f"gone/{i}" for i in range(300)]
    stamps = {k: rng.randrange(1, 9) for k in keys}
    h = held(held_keys, [stamps.get(k, 1) if rng.random() > 0.1 else 99 for k in held_keys],
             sample=list(range(len(held_keys))))
    lst = [listed(keys[i:i + 700], [stamps[k] for k in keys[i:i + 700]]) for i in range(0, 3000, 700)]
    report, examples, todo, reasons, marks, replaced = _run(lst, h, on_change="replace", prune_deleted=True,
                                                            rows_per_partition=per, expected_rows=5300)
    assert report["new"] == 1000 and report["deleted"] == 300 and report["listed"] == 3000
    assert todo == [k for k in keys if k in set(todo)]  # listing order
    assert len(todo) == 1000 + report["changed"]
    ref = _run(lst, h, on_change="replace", prune_deleted=True)
    assert (report, examples, todo, reasons) == ref[:4]
    assert sorted(m["key"] for t in marks for m in t) == sorted(m["key"] for t in ref[4] for m in t)
    assert sorted(m["key"] for t in replaced for m in t) == sorted(m["key"] for t in ref[5] for m in t)


MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys
    import pyarrow as pa
    from resize_pipeline.generations.diff import diff
    from resize_pipeline.generations.records import held_table, plan_batch

    n, chunk = int(sys.argv[1]), 20000
    def listed():
        for a in range(0, n, chunk):
            keys = [f"folder-{i % 977:04d}/image-{i:012d}" for i in range(a, min(n, a + chunk))]
            m = len(keys)
            yield plan_batch({"key": keys, "url": ["file:///data/raw/" + k + ".jpg" for k in keys],
                              "label": [-1] * m, "label_name": [""] * m, "meta": [""] * m, "offset": [-1] * m,
                              "length": [-1] * m, "row": [-1] * m, "stamp": [7] * m})
    def held():  # 90 % of them held, in shards of 1000
        for a in range(0, n * 9 // 10, chunk):
            idx = range(a, min(n * 9 // 10, a + chunk))
            keys = [f"folder-{i % 977:04d}/image-{i:012d}" for i in idx]
            yield from held_table({"key": keys, "url": ["file:///data/raw/" + k + ".jpg" for k in keys],
                                   "stamp": [7] * len(keys), "status": ["written"] * len(keys),
                                   "generation": [1] * len(keys), "shard": [f"shard-{i // 1000:05d}" for i in idx],
                                   "sample": [i % 1000 for i in idx]}).to_batches()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with diff(listed(), held(), generation=2, expected_rows=2 * n, rows_per_partition=25000) as d:
        todo = sum(b.num_rows for b in d.todo())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"todo": todo, "grew_mib": (peak - base) / 1024}))
""")


@pytest.mark.slow
def test_memory_is_bounded_by_the_partition_size_not_the_input_count(tmp_path):
    """4x the rows must not need 4x the memory: the peak stays about one partition's worth."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    got = {}
    for n in (100_000, 400_000):
        r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(n)], env=env, capture_output=True, text=True,
                           timeout=280, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        got[n] = json.loads(r.stdout.strip().splitlines()[-1])
        assert got[n]["todo"] == n // 10
    small, large = got[100_000]["grew_mib"], got[400_000]["grew_mib"]
    # 400k listed + 360k held rows are ~110 MB as Arrow tables; bounded, the peak barely moves
    assert large < small + 40, got
