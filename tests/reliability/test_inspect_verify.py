"""Issue 20, finding 7: ``inspect --verify`` reports every shard, whatever is wrong with one of them.

A shard that is a folder, that cannot be read, or that is not a regular file (a FIFO would block the
read forever) is one ``UNREADABLE`` line; the other shards are still checked; exit 1. A file named like
a shard that the manifest does not list (a foreign ``shard-00009.tar`` a reader's glob would pick up)
is reported too.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from resize_pipeline.cli import main

from .helpers import write_jpegs


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    write_jpegs(root / "src", 8, seed=6)
    dest = root / "out"
    assert main(["convert", str(root / "src"), str(dest), "--size", "16", "--samples-per-shard", "2",
                 "--workers", "1", "-q"]) == 0
    return dest


@pytest.fixture
def dest(made, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(made, copy)
    return copy


def _verify(capsys, dest, *extra) -> tuple[int, str, str]:
    rc = main(["inspect", str(dest), "--verify", *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_shard_that_is_a_folder_is_one_unreadable_line(dest, capsys):
    (dest / "shard-00001.tar").unlink()
    (dest / "shard-00001.tar").mkdir()
    rc, out, err = _verify(capsys, dest)
    assert rc == 1 and "Traceback" not in err, err
    assert "UNREADABLE shard-00001.tar: a folder, not a file" in out
    assert "verify: 3/4 shards match the manifest's sha256" in out  # the other three were checked


def test_an_unreadable_shard_and_a_fifo_are_reported_and_the_rest_checked(dest, capsys, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    real = LocalFileSystem._open

    def _open(self, path, *a, **kw):
        if str(path).endswith("shard-00002.tar"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(self, path, *a, **kw)

    monkeypatch.setattr(LocalFileSystem, "_open", _open)
    (dest / "shard-00000.tar").unlink()
    os.mkfifo(dest / "shard-00000.tar")
    (dest / "shard-00003.tar").write_bytes(b"changed")
    rc, out, err = _verify(capsys, dest)
    assert rc == 1 and "Traceback" not in err, err
    assert "UNREADABLE shard-00002.tar: PermissionError" in out
    assert "UNREADABLE shard-00000.tar: not a regular file (other)" in out
    assert "MISMATCH shard-00003.tar: 7 bytes" in out
    assert "verify: 1/4 shards match" in out


def test_a_shard_not_in_the_manifest_is_reported(dest, capsys):
    shutil.copy(dest / "shard-00000.tar", dest / "shard-00009.tar")  # foreign, yet a valid tar
    (dest / "notes.tar.txt").write_text("not named like a shard: not ours to judge")
    rc, out, err = _verify(capsys, dest, "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["verified_ok"] is False
    extra = [v for v in doc["verify"] if not v["ok"]]
    assert extra == [{"name": "shard-00009.tar", "ok": False, "status": "EXTRA",
                      "reason": "in DEST but not in the manifest (not written by this conversion)"}]
    rc, out, _ = _verify(capsys, dest)
    assert "EXTRA shard-00009.tar: in DEST but not in the manifest" in out
    assert "verify: 4/4 shards match" in out


def test_a_clean_output_still_verifies(dest, capsys):
    rc, out, _ = _verify(capsys, dest)
    assert rc == 0 and "verify: 4/4 shards match" in out
