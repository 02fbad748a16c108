"""Resume after a crash (SIGKILL part-way, or any crash-time leftovers): rerunning the same command skips
completed shards, redoes the rest, and the output is byte-identical to an uninterrupted run. Plus
``--overwrite`` and the refusal to mix output of different configs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import cli_cmd, cli_env, descendants, manifest_without_timing, run_cli, tree_files, write_jpegs

N_GOOD = 90
PER_SHARD = 3
ARGS = ("--size", "32", "--samples-per-shard", str(PER_SHARD), "--format", "both", "--batch-size", "2")


def _broken(folder: Path) -> None:
    good = (folder / "000000.jpg").read_bytes()
    (folder / "000007_truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "000031_empty.jpg").write_bytes(b"")
    (folder / "000052_text.png").write_text("not a png\n")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("resume") / "src"
    write_jpegs(src, N_GOOD, seed=1)
    _broken(src)
    return src


def _check_identical(out: Path, reference: dict[str, bytes]) -> None:
    got = tree_files(out)
    assert sorted(got) == sorted(reference), "different set of files (leftover temp files?)"
    for name, data in reference.items():
        if name == "_manifest.json":
            assert manifest_without_timing(got[name]) == manifest_without_timing(data)
        else:
            assert got[name] == data, f"{name} differs from the uninterrupted run"


@pytest.fixture(scope="module")
def dest_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dest")


@pytest.fixture
def out(dest_root) -> Path:
    """The same DEST path for every run here (so that even the manifest's config.dest matches)."""
    path = dest_root / "out"
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


_REFERENCE: dict[int, dict[str, bytes]] = {}


def _reference(source: Path, out: Path, workers: int) -> dict[str, bytes]:
    """An uninterrupted run into `out`, snapshotted (cached per worker count), then removed."""
    if workers not in _REFERENCE:
        r = run_cli(str(source), str(out), *ARGS, "--workers", str(workers), "-q")
        assert r.returncode == 0, r.stderr
        _REFERENCE[workers] = tree_files(out)
        shutil.rmtree(out)
    return _REFERENCE[workers]


def _n_stats(out: Path) -> int:
    d = out / "_stats"
    return len([p for p in d.glob("*.json")]) if d.is_dir() else 0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(("workers", "kill"), [(1, "parent"), (2, "group"), (2, "parent")])
def test_sigkill_then_rerun_is_byte_identical(source, out, workers, kill):
    """``kill``: "group" = the job and its worker processes die together (a crashed machine); "parent" =
    ``kill -9`` of the job only: its pool workers must not live on (and write) behind the rerun."""
    ref = _reference(source, out, workers)
    n_shards = len([n for n in ref if n.startswith("_stats/")])
    assert n_shards == -(-(N_GOOD + 3) // PER_SHARD)
    json_errors = ref["_errors.jsonl"].decode().splitlines()
    assert len(json_errors) == 3  # the broken inputs are part of what must be reproduced

    # start the job in its own process group and SIGKILL all of it (as a crashed machine would) once a
    # few shards are complete
    proc = subprocess.Popen(
        cli_cmd(str(source), str(out), *ARGS, "--workers", str(workers), "-q"),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while _n_stats(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGSTOP)  # freeze everything first: no progress while we look around
    workers_pids = descendants(proc.pid)
    if kill == "group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGCONT)  # the orphaned workers run on: they must notice and exit
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = [p for p in workers_pids if _alive(p)]
    for p in orphans:  # don't leak them even when the assertion below fails
        os.kill(p, signal.SIGKILL)
    assert not orphans, "worker processes outlived the killed job"
    killed_at = _n_stats(out)
    assert 3 <= killed_at < n_shards
    assert not (out / "_manifest.json").exists()  # the manifest is only written at the very end

    # shards completed before the kill must be skipped, not redone: their files stay untouched
    done = [p for p in (out / "_stats").glob("*.json")]
    done += [out / f["name"] for p in done for f in json.loads(p.read_text())["files"]]
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}

    r = run_cli(str(source), str(out), *ARGS, "--workers", str(workers), "-q")  # the same command again
    assert r.returncode == 0, r.stderr
    _check_identical(out, ref)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert {f["name"] for f in manifest["shards"]} == {
        p.name for p in out.iterdir() if p.suffix in (".tar", ".parquet")
    }
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done} == stamps


def test_crash_leftovers_are_cleaned_and_redone(source, out):
    """Every state a crash can leave: temp files, a committed shard without stats, stats whose shard file
    is gone, a torn stats file, a torn temp manifest. Rerun -> identical to an uninterrupted run."""
    ref = _reference(source, out, 1)
    for name, data in ref.items():  # a "finished" run ...
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    (out / "_manifest.json").unlink()  # ... that died before its manifest
    (out / ".shard-00004.tar.partial-4242-0a1b2c3d").write_bytes(b"half a tar")
    (out / "_stats" / ".shard-00004.json.partial-4242-0a1b2c3d").write_text('{"ind')
    (out / "._manifest.json.partial-4242-0a1b2c3d").write_text("{")
    (out / "_stats" / "shard-00001.json").unlink()  # shard committed, killed before its stats
    (out / "shard-00001.tar").write_bytes(b"garbage")  # (and its bytes are not trusted)
    (out / "shard-00002.parquet").unlink()  # stats present but a file missing
    (out / "_stats" / "shard-00003.json").write_text('{"index": 3, "na')  # torn stats
    (out / "_errors.jsonl").write_text("")  # torn error list

    r = run_cli(str(source), str(out), *ARGS, "--workers", "1", "-q")
    assert r.returncode == 0, r.stderr
    _check_identical(out, ref)

    # and a second rerun of a complete job changes nothing (idempotent)
    r = run_cli(str(source), str(out), *ARGS, "--workers", "1", "-q")
    assert r.returncode == 0, r.stderr
    _check_identical(out, ref)


def _one_line_refusal(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("resize-pipeline: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


def test_different_config_is_refused_then_overwrite(tmp_path):
    src = tmp_path / "src"
    write_jpegs(src, 8, seed=2)
    out = tmp_path / "out"
    assert run_cli(str(src), str(out), "--size", "32", "--samples-per-shard", "2", "-q").returncode == 0
    before = tree_files(out)
    assert len([n for n in before if n.endswith(".tar")]) == 4

    # a different output config: refused, with the differing fields named, DEST untouched
    r = run_cli(str(src), str(out), "--size", "48", "--samples-per-shard", "3", "-q")
    _one_line_refusal(r, "different config", "size", "samples_per_shard", "--overwrite")
    assert tree_files(out) == before

    # a different input listing with the same config: refused too
    write_jpegs(tmp_path / "more", 1, seed=3)
    shutil.copy(tmp_path / "more" / "000000.jpg", src / "zzz_new.jpg")
    r = run_cli(str(src), str(out), "--size", "32", "--samples-per-shard", "2", "-q")
    _one_line_refusal(r, "different input listing", "8 inputs then, 9 now")
    assert tree_files(out) == before

    # options that do not change the bytes (workers, batch size, quiet) are not a different config
    (src / "zzz_new.jpg").unlink()
    r = run_cli(
        str(src), str(out), "--size", "32", "--samples-per-shard", "2", "--workers", "2", "--batch-size", "3"
    )
    assert r.returncode == 0, r.stderr
    assert "[4 shard(s) reused]" in r.stdout

    # --overwrite replaces the output: nothing of the old run survives, the manifest lists what exists
    keep = out / "notes.txt"
    keep.write_text("user file")  # not ours: left alone
    r = run_cli(str(src), str(out), "--size", "48", "--samples-per-shard", "3", "--overwrite", "-q")
    assert r.returncode == 0, r.stderr
    after = tree_files(out)
    manifest = json.loads(after["_manifest.json"])
    assert manifest["size"] == [48, 48] and manifest["counts"]["written"] == 8
    shard_files = {n for n in after if n.endswith((".tar", ".parquet")) and "/" not in n}
    assert {n for n in after if n.startswith("_listing/")} == {"_listing/part-00000.parquet", "_listing/_index.json"}
    assert (
        shard_files
        == {s["name"] for s in manifest["shards"]}
        == {"shard-00000.tar", "shard-00001.tar", "shard-00002.tar"}
    )
    assert len([n for n in after if n.startswith("_stats/")]) == 3
    assert len([n for n in after if n.startswith("_inputs/")]) == 3  # the old run's 4 input records are gone
    assert keep.read_text() == "user file"


def test_a_dest_started_by_an_earlier_release_resumes_after_its_whole_listing_is_checked(tmp_path):
    """Releases up to a64e96d kept the listing's digests in `_run.json` (release 0.1.0's format: sha256
    of ``key\\turl\\toffset\\tlength\\trow\\tlabel`` lines, and of the int32 stamps) and no listing parts.
    Such a DEST resumes once the whole listing matches; a changed input is refused as before."""
    import hashlib
    import os

    import numpy as np

    from resize_pipeline.sources import list_source

    src, out = tmp_path / "src", tmp_path / "out"
    write_jpegs(src, 8, seed=4)
    args = ("--size", "32", "--samples-per-shard", "3", "-q")
    assert run_cli(str(src), str(out), *args).returncode == 0
    items = list(list_source(str(src)).items)
    lines = "".join(f"{it.key}\t{it.url}\t{it.offset}\t{it.length}\t{it.row}\t{it.label}\n" for it in items)
    record = json.loads((out / "_run.json").read_text())
    record.update(listing=hashlib.sha256(lines.encode()).hexdigest()[:16], inputs=len(items),
                  stamps=hashlib.sha256(np.asarray([it.stamp for it in items], dtype="<i4").tobytes()).hexdigest()[:16])
    (out / "_run.json").write_text(json.dumps(record))
    shutil.rmtree(out / "_listing")
    (out / "_manifest.json").unlink()
    (out / "_stats" / "shard-00001.json").unlink()
    reference = tree_files(out)
    r = run_cli(str(src), str(out), *args[:-1])
    assert r.returncode == 0, r.stderr
    assert "[2 shard(s) reused]" in r.stdout
    assert (out / "_listing" / "_index.json").exists()  # the DEST is in today's layout from now on

    (out / "_run.json").write_text(json.dumps(record))  # the earlier release's record again
    shutil.rmtree(out / "_listing")
    first = sorted(src.glob("*.jpg"))[0]
    os.utime(first, ns=(1, 1))
    r = run_cli(str(src), str(out), *args)
    assert r.returncode == 2 and "changed" in r.stderr
    assert json.loads((out / "_run.json").read_text())["listing"] == record["listing"]  # its record untouched
    assert reference["_stats/shard-00000.json"] == (out / "_stats" / "shard-00000.json").read_bytes()


def test_output_of_a_version_that_recorded_fewer_choices_still_resumes(tmp_path, capsys):
    """A `_run.json` written before a choice was fingerprinted (here: the JPEG backend, added in
    round 3) resumes; a choice both versions recorded and that differs is still refused."""
    import json as _json

    from resize_pipeline.cli import main
    from resize_pipeline.config import digest

    src = tmp_path / "src"
    src.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (40, 30), (60 * i, 20, 200)).save(src / f"im{i}.jpg")
    dst = tmp_path / "dst"
    args = [str(src), str(dst), "--size", "16", "--samples-per-shard", "2", "-q"]
    assert main(["convert", *args]) == 0
    run_path = dst / "_run.json"
    run = _json.loads(run_path.read_text())
    older = dict(run)
    older["config"] = {**run["config"], "resolved": {k: v for k, v in run["config"]["resolved"].items()
                                                     if k != "jpeg_backend"}}
    assert older["config"] != run["config"], "the JPEG backend is recorded"
    older["fingerprint"] = digest(older["config"])
    run_path.write_text(_json.dumps(older))
    (dst / "_stats" / "shard-00001.json").unlink()  # something left to resume
    assert main(["convert", *args]) == 0
    assert _json.loads(run_path.read_text())["fingerprint"] == run["fingerprint"]

    older["config"] = {**older["config"], "quality": 50}  # a field both know, and it differs
    older["fingerprint"] = digest(older["config"])
    run_path.write_text(_json.dumps(older))
    assert main(["convert", *args]) == 2
    assert "differs in: quality" in capsys.readouterr().err
