"""Listing scales (issue 12, finding 9; issue 18): linear in the number of rows, even when every row
names the same file; planning streams the listing into parts in memory that does not grow with the
inputs; a shard task is a small descriptor."""

from __future__ import annotations

import tracemalloc

import pytest

from resize_pipeline.sources import keys, list_source
from resize_pipeline.sources.keys import StreamingKeys, sanitize_key, unique_keys


def _manifest(tmp_path, rows: int, same: bool):
    man = tmp_path / "m.csv"
    with open(man, "w") as fh:
        fh.write("path,label\n")
        for i in range(rows):
            fh.write(f"{'imgs/same.jpg' if same else f'imgs/{i // 1000:04d}/{i:08d}.jpg'},{i % 10}\n")
    return man


@pytest.mark.parametrize("rows", [2000, 8000])
def test_repeated_rows_list_in_linear_work(tmp_path, monkeypatch, rows):
    """The same path on every row: each row costs a bounded number of key computations (the old
    listing re-derived every earlier suffix for each new copy: N^2/2)."""
    calls = {"digest": 0}
    real = keys._digest

    def counting(text: str) -> str:
        calls["digest"] += 1
        return real(text)

    monkeypatch.setattr(keys, "_digest", counting)
    listing = list_source(str(_manifest(tmp_path, rows, same=True)))
    got = [it.key for it in listing.items]
    assert len(set(got)) == rows and got[:3] == ["imgs__same", f"imgs__same_{real('imgs/same.jpg')}",
                                                  f"imgs__same_{real('imgs/same.jpg')}_1"]
    assert calls["digest"] <= 2 * rows


def test_100k_repeated_rows(tmp_path):
    listing = list_source(str(_manifest(tmp_path, 100_000, same=True)))
    assert len(listing.items) == 100_000
    assert listing.items[99_999].key.endswith("_99998")


def test_keys_match_the_reference_rule_on_collisions():
    rels = ["a b.jpg", "a_b.jpg", "a..b.jpg", "a b.jpg", "a b.jpg", "x/y.png", "x__y.png", "a_b_" + keys._digest("a b.jpg")]
    sk = StreamingKeys()
    got = sk.assign(rels[:4]) + sk.assign(rels[4:])
    sk.close()
    assert got == unique_keys(rels) and len(set(got)) == len(got)


def _plan(tmp_path, man, samples_per_shard: int = 100):
    """Plan `man` into parts in a DEST (as a convert job does), tasks dropped as they come; returns
    (tasks released, Python memory peak in bytes, Arrow memory peak in bytes)."""
    import pyarrow as pa

    from resize_pipeline.planning import Layout, Planner
    from resize_pipeline.sinks.dest import Dest

    listing = list_source(str(man))
    dest = Dest(str(tmp_path / f"dest-{man.stem}"))
    planner = Planner(listing, Layout(listing.bound, samples_per_shard), dest)
    seen = {"tasks": 0, "arrow": 0}

    def on_part(ev):
        seen["tasks"] += len(ev.tasks)
        seen["arrow"] = max(seen["arrow"], pa.total_allocated_bytes())

    tracemalloc.start()
    planner.run(on_part)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seen["tasks"], peak, seen["arrow"]


def _captioned(tmp_path, rows: int):
    man = tmp_path / f"m{rows}.csv"
    with open(man, "w") as fh:
        fh.write("path,label,caption\n")
        for i in range(rows):
            fh.write(f"imgs/{i // 1000:04d}/{i:08d}.jpg,{i % 10},a caption of sixty characters for image {i:08d} here\n")
    return man


def test_planning_memory_does_not_grow_with_inputs_even_with_metadata(tmp_path, monkeypatch):
    """Issue 18 and issue 20 (metadata columns in the driver): the driver streams the manifest into
    listing parts; 4x the rows (with a 60-character caption column, read into each row's metadata)
    plans in the same memory. Blocks, parts and the in-memory key set are made small here so that
    the rows span many of them."""
    from resize_pipeline.sources import common, keyindex, manifest, manifest_io, parts

    monkeypatch.setattr(common, "BLOCK", 1000)
    monkeypatch.setattr(manifest, "BLOCK", 1000)
    monkeypatch.setattr(manifest_io, "CSV_BLOCK", 1 << 16)
    monkeypatch.setattr(manifest_io, "READ_BLOCK", 1 << 16)
    monkeypatch.setattr(parts, "PART_ROWS", 2000)
    monkeypatch.setattr(keyindex, "SPILL", 3000)
    small = _plan(tmp_path, _captioned(tmp_path, 20_000))
    large = _plan(tmp_path, _captioned(tmp_path, 80_000))
    assert (small[0], large[0]) == (200, 800)
    assert large[1] < small[1] * 1.3 + 200_000, f"Python memory {small[1]} -> {large[1]} bytes"
    assert large[2] < small[2] * 1.3 + 1_000_000, f"Arrow memory {small[2]} -> {large[2]} bytes"


def test_a_shard_task_is_a_small_descriptor_whatever_the_shard_size(tmp_path):
    """A task on a listing part pickles as its address (no rows), and its Ray row is well under 1 KB."""
    import pickle

    import pyarrow as pa

    from resize_pipeline.planning import Layout, Planner
    from resize_pipeline.sinks.dest import Dest
    from workers.actors import task_row

    man = _manifest(tmp_path, 5000, same=False)
    sizes = {}
    for per in (10, 1000):
        listing = list_source(str(man))
        got: list = []
        planner = Planner(listing, Layout(listing.bound, per), Dest(str(tmp_path / f"d{per}")))
        planner.run(lambda ev, got=got: got.extend(ev.tasks))
        task = got[3]
        blob = pickle.dumps(task)
        row = task_row(**task.descriptor())
        sizes[per] = (len(blob), pa.Table.from_pylist([row]).nbytes)
        again = pickle.loads(blob)
        assert again.items == task.items and again.size == per  # the worker reads its rows back
        assert again.items[0].key == sanitize_key(f"imgs/{(3 * per) // 1000:04d}/{3 * per:08d}.jpg")
    assert all(b < 400 and r < 1024 for b, r in sizes.values()), sizes
    assert abs(sizes[10][0] - sizes[1000][0]) < 8, sizes  # no bigger for 100x the rows
