"""The format registry is the one place formats are declared: everything else derives from it."""

from __future__ import annotations

import pytest

from resize_pipeline import formats
from resize_pipeline.config import ConvertConfig
from resize_pipeline.sinks.base import FormatWriter


@pytest.mark.parametrize("name", formats.NAMES)
def test_each_format_entry_loads_and_agrees_with_its_writer(name):
    f = formats.get(name)
    writer = f.load("writer")
    assert issubclass(writer, FormatWriter) and writer.ext == f.ext
    assert callable(f.load("samples")) and callable(f.load("infos"))


def test_config_choices_and_both_derive_from_the_registry():
    assert formats.CHOICES == (*formats.NAMES, "both")
    assert ConvertConfig("/s", "/d", format="both").formats == formats.NAMES
    assert ConvertConfig("/s", "/d", format="parquet").formats == ("parquet",)
    with pytest.raises(ValueError, match="format must be one of webdataset, parquet"):
        formats.get("tfrecord")
