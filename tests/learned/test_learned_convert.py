"""`convert --resizer learned:<path>` end to end: an exported checkpoint through the whole pipeline."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import webdataset as wds
from helpers_learned import trained_net
from PIL import Image

from resize_pipeline.cli import main
from resize_pipeline.learned.export import export_resizer


def test_convert_with_an_exported_resizer(image_folder, tmp_path, capsys):
    art = export_resizer(trained_net(), tmp_path / "my_resizer")
    dst = tmp_path / "out"
    rc = main(["convert", str(image_folder), str(dst), "--size", "48x40", "--resizer", f"learned:{art}",
               "--format", "both", "--workers", "1", "--samples-per-shard", "6"])
    assert rc == 0
    assert "10 inputs: 10 written, 0 failed" in capsys.readouterr().out
    manifest = json.loads((dst / "_manifest.json").read_text())
    resizer = manifest["components"]["resizer"]
    assert resizer["name"] == "learned" and resizer["path"].startswith(str(art)) and len(resizer["sha256"]) == 64
    samples = list(wds.WebDataset(sorted(str(p) for p in dst.glob("*.tar")), shardshuffle=False))
    assert len(samples) == 10 == pq.ParquetDataset(sorted(str(p) for p in dst.glob("*.parquet"))).read().num_rows
    img = np.asarray(Image.open(io.BytesIO(samples[0]["jpg"])))
    assert img.shape == (40, 48, 3) and img.std() > 5


def test_bundled_checkpoint_through_convert(image_folder, tmp_path):
    from resize_pipeline import ConvertConfig, convert

    s = convert(ConvertConfig(str(image_folder), str(tmp_path / "o"), size=32, resizer="learned",
                              encode="npy", workers=1, quiet=True))
    assert (s.written, s.failed) == (10, 0)
    assert s.manifest["components"]["resizer"]["name"] == "learned"


def test_convert_with_the_bundled_checkpoint_says_what_it_is(image_folder, tmp_path, capsys):
    from resize_pipeline.cli import main

    assert main(["convert", str(image_folder), str(tmp_path / "out"), "--resizer", "learned", "--size", "32",
                 "--precision", "fp32"]) == 0
    err = capsys.readouterr().err
    assert "note: bundled learned resizer" in err and "synthetic" in err and "grey spread" in err
    assert main(["convert", str(image_folder), str(tmp_path / "q"), "--resizer", "learned", "--size", "32",
                 "-q"]) == 0
    assert "note:" not in capsys.readouterr().err
