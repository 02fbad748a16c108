"""Fixtures shared by the source tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, so that small manifests span many of them."""
    from resize_pipeline.sources import common, manifest, manifest_io

    monkeypatch.setattr(manifest_io, "CSV_BLOCK", 256)
    monkeypatch.setattr(manifest_io, "READ_BLOCK", 256)
    monkeypatch.setattr(manifest_io, "PARQUET_BATCH", 7)
    monkeypatch.setattr(manifest, "BLOCK", 5)
    monkeypatch.setattr(common, "BLOCK", 5)
