"""torchvision and timm backbones end to end: train 3 steps, export, convert, evaluate the export.

Marked ``backbones``; they run wherever torchvision and timm import and are skipped cleanly elsewhere
(the CPU torch of CI has no matching torchvision). How to run them on this machine, in a second venv
with the CUDA build of torch (it runs on the CPU too): docs/learned_resizer.md, "Backbones".
"""

import importlib
import json

import numpy as np
import pytest

from resize_pipeline.cli import main


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a torchvision built for another torch raises RuntimeError, etc.
        return False
    return True


pytestmark = [
    pytest.mark.backbones,
    pytest.mark.skipif(not (_importable("torchvision.models") and _importable("timm")),
                       reason="torchvision and timm do not import with this torch (pip install the matching builds)"),
]
RUN = ["--size", "32", "--batch-size", "4", "--device", "cpu", "--no-progress", "--threads", "1"]


@pytest.mark.parametrize("backbone", ["torchvision:resnet18", "timm:resnet18"])
def test_backbone_trains_exports_converts_and_evaluates(backbone, image_folder, tmp_path, capsys):
    art = tmp_path / "resizer"
    rc = main(["train", "--backbone", backbone, "--data", str(image_folder), "--max-steps", "3",
               "--export", str(art), *RUN])
    out = capsys.readouterr().out
    assert rc == 0, out
    prov = json.loads((art / "config.json").read_text())["provenance"]
    assert prov["steps"] == 3 and prov["train_config"]["backbone"] == backbone

    dst = tmp_path / "out"
    rc = main(["convert", str(image_folder), str(dst), "--size", "32", "--resizer", f"learned:{art}",
               "--format", "parquet", "--workers", "1", "-q"])
    assert rc == 0
    manifest = json.loads((dst / "_manifest.json").read_text())
    assert manifest["counts"]["written"] == 10 and manifest["components"]["resizer"]["path"] == str(art)

    rc = main(["evaluate", "--backbone", backbone, "--data", str(image_folder), "--resizers",
               f"learned:{art},bilinear", "--seeds", "0", "--max-steps", "2", "--fidelity-photos", "2",
               "--fidelity-size", "32", "--json", str(tmp_path / "eval.json"), *RUN])
    out = capsys.readouterr().out
    assert rc == 0 and "bilinear" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["summary"]) == {f"learned:{art}", "bilinear"}
    assert all(np.isfinite(r["val_accuracy"]) for r in report["runs"])
    assert report["exported_fidelity"][f"learned:{art}"]["grey_spread_mean"] == 0.0

