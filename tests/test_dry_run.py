"""``convert --dry-run``: lists, plans, prints counts and shards; converts nothing, writes nothing."""

from __future__ import annotations

from resize_pipeline.cli import main
from tests.reliability.helpers import one_line_error, tree_files, write_jpegs

ARGS = ("--size", "32", "--samples-per-shard", "4", "--workers", "1")


def test_dry_run_writes_nothing(tmp_path, capsys):
    src, dest = tmp_path / "src", tmp_path / "out"
    write_jpegs(src, 10, seed=21)
    assert main(["convert", str(src), str(dest), *ARGS, "--dry-run", "-q"]) == 0
    out = capsys.readouterr().out
    assert "dry run: 10 inputs (directory" in out and "3 shard(s)" in out and "shard-00000 .. shard-00002" in out
    assert "to convert: shard-00000, shard-00001, shard-00002" in out
    assert not dest.exists()  # not even created


def test_dry_run_on_a_partly_done_dest_reports_and_touches_nothing(tmp_path, capsys):
    src, dest = tmp_path / "src", tmp_path / "out"
    write_jpegs(src, 10, seed=22)
    assert main(["convert", str(src), str(dest), *ARGS, "-q"]) == 0
    (dest / "_stats" / "shard-00001.json").unlink()
    (dest / "_manifest.json").unlink()
    before = tree_files(dest)
    assert main(["convert", str(src), str(dest), *ARGS, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 complete" in out and "1 to convert" in out and "to convert: shard-00001" in out
    assert tree_files(dest) == before
    # what a run would refuse, a dry run refuses too (and still writes nothing)
    assert main(["convert", str(src), str(dest), *ARGS, "--size", "40", "--dry-run"]) == 2
    assert "different config" in one_line_error(capsys.readouterr().err)
    assert tree_files(dest) == before
