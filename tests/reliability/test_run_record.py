"""Issue 20, finding 8: a ``_run.json`` whose ``outputs`` could not have been written by this tool (a
width of 0, a huge width, a prefix with a slash...) gets the one-line refusal promised for torn or
foreign records, with or without ``--overwrite``; nothing in DEST is touched."""

from __future__ import annotations

import json

import pytest

from resize_pipeline.cli import main

from .helpers import one_line_error, tree_files, write_jpegs

ARGS = ("--size", "16", "--samples-per-shard", "2", "--workers", "1", "-q")


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec") / "src"
    write_jpegs(root, 5, seed=4)
    return root


@pytest.mark.parametrize(("field", "value"), [
    ("width", 0), ("width", -1), ("width", 10**6), ("width", "5"), ("width", True), ("shards", -1),
    ("prefix", "../up"), ("prefix", ""), ("exts", ["exe"]), ("exts", []), ("parts", "no"),
])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_invalid_outputs_record_is_refused_in_one_line(src, tmp_path, capsys, field, value, overwrite):
    dest = tmp_path / "dst"
    assert main(["convert", str(src), str(dest), *ARGS]) == 0
    run = json.loads((dest / "_run.json").read_text())
    run["outputs"][field] = value
    (dest / "_run.json").write_text(json.dumps(run))
    (dest / "shard-.tar").write_bytes(b"a file a width of 0 would match")
    before = tree_files(dest)
    rc = main(["convert", str(src), str(dest), *ARGS, *(["--overwrite"] if overwrite else [])])
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert "_run.json holds an invalid record" in line and f"outputs.{field}" in line
    assert tree_files(dest) == before


def test_outputs_of_another_type_are_refused(src, tmp_path, capsys):
    dest = tmp_path / "dst"
    assert main(["convert", str(src), str(dest), *ARGS]) == 0
    run = json.loads((dest / "_run.json").read_text())
    run["outputs"] = [1, 2]
    (dest / "_run.json").write_text(json.dumps(run))
    assert main(["convert", str(src), str(dest), *ARGS, "--overwrite"]) == 2
    assert "outputs is not an object" in one_line_error(capsys.readouterr().err)
