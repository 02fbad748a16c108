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
    {"prefix": "shard", "width": 5, "shards": 10**16, "exts": ["tar"], "parts": False},  # more than any DEST holds
    {"prefix": "shard", "width": 5, "shards": -1, "exts": ["tar"], "parts": False},
    {"prefix": ".*", "width": 5, "shards": 3, "exts": ["tar"], "parts": False},          # not a prefix we write
    {"prefix": "shard", "width": 5, "shards": 3, "exts": ["json"], "parts": False},      # not a shard extension
    {"prefix": "shard", "width": "5", "shards": 3, "exts": ["tar"], "parts": False},     # text, not a number
    {"prefix": "shard", "width": 5, "shards": 3, "exts": [], "parts": False},
])
def test_a_record_that_no_run_of_ours_writes_gives_no_names(outputs):
    assert OutputNames.from_record({"outputs": outputs}) is None


def test_generations_continue_the_numbering_past_the_width_in_one_spelling():
    names = [OutputNames("shard", 5, 100_002, ("tar", "parquet"), False)]
    assert layout.shard_name("shard", 100_001, 5) == "shard-100001"
    ours = ["shard-99999.tar", "shard-100000.tar", "shard-100001.parquet", "shard-00007.tar"]
    not_ours = ["shard-100002.tar", "shard-0100000.tar", "shard-000007.tar", "shard-7.tar"]
    assert [n for n in ours + not_ours if layout.is_ours(n, names)] == ours


def test_is_ours_covers_input_records_generation_records_and_generation_indexes():
    names = [OutputNames("shard", 5, 2, ("tar",), False)]
    inputs, gen = layout.INPUTS_DIR, layout.GENERATIONS_DIR
    assert layout.inputs_name("shard-00001") == (inputs, "shard-00001.parquet")
    assert layout.is_ours("shard-00001.parquet", names, folder=inputs)
    assert not layout.is_ours("shard-00002.parquet", names, folder=inputs)
    assert not layout.is_ours("notes.parquet", names, folder=inputs)
    assert layout.is_ours(layout.temp_name("shard-00000.parquet"), names, folder=inputs)
    for kind in layout.GENERATION_KINDS:
        folder, name = layout.generation_file(3, kind)
        assert folder == gen and layout.is_ours(name, names, folder=gen)
    assert not layout.is_ours("000003.notes.parquet", names, folder=gen)
    assert not layout.is_ours("3.plan.parquet", names, folder=gen)
    with pytest.raises(ValueError):
        layout.generation_file(0, "plan")
    assert layout.dali_index_name("shard-00001.tar", 3) == "shard-00001.g000003.idx"
    assert layout.is_ours("shard-00001.g000003.idx", names) and layout.is_ours("shard-00001.idx", names)
    assert not layout.is_ours("shard-00002.g000003.idx", names) and not layout.is_ours("shard-00001.g3.idx", names)
