"""DEST's names: what is ours, and records that could widen it are refused."""

from __future__ import annotations

import pytest

from resize_pipeline import layout
from resize_pipeline.layout import OutputNames


def test_temp_names_round_trip_to_their_final_name():
    t = layout.temp_name("shard-00000.tar")
    assert layout.TEMP_RE.match(t) and layout.final_name(t) == "shard-00000.tar"
    assert layout.final_name("shard-00000.tar") is None


def test_is_ours_covers_documents_shards_stats_indexes_and_temps_only():
    names = [OutputNames("shard", 5, 2, ("tar",), False)]
    ours = ["_run.json", "_manifest.json", "_lock.json", "shard-00001.tar", "shard-00000.idx",
            layout.temp_name("shard-00000.tar")]
    not_ours = ["shard-00002.tar", "shard-00000.parquet", "notes.txt", "shard-00000.tar.bak", ".shard-00000.tar.swp"]
    assert [n for n in ours + not_ours if layout.is_ours(n, names)] == ours
    assert layout.is_ours("shard-00001.json", names, in_stats=True)
    assert not layout.is_ours("shard-00002.json", names, in_stats=True)


@pytest.mark.parametrize("outputs", [
    {"prefix": "shard", "width": 0, "shards": 3, "exts": ["tar"], "parts": False},       # no digits
    {"prefix": "shard", "width": 5, "shards": 10**6, "exts": ["tar"], "parts": False},   # more than fit
    {"prefix": ".*", "width": 5, "shards": 3, "exts": ["tar"], "parts": False},          # not a prefix we write
    {"prefix": "shard", "width": 5, "shards": 3, "exts": ["json"], "parts": False},      # not a shard extension
    {"prefix": "shard", "width": "5", "shards": 3, "exts": ["tar"], "parts": False},     # text, not a number
    {"prefix": "shard", "width": 5, "shards": 3, "exts": [], "parts": False},
])
def test_a_record_that_no_run_of_ours_writes_gives_no_names(outputs):
    assert OutputNames.from_record({"outputs": outputs}) is None
