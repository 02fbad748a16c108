"""``convert --update --engine ray`` on a local Ray cluster: the same generations, byte for byte, as the
local engine (shards, input records, generation records, superseded samples, manifest)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from generations.conftest import Source  # noqa: E402

from resize_pipeline.config import ConvertConfig  # noqa: E402
from resize_pipeline.conversion import convert  # noqa: E402

pytestmark = pytest.mark.ray

OPTS = {"size": (24, 16), "samples_per_shard": 3, "format": "both", "quiet": True, "update": True,
        "batch_size": 2}


def _files(dest: Path) -> dict[str, bytes]:
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in sorted(dest.rglob("*"))
            if p.is_file() and p.name not in ("_manifest.json", "_run.json")}


def _manifest(dest: Path) -> dict:
    m = json.loads((dest / "_manifest.json").read_text())
    for g in m["generations"]:
        g.pop("created")
        g.pop("seconds")
    return {k: m[k] for k in ("shards", "shard_stats", "counts", "generations", "classes", "fingerprint")}


def test_generations_on_ray_equal_the_local_engine(tmp_path):
    import resize_pipeline

    root = str(Path(resize_pipeline.__file__).resolve().parents[1])
    src = Source(tmp_path / "src")
    src.add("cats", 5)
    src.add("dogs", 3)
    (src.root / "dogs" / "d009.jpg").write_bytes((src.root / "cats" / "c000.jpg").read_bytes())
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": root}})
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False

        def both(**kw):
            a = convert(ConvertConfig(str(src.root), str(local), workers=1, **{**OPTS, **kw}))
            b = convert(ConvertConfig(str(src.root), str(on_ray), engine="ray", workers=2, **{**OPTS, **kw}))
            assert a.line().replace(str(local), "D").split(" -> ")[0] == b.line().replace(str(on_ray), "D").split(" -> ")[0]
            return b

        first = both(dedup="sha256")
        assert first.generation["counts"]["duplicates"] == 1
        src.add("cats", 4, start=5)
        src.change("dogs/d001.jpg", 41)
        src.delete("cats/c003.jpg")
        second = both(dedup="sha256", on_change="replace", prune_deleted=True)
        assert second.generation["generation"] == 2 and second.generation["counts"]["superseded"] == 2
        assert both(dedup="sha256").generation["generation"] == 0  # nothing new, on both
    finally:
        ray.shutdown()
    assert _files(on_ray) == _files(local)
    assert _manifest(on_ray) == _manifest(local)
