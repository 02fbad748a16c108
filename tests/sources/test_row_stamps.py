"""Each listed row carries its input's stamp (what `--update` compares); 0 where it is not known."""

from __future__ import annotations

import os

from PIL import Image

from resize_pipeline.batch import columns_to_batch
from resize_pipeline.sources import list_source
from resize_pipeline.sources.stamps import stamp_stat


def _photos(root, n=3):
    root.mkdir()
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 40, 10, 10)).save(root / f"p{i}.png")
    return sorted(root.iterdir())


def test_folder_rows_carry_their_stamp_and_it_changes_with_the_file(tmp_path):
    files = _photos(tmp_path / "src")
    rows = list_source(str(tmp_path / "src")).items.columns(0, 3)
    assert rows["stamp"] == [stamp_stat(os.stat(f)) for f in files] and all(rows["stamp"])
    os.utime(files[1], ns=(1, 1))
    again = list_source(str(tmp_path / "src")).items.columns(0, 3)["stamp"]
    assert again[0] == rows["stamp"][0] and again[1] != rows["stamp"][1]
    assert list(columns_to_batch(rows)["stamp"]) == rows["stamp"]


def test_manifest_rows_carry_per_row_stamps_not_the_manifests_own(tmp_path):
    files = _photos(tmp_path / "src", 1)
    (tmp_path / "m.csv").write_text("path\n" + "".join(f"{f}\n" for f in files))
    listing = list_source(str(tmp_path / "m.csv"))
    first = listing.items.columns(0, 1)["stamp"]
    assert first != [0]  # from the listing of the row's folder (fsspec's details of the file)
    assert listing.source_stamps and listing.source_stamps[0] != first[0]  # the manifest's own, apart
    os.utime(files[0], ns=(1, 1))
    assert list_source(str(tmp_path / "m.csv")).items.columns(0, 1)["stamp"] != first


def test_rows_whose_folders_were_not_listed_have_stamp_0(tmp_path, monkeypatch):
    from resize_pipeline.sources import stamps

    files = _photos(tmp_path / "src", 1)
    (tmp_path / "m.csv").write_text("path\n" + "".join(f"{f}\n" for f in files))
    monkeypatch.setattr(stamps, "MAX_FOLDERS", 0)
    listing = list_source(str(tmp_path / "m.csv"))
    assert listing.items.columns(0, 1)["stamp"] == [0] and not listing.stamps_complete
