"""Never touch what is not ours (issue 12, findings 1, 7 and 10).

- ``--overwrite`` deletes only what the tool's records say it wrote; on a DEST it did not write it is
  refused; a plain run leaves other files (``*.partial*`` names included) alone.
- SOURCE inside DEST, DEST inside SOURCE (converting a WebDataset folder into itself) are refused
  before anything is read or written.
- A folder named like an output file is refused, never written into.
- One job per DEST: a second job is refused while the first runs; a dead job's lock is taken over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from resize_pipeline.cli import main

from .helpers import cli_cmd, cli_env, fault_env, one_line_error, run_cli, tree_files, write_jpegs

ARGS = ("--size", "32", "--samples-per-shard", "4", "--workers", "1", "-q")


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own") / "src"
    write_jpegs(root, 10, seed=3)
    return root


def _refused(capsys, *argv: str) -> str:
    assert main(["convert", *argv]) == 2
    return one_line_error(capsys.readouterr().err)


def _foreign(dest: Path) -> dict[str, bytes]:
    (dest / "_stats").mkdir(parents=True)
    for name, data in (("backup.tar", b"my backup"), ("results.parquet", b"PAR1 mine"),
                       ("thesis.partial.txt", b"chapter 1"), ("_stats/keep.txt", b"keep me"),
                       (".notes.partial-1-deadbeef", b"not a temp file of ours")):
        (dest / name).write_bytes(data)
    return tree_files(dest)


# ------------------------------------------------------------------------------------ finding 1
def test_overwrite_on_a_dest_this_tool_did_not_write_is_refused(src, tmp_path, capsys):
    dest = tmp_path / "dst"
    before = _foreign(dest)
    line = _refused(capsys, str(src), str(dest), *ARGS, "--overwrite")
    assert "did not write" in line and "backup.tar" in line
    assert tree_files(dest) == before  # all four (five) files still there, untouched


def test_a_plain_run_leaves_files_that_are_not_ours(src, tmp_path, capsys):
    dest = tmp_path / "dst"
    dest.mkdir()
    mine = {"thesis.partial.txt": b"chapter 1", "notes.txt": b"n", ".x.partial-12-0123abcd": b"x",
            ".shard-00000.tar.partial-1-zz": b"not our pattern"}
    for name, data in mine.items():
        (dest / name).write_bytes(data)
    assert main(["convert", str(src), str(dest), *ARGS]) == 0
    assert main(["convert", str(src), str(dest), *ARGS]) == 0  # a resume cleans *our* temp files only
    got = tree_files(dest)
    assert {k: got[k] for k in mine} == mine
    assert (dest / "_manifest.json").exists()


def test_overwrite_removes_only_what_the_records_list(src, tmp_path, capsys):
    dest = tmp_path / "dst"
    assert main(["convert", str(src), str(dest), *ARGS, "--format", "both"]) == 0
    extra = {"backup.tar": b"b", "shard-99999.tar": b"outside the recorded shards", "notes.parquet": b"n",
             "_stats/keep.txt": b"k", "shard-00000.tar.bak": b"copy"}
    for name, data in extra.items():
        (dest / name).write_bytes(data)
    # another config: the old shards (2 formats, 3 shards) are replaced by 2 shards of one format
    assert main(["convert", str(src), str(dest), "--size", "24", "--samples-per-shard", "5", "--workers", "1",
                 "-q", "--overwrite"]) == 0
    got = tree_files(dest)
    assert {k: got[k] for k in extra} == extra
    assert sorted(p.name for p in dest.glob("shard-0000?.*") if p.name not in extra) == \
        ["shard-00000.tar", "shard-00001.tar"]
    assert sorted(p.name for p in (dest / "_stats").iterdir()) == ["keep.txt", "shard-00000.json", "shard-00001.json"]


def test_overwrite_removes_our_dali_indexes_too(src, tmp_path, capsys):
    """``inspect --dali-index`` writes ``{shard}.idx`` and ``_dali_index.json``: ours, so replaced with
    the rest of the output (an index of another tar name is not)."""
    dest = tmp_path / "dst"
    assert main(["convert", str(src), str(dest), *ARGS]) == 0
    assert main(["inspect", str(dest), "--dali-index"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in dest.glob("*.idx")) == ["shard-00000.idx", "shard-00001.idx", "shard-00002.idx"]
    (dest / "mine.idx").write_bytes(b"not ours")
    assert main(["convert", str(src), str(dest), *ARGS, "--overwrite", "--size", "24"]) == 0
    assert sorted(p.name for p in dest.glob("*.idx")) == ["mine.idx"]
    assert not (dest / "_dali_index.json").exists()


def test_a_webdataset_folder_is_not_converted_into_itself(src, tmp_path, capsys):
    wds = tmp_path / "wds"
    assert main(["convert", str(src), str(wds), *ARGS]) == 0
    before = tree_files(wds)
    for args in ((str(wds), str(wds), "--overwrite"), (str(wds), str(wds)),
                 (str(wds / "shard-00000.tar"), str(wds), "--overwrite")):
        line = _refused(capsys, *args, *ARGS)
        assert "DEST" in line
    assert tree_files(wds) == before  # the input tars are intact


@pytest.mark.parametrize("layout", ["dest-in-source", "source-in-dest", "symlink", "file-url", "dotdot"])
def test_source_and_dest_may_not_contain_each_other(src, tmp_path, capsys, layout):
    root = tmp_path / "data"
    imgs = root / "imgs"
    write_jpegs(imgs, 2, seed=4)
    if layout == "dest-in-source":
        args = (str(imgs), str(imgs / "out"))
    elif layout == "source-in-dest":
        args = (str(imgs), str(root))
    elif layout == "symlink":
        (tmp_path / "link").symlink_to(imgs)
        args = (str(tmp_path / "link"), str(imgs / "out"))
    elif layout == "file-url":
        args = (f"file://{imgs}", str(imgs / "sub" / "out"))
    else:
        args = (str(imgs / ".." / "imgs"), str(root / "imgs" / "x" / ".." / "out"))
    _refused(capsys, *args, *ARGS)
    assert sorted(p.name for p in imgs.iterdir()) == ["000000.jpg", "000001.jpg"]


# ------------------------------------------------------------------------------------ finding 7
@pytest.mark.parametrize("name", ["shard-00000.tar", "_manifest.json", "_errors.jsonl", "_run.json"])
def test_a_folder_named_like_an_output_is_refused(src, tmp_path, capsys, name):
    dest = tmp_path / "dst"
    (dest / name).mkdir(parents=True)
    (dest / name / "inside.txt").write_text("mine")
    line = _refused(capsys, str(src), str(dest), *ARGS)
    assert name in line
    assert sorted(p.name for p in dest.iterdir()) == [name]
    assert [p.name for p in (dest / name).iterdir()] == ["inside.txt"]  # nothing was written into it


def test_a_folder_named_like_an_output_after_a_first_run(src, tmp_path, capsys):
    dest = tmp_path / "dst"
    assert main(["convert", str(src), str(dest), *ARGS]) == 0
    (dest / "_manifest.json").unlink()
    (dest / "_manifest.json").mkdir()
    assert "_manifest.json" in _refused(capsys, str(src), str(dest), *ARGS)
    assert not list((dest / "_manifest.json").iterdir())


# ----------------------------------------------------------------------------------- finding 10
def test_a_second_job_on_the_same_dest_is_refused_while_the_first_runs(src, tmp_path):
    dest, release = tmp_path / "dst", tmp_path / "release"
    env = fault_env(tmp_path, hold=str(release), under=str(dest))
    first = subprocess.Popen(cli_cmd(str(src), str(dest), *ARGS), env={**cli_env(), **env},
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (dest / "_lock.json").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        lock = json.loads((dest / "_lock.json").read_text())
        assert lock["pid"] == first.pid and lock["host"] and lock["heartbeat"] > 0
        second = run_cli(str(src), str(dest), *ARGS)
        assert first.poll() is None, "the first job must still be running"
        assert second.returncode == 2
        assert "another job" in one_line_error(second.stderr)
    finally:
        release.touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert not (dest / "_lock.json").exists()  # released on exit
    m = json.loads((dest / "_manifest.json").read_text())
    assert m["counts"]["written"] == 10


def test_the_lock_of_a_killed_job_is_taken_over(src, tmp_path):
    dest, release = tmp_path / "dst", tmp_path / "release"
    env = fault_env(tmp_path, hold=str(release), under=str(dest))
    first = subprocess.Popen(cli_cmd(str(src), str(dest), *ARGS), env={**cli_env(), **env},
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (dest / "_lock.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert (dest / "_lock.json").exists()  # a SIGKILL leaves it behind
    r = run_cli(str(src), str(dest), *ARGS)
    assert r.returncode == 0, r.stderr
    assert "taking over the lock" in r.stderr and not (dest / "_lock.json").exists()


@pytest.mark.parametrize(("age", "refused"), [(5, True), (3600, False)])
def test_a_lock_from_another_host_is_stale_after_missed_heartbeats(src, tmp_path, capsys, age, refused):
    dest = tmp_path / "dst"
    dest.mkdir()
    lock = {"host": "another-host", "pid": 1, "heartbeat": time.time() - age, "heartbeat_seconds": 10,
            "token": "f" * 16}
    (dest / "_lock.json").write_text(json.dumps(lock))
    if refused:
        assert "another-host" in _refused(capsys, str(src), str(dest), *ARGS)
        assert json.loads((dest / "_lock.json").read_text()) == lock
    else:
        assert main(["convert", str(src), str(dest), *ARGS]) == 0
        assert not (dest / "_lock.json").exists()


def test_lock_on_an_object_store(s3_endpoint, s3_bucket, src, tmp_path):
    """On S3 the lock is an object: a live one refuses the job, one past its heartbeats is taken over."""
    import s3fs

    from .conftest import storage_options

    so = storage_options(s3_endpoint)
    fs = s3fs.S3FileSystem(**so)
    dest = f"s3://{s3_bucket}/out"
    config = tmp_path / "c.toml"
    config.write_text(f"[storage_options]\nkey = 'x'\nsecret = 'x'\n[storage_options.client_kwargs]\n"
                      f"endpoint_url = '{s3_endpoint}'\nregion_name = 'us-east-1'\n")
    lock = {"host": "another-host", "pid": 1, "heartbeat": time.time(), "heartbeat_seconds": 10, "token": "a" * 16}
    fs.pipe(f"{s3_bucket}/out/_lock.json", json.dumps(lock).encode())
    r = run_cli(str(src), dest, *ARGS, "--config", str(config))
    assert r.returncode == 2 and "another job" in one_line_error(r.stderr)
    fs.pipe(f"{s3_bucket}/out/_lock.json", json.dumps(dict(lock, heartbeat=time.time() - 3600)).encode())
    r = run_cli(str(src), dest, *ARGS, "--config", str(config))
    assert r.returncode == 0, r.stderr
    fs.invalidate_cache()
    assert not fs.exists(f"{s3_bucket}/out/_lock.json") and fs.exists(f"{s3_bucket}/out/_manifest.json")


def test_two_jobs_in_one_process_do_not_share_a_dest(src, tmp_path):
    """The lock is per job, not per process: a second `convert` of the same process is refused too."""
    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.conversion import convert
    from resize_pipeline.sinks.dest import Dest
    from resize_pipeline.sinks.lock import DestLock, DestLocked

    dest = tmp_path / "dst"
    dest.mkdir()
    with DestLock(Dest(str(dest))):
        with pytest.raises(DestLocked, match="another job"):
            convert(ConvertConfig(str(src), str(dest), size=(32, 32), workers=1), progress=False)
    assert os.listdir(dest) == []
