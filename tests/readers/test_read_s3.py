"""Readers and ``inspect`` on an ``s3://`` output (moto's S3 server on loopback, from the reliability tests)."""

from __future__ import annotations

import json

import pytest
from reliability.conftest import s3_bucket, s3_endpoint, storage_options  # noqa: F401 - fixtures

from resize_pipeline.cli import main
from resize_pipeline.config import ConvertConfig
from resize_pipeline.conversion import convert
from resize_pipeline.readers import arrow_table, shard_urls, torch_dataset

pytestmark = pytest.mark.slow


def test_readers_and_inspect_on_s3(image_folder, s3_bucket, s3_endpoint, monkeypatch, capsys):  # noqa: F811
    so = storage_options(s3_endpoint)
    dest = f"s3://{s3_bucket}/out"
    convert(ConvertConfig(str(image_folder), dest, size=(40, 32), format="both", samples_per_shard=4,
                          workers=1, quiet=True, storage_options=so))
    assert [u.rsplit("/", 1)[1] for u in shard_urls(dest, "parquet", so)] == [
        "shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    keys = []
    for rank in range(2):
        ds = torch_dataset(dest, with_label=False, rank=rank, world_size=2, storage_options=so)
        keys += [k for _, k in ds]
    table = arrow_table(dest, columns=["key"], storage_options=so)
    assert sorted(keys) == sorted(table.column("key").to_pylist()) and len(keys) == 10

    # the CLI takes object-store settings from fsspec's environment configuration
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("FSSPEC_S3_KEY", "x")
    monkeypatch.setenv("FSSPEC_S3_SECRET", "x")
    import fsspec.config

    monkeypatch.setattr(fsspec.config, "conf", {})
    fsspec.config.set_conf_env(fsspec.config.conf)
    assert main(["inspect", dest, "--verify", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified_ok"] is True and doc["labels"] == {"chelsea": 5, "coffee": 5}
