"""Every Python block of README.md and docs/*.md that reads output runs, as written, on real outputs.

A block "reads output" when it names ``out/`` (the DEST the docs use). Each file's blocks run in
order in a fresh interpreter (as a reader following the page would), from a folder holding ``out/``:
a ``--format both`` conversion with one shard, and one with several.
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


@pytest.mark.slow
@pytest.mark.parametrize("samples_per_shard", [100, 3], ids=["1-shard", "4-shards"])
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_blocks_run_on_real_output(page, samples_per_shard, image_folder, tmp_path):
    convert(ConvertConfig(str(image_folder), str(tmp_path / "out"), size=(40, 32), format="both",
                          samples_per_shard=samples_per_shard, workers=1, quiet=True))
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert len(manifest["shards"]) == 2 * (1 if samples_per_shard == 100 else 4)
    blocks = tmp_path / "blocks.json"
    blocks.write_text(json.dumps(reading_blocks(page)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_DATASETS_CACHE": str(tmp_path / "hf"),  # datasets caches what it loads: keep it here
        "HF_HUB_OFFLINE": "1",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
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
