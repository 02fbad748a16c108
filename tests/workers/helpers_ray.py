"""Helpers of the Ray engine tests: the corpus, the config, and comparing two outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Small on purpose: every test here runs on a 2-core box in a few seconds per conversion.
SAMPLES = 21
PER_SHARD = 6
SIZE = 64


def make_corpus(root: Path, n: int = SAMPLES) -> Path:
    """Generated photos plus the three kinds of broken input the error path must record."""
    from resize_pipeline.sample_data import make_sample_dataset

    src = root / "in"
    paths = make_sample_dataset(str(src), n, seed=3)
    jpgs = sorted(p for p in paths if p.endswith(".jpg"))
    (src / "astronaut" / "zz_empty.jpg").write_bytes(b"")
    data = Path(jpgs[0]).read_bytes()
    (src / "coffee" / "zz_truncated.jpg").write_bytes(data[: len(data) // 3])
    (src / "chelsea" / "zz_text.jpg").write_text("this is not a JPEG\n")
    return src


def base_config(source: Path, dest: Path, **kw):
    from resize_pipeline.config import ConvertConfig

    values = dict(source=str(source), dest=str(dest), size=SIZE, samples_per_shard=PER_SHARD, format="both",
                  quality=90, quiet=True, batch_size=4)
    values.update(kw)
    return ConvertConfig(**values)


# --- comparing two outputs --------------------------------------------------------------------------

def _errors(dest: Path) -> list[dict]:
    return [json.loads(line) for line in (dest / "_errors.jsonl").read_text().splitlines()]


def _wds_samples(path: Path) -> list[dict]:
    """Samples as the webdataset library reads them: ``__key__`` plus raw member bytes."""
    import webdataset as wds

    ds = wds.WebDataset(str(path), shardshuffle=False, empty_check=False)
    return [{k: v for k, v in s.items() if k == "__key__" or not k.startswith("__")} for s in ds]


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def shard_files(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.suffix in (".tar", ".parquet"))


def assert_same_output(got: Path, want: Path) -> None:
    """Same shard names, sample keys and payload bytes (read back with webdataset and pyarrow), same
    per-shard stats and the same error records."""
    assert shard_files(got) == shard_files(want)
    assert shard_files(want), "reference has no shards"
    for name in shard_files(want):
        read, key = (_wds_samples, "__key__") if name.endswith(".tar") else (_parquet_rows, "key")
        g, w = read(got / name), read(want / name)
        assert [s[key] for s in g] == [s[key] for s in w], f"{name}: sample keys differ"
        assert g == w, f"{name}: sample payloads differ"
        assert (got / name).read_bytes() == (want / name).read_bytes(), f"{name}: file bytes differ"
    for stats in sorted((want / "_stats").iterdir()):
        assert (got / "_stats" / stats.name).read_bytes() == stats.read_bytes(), stats.name
    assert (got / "_errors.jsonl").read_bytes() == (want / "_errors.jsonl").read_bytes()
    assert len(_errors(want)) == 3, "the corpus has three broken inputs"
    gm, wm = (json.loads((d / "_manifest.json").read_text()) for d in (got, want))
    assert gm["counts"] == wm["counts"]
    assert gm["shards"] == wm["shards"]
    assert not [p for p in os.listdir(got) if ".partial" in p], "temporary files left behind"
