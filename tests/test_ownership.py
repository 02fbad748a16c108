"""`ownership`: shard names a run record claims, and SOURCE/DEST containment (unit level; the end-to-end
behaviour is in tests/reliability/test_ownership.py)."""

from __future__ import annotations

import pytest

from resize_pipeline.config import ConvertConfig
from resize_pipeline.errors import ConfigError
from resize_pipeline.layout import OutputNames
from resize_pipeline.ownership import check_overlap


def test_output_names_claim_only_this_runs_shards():
    names = OutputNames.of(ConvertConfig("/s", "/d", format="both", samples_per_shard=10), 25)
    assert names == OutputNames("shard", 5, 3, ("tar", "parquet"), False)
    ok = ["shard-00000.tar", "shard-00002.parquet"]
    not_ours = ["shard-00003.tar", "shard-0000.tar", "shard-00000.tar.bak", "backup.tar", "shard-00000-000.tar",
                "other-00000.tar", "shard-00000.npy"]
    assert [n for n in ok + not_ours if names.matches(n)] == ok
    parts = OutputNames.of(ConvertConfig("/s", "/d", max_shard_bytes=4096, shard_prefix="p"), 5)
    assert parts.matches("p-00000-003.tar") and parts.matches("p-00000.tar") and not parts.matches("p-00001.tar")
    assert OutputNames.from_record({"outputs": names.to_dict()}) == names
    old = {"inputs": 25, "config": {"samples_per_shard": 10, "format": "webdataset", "shard_prefix": "shard"}}
    assert OutputNames.from_record(old) == OutputNames("shard", 5, 3, ("tar",), False)  # a 0.1.0 record


@pytest.mark.parametrize(("source", "dest", "refused"), [
    ("/data/a", "/data/b", False),
    ("/data/a", "/data/ab", False),
    ("/data/a", "/data/a/out", True),
    ("/data/a/x.tar", "/data/a", True),
    ("/data/a/**/*.jpg", "/data/a/out", True),
    ("/data/a/*.jpg", "/data/b", False),
    ("memory://a", "memory://a/out", True),
    ("memory://a", "/a/out", False),
    ("file:///data/a", "/data/a/sub", True),
])
def test_overlap(source, dest, refused):
    if refused:
        with pytest.raises(ConfigError, match="SOURCE|DEST"):
            check_overlap(source, dest)
    else:
        check_overlap(source, dest)
