"""An update killed at every step (plan, record, a shard's files, its input record, its stats, the
generation's records, the manifest): rerunning the same command completes it, byte-identical to an
update that never crashed. The process kills itself at an exact point (``os._exit(9)``, what SIGKILL
does to it), by the fault injection of tests/plugins; random SIGKILLs: benchmarks/kill_campaign.py."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from .helpers import REPO, manifest_without_timing, run_cli, tree_files

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from generations.conftest import Source  # noqa: E402

PLUGINS = REPO / "tests" / "plugins"
ARGS = ("--size", "24x16", "--samples-per-shard", "3", "--format", "both", "--workers", "1", "--batch-size", "2",
        "-q", "--update")
MORE = ("--on-change", "replace", "--prune-deleted", "--dedup", "sha256")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Generation 1 of 14 inputs (5 shards), then SOURCE grows: 7 new (one a copy of an old one, one
    a copy of another new one), 2 changed, 1 deleted, 1 broken."""
    root = tmp_path_factory.mktemp("update-kill")
    src, out = Source(root / "src"), root / "out"
    src.add("cats", 8)
    src.add("dogs", 6)
    r = run_cli(str(src.root), str(out), *ARGS, "--dedup", "sha256")
    assert r.returncode == 0, r.stderr
    base = root / "base"
    shutil.copytree(out, base)
    src.add("cats", 4, start=8)
    src.add("dogs", 1, start=6)
    (src.root / "dogs" / "d020.jpg").write_bytes((src.root / "cats" / "c000.jpg").read_bytes())
    (src.root / "dogs" / "d021.jpg").write_bytes((src.root / "cats" / "c009.jpg").read_bytes())
    (src.root / "cats" / "c030.jpg").write_bytes(b"not an image")
    src.change("cats/c002.jpg", 301)
    src.change("dogs/d004.jpg", 302)
    src.delete("dogs/d001.jpg")
    shutil.rmtree(out)
    shutil.copytree(base, out)
    r = run_cli(str(src.root), str(out), *ARGS, *MORE)
    assert r.returncode == 0, r.stderr
    reference = tree_files(out)
    m = json.loads(reference["_manifest.json"])
    g2 = m["generations"][1]
    assert g2["shards"] == ["shard-00005", "shard-00006", "shard-00007"], g2["shards"]
    c = g2["counts"]
    assert (c["new"], c["changed"], c["deleted"], c["duplicates"], c["failed"]) == (8, 2, 1, 2, 1), c
    assert g2["records"] and g2["superseded"] and not any(".plan." in n or ".pending." in n for n in reference)
    return src, out, base, reference


def _compare(got: dict[str, bytes], reference: dict[str, bytes]) -> None:
    assert sorted(got) == sorted(reference), "different set of files (leftovers, or something missing)"
    for name, data in reference.items():
        if name == "_manifest.json":
            assert manifest_without_timing(got[name]) == manifest_without_timing(data)
        else:
            assert got[name] == data, f"{name} differs from the update that never crashed"


@pytest.mark.parametrize(("die_at", "when"), [
    ("000002.plan.parquet", "after"),      # planned, nothing recorded yet
    ("000002.pending.parquet", "after"),
    ("_run.json", "after"),                # recorded, no shard yet
    ("shard-00005.tar", "before"),         # in the middle of a shard's files
    ("_inputs/shard-00006", "after"),      # a shard's files and input record, no stats
    ("_stats/shard-00006.json", "after"),  # two shards complete
    ("000002.records.parquet", "after"),   # publishing: the generation's records, no manifest
    ("_manifest.json", "before"),
    ("_manifest.json", "after"),           # published; the plan not removed yet
])
def test_an_update_killed_anywhere_completes_byte_identical(setup, tmp_path, die_at, when):
    src, out, base, reference = setup
    shutil.rmtree(out)
    shutil.copytree(base, out)
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"die_at": die_at, "when": when, "nth": 1}))
    env = {"RESIZE_PIPELINE_TEST_FAULTS": str(faults), "PYTHONPATH": f"{REPO}:{PLUGINS}"}
    r = run_cli(str(src.root), str(out), *ARGS, *MORE, env=env)
    assert r.returncode == 9, f"not killed at {die_at} ({when}): rc {r.returncode} {r.stderr[-500:]}"
    assert "_manifest.json" in tree_files(out)  # generation 1 stays readable throughout
    again = run_cli(str(src.root), str(out), *ARGS, *MORE)
    assert again.returncode == 0, again.stderr
    _compare(tree_files(out), reference)


def test_an_interrupted_update_whose_plan_is_lost_is_planned_again(setup, tmp_path):
    src, out, base, reference = setup
    shutil.rmtree(out)
    shutil.copytree(base, out)
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"die_at": "_stats/shard-00006.json", "when": "after"}))
    env = {"RESIZE_PIPELINE_TEST_FAULTS": str(faults), "PYTHONPATH": f"{REPO}:{PLUGINS}"}
    assert run_cli(str(src.root), str(out), *ARGS, *MORE, env=env).returncode == 9
    (out / "_generations" / "000002.plan.parquet").write_bytes(b"torn")
    again = run_cli(str(src.root), str(out), *ARGS, *MORE)
    assert again.returncode == 0, again.stderr
    _compare(tree_files(out), reference)


def test_two_overlapping_updates_the_second_is_refused_before_it_lists(setup, tmp_path):
    """A night that runs into the next: the second job is refused in one line (exit 2), without
    listing SOURCE; the first completes as if alone."""
    import subprocess
    import time

    from .helpers import cli_cmd, cli_env, fault_env, one_line_error

    src, out, base, reference = setup
    shutil.rmtree(out)
    shutil.copytree(base, out)
    release = tmp_path / "release"
    env = fault_env(tmp_path, hold=str(release), under=str(out))
    first = subprocess.Popen(cli_cmd(str(src.root), str(out), *ARGS, *MORE), env={**cli_env(), **env},
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "_lock.json").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        faults = tmp_path / "second.json"  # the second job would die if it listed SOURCE
        faults.write_text(json.dumps({"unreadable": str(src.root)}))
        second = run_cli(str(src.root), str(out), *ARGS, *MORE,
                         env={"RESIZE_PIPELINE_TEST_FAULTS": str(faults), "PYTHONPATH": f"{REPO}:{PLUGINS}"})
        assert first.poll() is None, "the first job must still be running"
        assert second.returncode == 2 and "another job" in one_line_error(second.stderr)
    finally:
        release.touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    _compare(tree_files(out), reference)
