"""Every Python block of README.md and docs/*.md that reads output runs, as written, on real outputs.

A block "reads output" when it names ``out/`` (the DEST the docs use). Each file's blocks run in
order in a fresh interpreter (as a reader following the page would), from a folder holding ``out/``:
a ``--format both`` conversion with one shard, one with several, and one grown by ``--update`` into 3
generations with superseded samples (so every recipe must skip those).

README's nightly recipe (the one shell block with ``--update``) runs as written, night after night,
on a folder that grows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from resize_pipeline.config import ConvertConfig
from resize_pipeline.conversion import convert

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def reading_blocks(path: Path) -> list[str]:
    return [b for b in BLOCK.findall(path.read_text(encoding="utf-8")) if re.search(r"[\"']out/", b)]


PAGES = [p for p in DOCS if reading_blocks(p)]


def _ray_if_used(page: Path) -> tuple:
    """The `ray` mark for a page whose blocks use Ray (they start a local cluster)."""
    return (pytest.mark.ray,) if any(re.search(r"^\s*import ray", b, re.M) for b in reading_blocks(page)) else ()

RUNNER = """
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
for i, code in enumerate(blocks):
    try:
        exec(compile(code, f"{sys.argv[2]} block {i + 1}", "exec"), {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: {sys.argv[2]} block {i + 1} of {len(blocks)}:\\n{code}", file=sys.stderr)
        sys.exit(1)
print(f"OK {len(blocks)} blocks")
"""


def test_the_docs_have_reading_blocks():
    names = {p.name for p in PAGES}
    assert {"README.md", "reading.md"} <= names
    assert len(reading_blocks(ROOT / "README.md")) >= 2 and len(reading_blocks(ROOT / "docs" / "reading.md")) >= 6


def _grow(image_folder: Path, out: Path) -> None:
    """3 generations: a replaced image and new ones, then a deleted (pruned) one."""
    import os
    import shutil

    kw = dict(size=(40, 32), format="both", samples_per_shard=3, workers=1, quiet=True, update=True)
    convert(ConvertConfig(str(image_folder), str(out), **kw))
    cats = sorted((image_folder / "chelsea").iterdir())
    shutil.copy(cats[1], image_folder / "chelsea" / "img_new.jpg")
    data = cats[0].read_bytes()
    cats[0].write_bytes((image_folder / "coffee" / "img_0.jpg").read_bytes())  # same name, other picture
    os.utime(cats[0], ns=(1, 10**18))
    convert(ConvertConfig(str(image_folder), str(out), on_change="replace", **kw))
    (image_folder / "coffee" / "img_1.jpg").unlink()
    (image_folder / "coffee" / "img_9.jpg").write_bytes(data)
    convert(ConvertConfig(str(image_folder), str(out), prune_deleted=True, **kw))


@pytest.mark.slow
@pytest.mark.parametrize("samples_per_shard", [100, 3, 0], ids=["1-shard", "4-shards", "3-generations"])
@pytest.mark.parametrize("page", [pytest.param(p, id=p.name, marks=_ray_if_used(p)) for p in PAGES])
def test_blocks_run_on_real_output(page, samples_per_shard, image_folder, tmp_path):
    if samples_per_shard:
        convert(ConvertConfig(str(image_folder), str(tmp_path / "out"), size=(40, 32), format="both",
                              samples_per_shard=samples_per_shard, workers=1, quiet=True))
        manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
        assert len(manifest["shards"]) == 2 * (1 if samples_per_shard == 100 else 4)
    else:
        _grow(image_folder, tmp_path / "out")
        manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
        assert manifest["generation"] == 3 and manifest["counts"]["superseded"] == 2
    blocks = tmp_path / "blocks.json"
    blocks.write_text(json.dumps(reading_blocks(page)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_DATASETS_CACHE": str(tmp_path / "hf"),  # datasets caches what it loads: keep it here
        "HF_HUB_OFFLINE": "1",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        # a block that uses Ray Data starts Ray implicitly: its own local cluster, never one that some
        # other process on this machine started (which it would join otherwise)
        "RAY_ADDRESS": "local",
    }
    run = subprocess.run([sys.executable, "-c", RUNNER, str(blocks), page.name], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.strip().endswith(f"OK {len(reading_blocks(page))} blocks")


def test_readme_test_command_is_what_ci_runs():
    """The README's install-and-test command and .ci/run's must stay the same line."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line for line in readme.splitlines() if line.startswith("pip install") and ".[dev]" in line)
    assert command in ci.splitlines()
    assert command.endswith("&& python -m pytest -q")


NIGHTLY = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def nightly_block() -> str:
    """README's nightly recipe: its one shell block that runs ``convert ... --update``."""
    blocks = [b for b in NIGHTLY.findall((ROOT / "README.md").read_text(encoding="utf-8")) if "--update" in b]
    assert len(blocks) == 1, "README shows the nightly recipe in one block"
    return blocks[0]


@pytest.mark.slow
def test_the_nightly_recipe_runs_night_after_night(image_folder, tmp_path):
    """The README block, as written, in a folder whose ``photos/`` grows: the first night makes
    generation 1, a night with new and changed photos generation 2, a night with nothing new writes
    nothing; the inspect line of the block checks every generation."""
    import shutil
    import stat

    block = nightly_block()
    assert "--engine ray" not in block or "deploy/raycronjob.yaml" in block
    bin_dir = tmp_path / "bin"  # `resize-pipeline` as this checkout's code (the shell finds it first)
    bin_dir.mkdir()
    shim = bin_dir / "resize-pipeline"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m resize_pipeline.cli \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    assert image_folder == tmp_path / "photos"  # the fixture's folder is where the block expects it
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def night() -> subprocess.CompletedProcess:
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=280)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return r

    first = night()
    assert "generation 1:" in first.stdout and "verify: 1/1 generations' records match" in first.stdout
    photos = tmp_path / "photos"
    shutil.copy(photos / "chelsea" / "img_1.jpg", photos / "chelsea" / "img_7.jpg")  # new (and a duplicate)
    shutil.copy(photos / "coffee" / "img_2.jpg", photos / "chelsea" / "img_0.jpg")    # changed
    second = night()
    assert "generation 2:" in second.stdout and "verify: 2/2 generations' records match" in second.stdout
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert [g["generation"] for g in manifest["generations"]] == [1, 2]
    before = sorted((p.relative_to(tmp_path / "out"), p.stat().st_mtime_ns) for p in (tmp_path / "out").rglob("*"))
    third = night()
    assert "nothing new" in third.stdout
    after = sorted((p.relative_to(tmp_path / "out"), p.stat().st_mtime_ns) for p in (tmp_path / "out").rglob("*"))
    assert after == before
