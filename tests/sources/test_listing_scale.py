"""Listing scales (issue 12, finding 9): linear in the number of rows, even when every row names the
same file, and a few bytes per input (a compact columnar table; shard tasks refer to slices)."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from resize_pipeline.shards import plan_shards
from resize_pipeline.sources import keys, list_source
from resize_pipeline.sources.keys import sanitize_key, unique_keys


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
    got = list_source_keys(rels)
    assert got == unique_keys(rels) and len(set(got)) == len(got)


def list_source_keys(rels: list[str]) -> list[str]:
    from resize_pipeline.sources.table import ItemTable, Joined, Text

    table = ItemTable(Text.of(rels), Joined("file:///")).finish()
    return table.keys(0, len(rels))


def test_memory_per_input_is_small(tmp_path):
    """50k manifest rows: the listing keeps < 100 bytes per input (Arrow text + numpy labels; the
    old list of SourceItems kept ~300), and planning adds nothing per input."""
    import pyarrow as pa

    n = 50_000
    man = _manifest(tmp_path, n, same=False)
    tracemalloc.start()
    arrow0 = pa.total_allocated_bytes()
    listing = list_source(str(man))
    listed = tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes() - arrow0
    tasks = plan_shards(listing.items, 1000)
    planned = tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes() - arrow0 - listed
    tracemalloc.stop()
    assert len(tasks) == 50 and tasks[-1].size == 1000
    assert listed / n < 100, f"{listed / n:.0f} bytes per input"
    assert planned < 50_000, f"planning kept {planned} bytes"
    assert tasks[3].items[0].key == sanitize_key("imgs/0003/00003000.jpg")


def test_a_task_pickles_with_its_own_rows_only(tmp_path):
    import pickle

    listing = list_source(str(_manifest(tmp_path, 5000, same=False)))
    task = plan_shards(listing.items, 100)[7]
    blob = pickle.dumps(task)
    assert len(blob) < 100 * 400  # its 100 rows, not the 5000 of the listing
    again = pickle.loads(blob)
    assert again.items == task.items and again.name == task.name and again.size == 100
    assert json.loads(json.dumps([it.key for it in again.items]))[0] == task.items[0].key
