"""Inputs that change between a crash and the resume are refused (issue 12, finding 11): the run record
covers each input's size and modification time (ETag on object stores) as the listing saw them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from resize_pipeline.cli import main

from .helpers import one_line_error, textured, write_jpegs

ARGS = ("--size", "32", "--samples-per-shard", "3", "--workers", "1", "-q")


def _crash_after_first_shard(src: Path, dest: Path) -> None:
    """A run that stopped part-way: its first shard done, the rest not (no manifest)."""
    assert main(["convert", str(src), str(dest), *ARGS]) == 0
    (dest / "_manifest.json").unlink()
    for stats in sorted((dest / "_stats").iterdir())[1:]:
        stats.unlink()


def _rewrite(path: Path, seed: int, keep_size: bool = False) -> None:
    from PIL import Image

    old = path.stat()
    Image.fromarray(textured(64, 64, seed)).save(path, "JPEG", quality=80)
    if keep_size:  # same size, other bytes: only the modification time tells
        data = path.read_bytes()[: old.st_size].ljust(old.st_size, b"\0")
        path.write_bytes(data)
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("source", ["folder", "manifest", "glob"])
@pytest.mark.parametrize("keep_size", [False, True])
def test_changed_inputs_are_refused_on_resume(tmp_path, capsys, source, keep_size):
    src = tmp_path / "src"
    write_jpegs(src, 9, seed=11)
    arg = {"folder": str(src), "glob": str(src / "*.jpg")}.get(source)
    if arg is None:
        man = tmp_path / "m.csv"
        man.write_text("path\n" + "".join(f"src/{p.name}\n" for p in sorted(src.glob("*.jpg"))))
        arg = str(man)
    dest = tmp_path / "dst"
    assert main(["convert", arg, str(dest), *ARGS]) == 0
    (dest / "_manifest.json").unlink()  # as if it had stopped before the end
    _rewrite(src / "000001.jpg", 99, keep_size)  # in the first, completed shard
    assert main(["convert", arg, str(dest), *ARGS]) == 2
    assert "changed" in one_line_error(capsys.readouterr().err)
    assert not (dest / "_manifest.json").exists()
    assert main(["convert", arg, str(dest), *ARGS, "--overwrite"]) == 0  # converts them again


def test_unchanged_inputs_resume(tmp_path, capsys):
    src = tmp_path / "src"
    write_jpegs(src, 9, seed=12)
    dest = tmp_path / "dst"
    _crash_after_first_shard(src, dest)
    time.sleep(0.01)
    os.utime(src)  # the folder's own time changes nothing
    assert main(["convert", str(src), str(dest), *ARGS]) == 0
    m = json.loads((dest / "_manifest.json").read_text())
    assert m["run"]["converted"] == 6  # the first shard was reused


def test_changed_objects_are_refused_on_s3(s3_endpoint, s3_bucket, tmp_path):
    """On an object store the listing's ETags are the stamps: a re-uploaded object is a change."""
    import io

    import s3fs
    from PIL import Image

    from .conftest import storage_options

    fs = s3fs.S3FileSystem(**storage_options(s3_endpoint))
    for i in range(4):
        b = io.BytesIO()
        Image.fromarray(textured(40, 40, i)).save(b, "JPEG")
        fs.pipe(f"{s3_bucket}/src/{i}.jpg", b.getvalue())
    config = tmp_path / "c.toml"
    config.write_text(f"[storage_options]\nkey = 'x'\nsecret = 'x'\n[storage_options.client_kwargs]\n"
                      f"endpoint_url = '{s3_endpoint}'\nregion_name = 'us-east-1'\n")
    argv = ["convert", f"s3://{s3_bucket}/src", str(tmp_path / "dst"), *ARGS, "--config", str(config)]
    assert main(argv) == 0
    b = io.BytesIO()
    Image.fromarray(textured(40, 40, 77)).save(b, "JPEG")
    fs.pipe(f"{s3_bucket}/src/1.jpg", b.getvalue())
    assert main(argv) == 2
