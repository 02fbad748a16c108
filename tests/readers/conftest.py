"""Small real conversions to read back: ``--format both`` with several shards, one shard, one format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from resize_pipeline.config import ConvertConfig
from resize_pipeline.conversion import convert

SIZE = (40, 32)

#: name -> convert options; every layout a reader must handle
LAYOUTS = {
    "both-3-shards": {"format": "both", "samples_per_shard": 4},
    "both-1-shard": {"format": "both", "samples_per_shard": 100},
    "webdataset-5-shards": {"format": "webdataset", "samples_per_shard": 2},
    "parquet-2-shards": {"format": "parquet", "samples_per_shard": 6},
}


@pytest.fixture
def make_output(tmp_path) -> Callable[..., Path]:
    """``make_output(source, **options)`` -> DEST of a real conversion (40x32 jpg by default)."""

    def make(source: Path, name: str = "out", **options) -> Path:
        dst = tmp_path / name
        options = {"size": SIZE, "workers": 1, "quiet": True, **options}
        convert(ConvertConfig(str(source), str(dst), **options))
        return dst

    return make


@pytest.fixture(params=sorted(LAYOUTS))
def layout_output(request, image_folder, make_output) -> tuple[str, Path]:
    """Each layout of `LAYOUTS` converted from the 10-image, 2-class `image_folder`."""
    return request.param, make_output(image_folder, **LAYOUTS[request.param])
