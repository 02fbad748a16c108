"""A full disk (issue 12, finding 4): exit 2 and one line, nothing torn or left half-written, and the
rerun (with space) resumes to output byte-identical to an undisturbed run.

Two ways to fill the disk: ENOSPC injected below the filesystem layer the tool writes through
(`tests/plugins/faults_plugin.py`, runs anywhere), and a real, tiny tmpfs (root only).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .helpers import (
    fault_env,
    manifest_without_timing,
    mount_tmpfs,
    one_line_error,
    run_cli,
    tree_files,
    umount,
    write_jpegs,
)

ARGS = ("--size", "64", "--samples-per-shard", "6", "--encode", "png", "--format", "both", "-q")


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("full") / "src"
    write_jpegs(root, 30, seed=9)
    return root


@pytest.fixture(scope="module")
def reference(src, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("full-ref") / "out"
    r = run_cli(str(src), str(out), *ARGS)
    assert r.returncode == 0, r.stderr
    return tree_files(out)


def _check_nothing_torn(out: Path) -> None:
    names = [p.name for p in out.rglob("*")]
    assert not [n for n in names if ".partial" in n], names  # no temp file left
    for p in out.rglob("*.json"):
        json.loads(p.read_text())  # every JSON document complete
    if (out / "_errors.jsonl").exists():
        for line in (out / "_errors.jsonl").read_text().splitlines():
            json.loads(line)


def _check_resumed(out: Path, reference: dict[str, bytes]) -> None:
    got = tree_files(out)
    assert sorted(got) == sorted(reference)
    for name, data in reference.items():
        if name == "_manifest.json":
            a, b = manifest_without_timing(got[name]), manifest_without_timing(data)
            assert {k: v for k, v in a.items() if k != "config"} == {k: v for k, v in b.items() if k != "config"}
        elif name != "_run.json":
            assert got[name] == data, name


@pytest.mark.parametrize(("budget", "workers"), [(40_000, 1), (150_000, 1), ("end", 1), (40_000, 2)])
def test_disk_full_injected(src, reference, tmp_path, budget, workers):
    """`budget`: bytes each process may write into DEST before the disk is full; ``end``: it fills up
    only while the last documents (stats, _errors.jsonl, the manifest) are written."""
    out = tmp_path / "out"
    shards = sum(len(v) for k, v in reference.items() if not k.startswith("_"))
    limit = shards + 2_000 if budget == "end" else budget
    r = run_cli(str(src), str(out), *ARGS, "--workers", str(workers),
                env=fault_env(tmp_path, enospc_after=limit, under=str(out)))
    assert r.returncode == 2, r.stderr
    assert "no space left" in one_line_error(r.stderr)
    _check_nothing_torn(out)
    assert not (out / "_manifest.json").exists()
    r = run_cli(str(src), str(out), *ARGS, "--workers", str(workers))  # space again: resume
    assert r.returncode == 0, r.stderr
    _check_resumed(out, reference)


def test_disk_full_on_a_real_tmpfs(src, reference, tmp_path):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "size=160k"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        r = run_cli(str(src), str(disk / "out"), *ARGS, "--workers", "1")
        assert r.returncode == 2, r.stderr
        assert "no space left" in one_line_error(r.stderr)
        _check_nothing_torn(disk / "out")
        shutil.copytree(disk / "out", tmp_path / "out")
    finally:
        umount(disk)
    r = run_cli(str(src), str(tmp_path / "out"), *ARGS, "--workers", "1")
    assert r.returncode == 0, r.stderr
    _check_resumed(tmp_path / "out", reference)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_dest_is_named_as_dest_not_as_the_local_spool(src, tmp_path, workers):
    """Issue 20: on a local DEST the shard files are built in DEST itself: a full DEST is said to be DEST."""
    out = tmp_path / "out"
    r = run_cli(str(src), str(out), *ARGS, "--workers", str(workers),
                env=fault_env(tmp_path, enospc_after=40_000, under=str(out)))
    assert r.returncode == 2, r.stderr
    line = one_line_error(r.stderr)
    assert f"no space left on {out} (" in line and "spool" not in line
