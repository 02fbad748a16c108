"""``convert --update`` end to end on local disk: generations, changed/deleted inputs, the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from resize_pipeline.errors import ConfigError, OutputError
from resize_pipeline.readers import arrow_table, open_output

from .conftest import OPTIONS, make_legacy, manifest, run, tree, update

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "resize_pipeline.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def flags(src, dest, *more: str) -> list[str]:
    return ["convert", str(src.root), str(dest), "--size", "24x16", "--samples-per-shard", "4", "--format", "both",
            "--workers", "1", "-q", *more]


def live_keys(dest: Path, generation: int | None = None) -> list[str]:
    return sorted(arrow_table(str(dest), columns=["key"], generation=generation).column("key").to_pylist())


def test_the_first_update_of_an_empty_dest_is_a_plain_conversion(source, tmp_path):
    run(source, tmp_path / "plain")
    s = update(source, tmp_path / "grown")
    assert s.generation["generation"] == 1 and s.written == 9
    plain, grown = tree(tmp_path / "plain"), tree(tmp_path / "grown")
    shards = [n for n in plain if "/" not in n and n.endswith((".tar", ".parquet"))]
    assert len(shards) == 6 and all(grown[n][0] == plain[n][0] for n in shards)
    assert all(grown[n][0] == plain[n][0] for n in plain if n.startswith("_inputs/"))
    assert not any(n.endswith((".plan.parquet", ".pending.parquet")) for n in grown)  # removed once published


def test_only_what_is_new_is_converted_and_no_committed_shard_is_rewritten(source, tmp_path):
    dest = tmp_path / "out"
    run(source, dest)  # generation 1: a plain conversion
    before = tree(dest)
    source.add("cats", 3, start=5)
    s = update(source, dest)
    assert s.line().startswith("generation 2: 12 inputs listed: 3 new, 0 changed, 0 deleted, 0 duplicates")
    after = tree(dest)
    for name, (data, mtime) in before.items():  # shards, input records and stats of generation 1: untouched
        if name.startswith(("shard-", "_inputs/", "_stats/")):
            assert after[name] == (data, mtime), name
    m = manifest(dest)
    assert [g["generation"] for g in m["generations"]] == [1, 2]
    assert m["generations"][1]["shards"] == ["shard-00003"] and m["generations"][1]["first_shard"] == 3
    assert {f["name"]: f["generation"] for f in m["shards"]}["shard-00003.tar"] == 2
    assert m["counts"]["written"] == 12 and live_keys(dest) == sorted(
        [f"cats__c{i:03d}" for i in range(8)] + [f"dogs__d{i:03d}" for i in range(4)])
    assert live_keys(dest, generation=1) == sorted([f"cats__c{i:03d}" for i in range(5)] +
                                                   [f"dogs__d{i:03d}" for i in range(4)])
    # nothing new: nothing written at all (not even the manifest, the run record or the lock)
    again = update(source, dest)
    assert again.line().startswith(f"nothing new: {dest} stays at generation 2 (12 inputs listed: 0 new")
    assert tree(dest) == after


def test_changed_inputs_refuse_by_default_then_skip_or_replace(source, tmp_path):
    dest = tmp_path / "out"
    update(source, dest)
    for rel, seed in (("cats/c001.jpg", 501), ("cats/c003.jpg", 502), ("dogs/d000.jpg", 503),
                      ("dogs/d002.jpg", 504), ("dogs/d003.jpg", 505)):
        source.change(rel, seed)
    before = tree(dest)
    r = cli(*flags(source, dest, "--update"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "resize-pipeline: error: 5 input(s) changed since they were converted: cats__c001, cats__c003, dogs__d000, "
        "dogs__d002, dogs__d003; --on-change skip keeps their old samples, --on-change replace converts them again "
        "(the old samples are superseded)"]
    assert tree(dest) == before
    skipped = update(source, dest, on_change="skip")  # nothing else is new: nothing is written
    assert skipped.generation["generation"] == 0 and "5 changed" in skipped.line() and tree(dest) == before

    s = update(source, dest, on_change="replace")
    assert s.written == 5 and s.generation["counts"]["superseded"] == 5
    m = manifest(dest)
    assert m["counts"]["written"] == 9 and m["counts"]["superseded"] == 5
    gone = pq.read_table(dest / m["generations"][1]["superseded"]["name"]).to_pylist()
    assert sorted((r["file"], r["key"]) for r in gone) == sorted(
        (f"shard-0000{s_}.{ext}", k) for ext in ("tar", "parquet") for k, s_ in
        (("cats__c001", 0), ("cats__c003", 0), ("dogs__d000", 1), ("dogs__d002", 1), ("dogs__d003", 2)))
    # readers see each key once: its new version
    table = arrow_table(str(dest), columns=["key", "image"])
    assert sorted(table.column("key").to_pylist()) == live_keys(dest) and len(table) == 9
    new_shard = {r["key"]: r["image"]["bytes"] for r in pq.read_table(dest / "shard-00003.parquet").to_pylist()}
    for row in table.to_pylist():
        if row["key"] in new_shard:
            assert row["image"]["bytes"] == new_shard[row["key"]]


def test_deleted_inputs_are_reported_and_kept_unless_pruned(source, tmp_path):
    dest = tmp_path / "out"
    update(source, dest)
    source.delete("cats/c002.jpg")
    source.add("dogs", 1, start=4)
    s = update(source, dest)
    assert "1 new, 0 changed, 1 deleted" in s.line()
    assert "cats__c002" in live_keys(dest)  # kept
    assert manifest(dest)["generations"][-1]["counts"]["deleted"] == 1
    again = update(source, dest)  # still gone, nothing else new: reported, nothing written
    assert "1 deleted" in again.line() and again.generation["generation"] == 0
    pruned = update(source, dest, prune_deleted=True)
    assert pruned.generation["generation"] == 3 and pruned.generation["counts"]["superseded"] == 1
    assert "cats__c002" not in live_keys(dest) and "cats__c002" in live_keys(dest, generation=2)
    assert "0 deleted" in update(source, dest).line()  # pruned: no longer held, no longer reported


def test_a_changed_config_or_class_list_is_refused_in_one_line(source, tmp_path):
    dest = tmp_path / "out"
    update(source, dest)
    before = tree(dest)
    r = cli("convert", str(source.root), str(dest), "--size", "32", "--samples-per-shard", "4", "--format", "both",
            "--workers", "1", "-q", "--update")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "was converted with another config (differs in: size)" in r.stderr and "never mixes geometries" in r.stderr
    source.add("ants", 1)  # a class sorted before the others: their label indices would shift
    with pytest.raises(OutputError, match=r"classes changed \(new: ants\)"):
        update(source, dest)
    assert tree(dest) == before
    (source.root / "ants" / "a000.jpg").unlink()
    (source.root / "ants").rmdir()
    source.add("zebras", 2)  # sorted after: indices of the others stay
    s = update(source, dest)
    assert s.written == 2 and manifest(dest)["classes"] == ["cats", "dogs", "zebras"]


def test_flags_that_make_no_sense_together_are_refused():
    with pytest.raises(ConfigError, match="give one of them"):
        run(Path("/s"), Path("/d"), update=True, overwrite=True)
    for kw, flag in (({"on_change": "replace"}, "--on-change"), ({"prune_deleted": True}, "--prune-deleted"),
                     ({"dedup": "sha256"}, "--dedup")):
        with pytest.raises(ConfigError, match=f"{flag} applies to --update only"):
            run(Path("/s"), Path("/d"), **kw)


def test_a_plain_rerun_of_a_grown_dest_is_refused_with_a_hint(source, tmp_path):
    dest = tmp_path / "out"
    update(source, dest)
    source.add("cats", 1, start=5)
    update(source, dest)
    with pytest.raises(OutputError, match=r"is grown by --update \(generation 2\): rerun with --update"):
        run(source, dest)


def test_failed_inputs_are_retried_and_a_failed_replacement_keeps_the_old_sample(source, tmp_path):
    dest = tmp_path / "out"
    (source.root / "cats" / "c009.jpg").write_bytes(b"not an image")
    update(source, dest)
    assert manifest(dest)["counts"]["failed"] == 1
    source.add("cats", 1, start=9)  # now a real image at the same path
    good = (source.root / "cats" / "c001.jpg").read_bytes()
    (source.root / "cats" / "c001.jpg").write_bytes(good[: len(good) // 3])  # changed, and broken
    s = update(source, dest, on_change="replace")
    c = s.generation["counts"]
    assert (c["retried"], c["changed"], c["written"], c["failed"], c["superseded"]) == (1, 1, 1, 1, 0)
    assert "cats__c001" in live_keys(dest) and "cats__c009" in live_keys(dest)  # the old c001 stays
    errors = [json.loads(x) for x in (dest / "_errors.jsonl").read_text().splitlines()]
    assert [e["key"] for e in errors] == ["cats__c001"]
    (source.root / "cats" / "c001.jpg").write_bytes(good)
    s = update(source, dest, on_change="replace")  # repaired: replaced now
    assert s.generation["counts"]["superseded"] == 1 and manifest(dest)["counts"]["failed"] == 0


def test_dedup_within_a_run_across_generations_and_touched_files(source, tmp_path):
    dest = tmp_path / "out"
    copy = source.root / "dogs" / "d010.jpg"
    copy.write_bytes((source.root / "cats" / "c000.jpg").read_bytes())  # the same bytes, another name
    s = update(source, dest, dedup="sha256")
    assert s.written == 9 and s.generation["counts"]["duplicates"] == 1
    m = manifest(dest)
    recs = pq.read_table(dest / m["generations"][0]["records"]["name"]).to_pylist()
    assert [(r["key"], r["status"], r["of_key"]) for r in recs] == [("dogs__d010", "duplicate", "cats__c000")]
    assert m["counts"] == dict(m["counts"], total=10, written=9, duplicates=1, failed=0)
    # across generations: a new file with the bytes of a converted one
    (source.root / "cats" / "c100.jpg").write_bytes((source.root / "dogs" / "d001.jpg").read_bytes())
    source.add("cats", 1, start=50)
    # a touched file (same bytes, new mtime): not converted again, its record restamped
    touched = source.root / "cats" / "c002.jpg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    s = update(source, dest, dedup="sha256", on_change="replace")
    c = s.generation["counts"]
    assert (c["new"], c["changed"], c["duplicates"], c["restamped"], c["written"], c["superseded"]) == \
        (2, 1, 1, 1, 1, 0)
    assert sorted(live_keys(dest)).count("cats__c002") == 1
    assert "cats__c100" not in live_keys(dest) and "cats__c050" in live_keys(dest)
    assert update(source, dest, dedup="sha256").generation["generation"] == 0  # nothing new: duplicates are held


def test_an_update_of_a_dest_written_before_generations(source, tmp_path):
    dest = tmp_path / "out"
    run(source, dest)
    make_legacy(dest, source)
    assert open_output(str(dest)).generation == 1 and len(live_keys(dest)) == 9  # reads as generation 1
    source.add("dogs", 2, start=4)
    s = update(source, dest)
    assert s.generation["generation"] == 2 and s.written == 2
    c = s.generation["counts"]
    assert (c["new"], c["unchanged"], c["unchecked"]) == (2, 9, 0)  # the earlier run's digests hold: stamps adopted
    m = manifest(dest)
    adopted = pq.read_table(dest / m["generations"][0]["records"]["name"]).to_pylist()
    assert len(adopted) == 9 and all(r["stamp"] != 0 and r["url"].startswith(b"file://") for r in adopted)
    source.change("cats/c004.jpg", 77)  # now a change to an input of the first generation is seen
    with pytest.raises(OutputError, match="1 input\\(s\\) changed since they were converted: cats__c004"):
        update(source, dest)
    assert update(source, dest, on_change="replace").generation["counts"]["superseded"] == 1


def test_an_earlier_version_s_dest_whose_inputs_changed_is_kept_unchecked(source, tmp_path, caplog):
    dest = tmp_path / "out"
    run(source, dest)
    make_legacy(dest, source)
    source.change("cats/c000.jpg", 99)
    s = update(source, dest)
    assert s.generation["generation"] == 0 and s.generation["counts"]["unchecked"] == 9
    assert "cannot be checked for changes" in caplog.text
    # adopted anyway on the next update that writes something (with stamp 0: never reported as changed)
    source.add("cats", 1, start=5)
    s = update(source, dest)
    assert s.written == 1 and s.generation["counts"]["unchecked"] == 9


def test_overwrite_clears_every_generation_and_leaves_foreign_files(source, tmp_path):
    dest = tmp_path / "out"
    update(source, dest)
    source.change("cats/c000.jpg", 9)
    update(source, dest, on_change="replace")
    (dest / "notes.txt").write_text("mine")
    (dest / "_generations" / "keep.txt").write_text("mine too")
    run(source, dest, overwrite=True, samples_per_shard=100)
    names = set(tree(dest))
    assert "notes.txt" in names and "_generations/keep.txt" in names
    assert {n for n in names if n.startswith(("_inputs/", "_generations/", "shard-"))} == {
        "_inputs/shard-00000.parquet", "_generations/keep.txt", "shard-00000.tar", "shard-00000.parquet"}
    assert [g["generation"] for g in manifest(dest)["generations"]] == [1]


def test_dry_run_says_what_an_update_would_do_and_writes_nothing(source, tmp_path):
    dest = tmp_path / "out"
    update(source, dest)
    source.add("cats", 6, start=5)
    before = tree(dest)
    r = cli(*flags(source, dest, "--update", "--dry-run"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("dry run: generation 2 would convert 6 input(s) in 2 shard(s) (shard-00003 .. "
                                "shard-00004); 15 inputs listed: 6 new, 0 changed, 0 deleted, 0 duplicates; "
                                "nothing written")
    assert tree(dest) == before


def test_summary_and_inspect_on_the_command_line(source, tmp_path):
    dest = tmp_path / "out"
    r = cli(*[a for a in flags(source, dest, "--update") if a != "-q"])  # not quiet: the summary
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("generation 1: 9 inputs listed: 9 new")
    source.change("dogs/d001.jpg", 3)
    assert cli(*flags(source, dest, "--update", "--on-change", "replace")).returncode == 0
    r = cli("inspect", str(dest), "--verify")
    assert r.returncode == 0, r.stderr
    assert "generations: 2 (inspected: 2)" in r.stdout and "verify: 2/2 generations' records match" in r.stdout
    assert "(1 superseded)" in r.stdout
    # a corrupted record of generation 2, and a corrupted shard of generation 1: both found
    m = manifest(dest)
    rec = dest / m["generations"][1]["superseded"]["name"]
    rec.write_bytes(rec.read_bytes()[:-3] + b"xyz")
    r = cli("inspect", str(dest), "--verify")
    assert r.returncode == 1 and "MISMATCH generation 2: superseded" in r.stdout
    assert OPTIONS["format"] == "both"


def test_an_input_that_fails_the_same_way_is_not_converted_again_and_stays_listed(source, tmp_path):
    dest = tmp_path / "out"
    (source.root / "cats" / "c009.jpg").write_bytes(b"not an image")
    update(source, dest)
    errors = (dest / "_errors.jsonl").read_text()
    source.add("dogs", 1, start=4)
    s = update(source, dest)
    assert s.written == 1 and s.generation["counts"]["failed"] == 1  # still failing, not converted again
    assert (dest / "_errors.jsonl").read_text() == errors and manifest(dest)["counts"]["failed"] == 1
    before = tree(dest)
    again = update(source, dest)  # nothing new: the broken input alone does not make a generation
    assert again.generation["generation"] == 0 and tree(dest) == before


def test_an_unchanged_listing_is_nothing_new_unless_a_failure_is_worth_retrying(source, tmp_path):
    """The shortcut (same listing and stamps digests as the last generation: no row compared) holds only
    when no failure of that generation would be retried: a read error is retried every time."""
    dest = tmp_path / "out"
    rows = sorted(p for p in source.root.rglob("*.jpg"))
    manifest_csv = tmp_path / "list.csv"
    manifest_csv.write_text("path\n" + "".join(f"{p}\n" for p in rows) + f"{source.root}/gone.jpg\n")
    s = update(manifest_csv, dest)
    assert s.failed == 1 and manifest(dest)["counts"]["failed_by_stage"] == {"read": 1}
    again = update(manifest_csv, dest)  # the missing file is tried again: a generation that records it
    assert again.generation["generation"] == 2 and again.generation["counts"]["retried"] == 1
    photo = source.root / "gone.jpg"
    photo.write_bytes((source.root / "cats" / "c000.jpg").read_bytes())
    fixed = update(manifest_csv, dest)  # it is there now: converted
    assert fixed.written == 1 and manifest(dest)["counts"]["failed"] == 0
    last = update(manifest_csv, dest)
    assert last.generation["generation"] == 0 and "the same listing and stamps" in last.line()
