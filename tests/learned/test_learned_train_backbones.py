"""Training with a user's backbone, on every data source, through to `convert --resizer learned:DIR`."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from helpers_learned import gpu, needs_cuda, tiny_train_config
from PIL import Image

from resize_pipeline.cli import main
from resize_pipeline.learned import data
from resize_pipeline.learned.train import train

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FACTORY = "backbone_factories:tiny_cnn"
TINY = ["--size", "16", "--batch-size", "4", "--device", "cpu", "--no-progress", "--threads", "1"]


def test_train_factory_backbone_then_convert(image_folder, tmp_path, capsys):
    art = tmp_path / "my_resizer"
    rc = main(["train", "--backbone", FACTORY, "--data", str(image_folder), "--epochs", "1", *TINY,
               "--export", str(art)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "behind bilinear first" in out  # the paper's recipe: backbone on bilinear, then jointly
    meta = json.loads((art / "config.json").read_text())
    assert meta["architecture"] == "resizer_n16_r1_lumahp"
    prov = meta["provenance"]
    assert prov["train_config"]["backbone"] == FACTORY and prov["pretrain_steps"] == 2 == prov["steps"] // 2

    dst = tmp_path / "out"
    rc = main(["convert", str(image_folder), str(dst), "--size", "40x32", "--resizer", f"learned:{art}",
               "--format", "both", "--workers", "1"])
    assert rc == 0
    assert "10 inputs: 10 written, 0 failed" in capsys.readouterr().out
    manifest = json.loads((dst / "_manifest.json").read_text())
    assert manifest["components"]["resizer"]["sha256"] == meta["sha256"]
    samples = list(wds.WebDataset(sorted(str(p) for p in dst.glob("*.tar")), shardshuffle=False))
    img = np.asarray(Image.open(io.BytesIO(samples[0]["jpg"])))
    assert img.shape == (32, 40, 3) and img.std() > 5


def test_bilinear_backbone_then_joint_training(image_folder, tmp_path):
    """Step 1 of the recipe as its own run (backbone behind bilinear, saved), step 2 starts from it."""
    pre = train(tiny_train_config(data=str(image_folder), backbone=FACTORY, resizer="bilinear-noaa",
                                  epochs=2, batch_size=4, out_dir=str(tmp_path / "pre")))
    weights = tmp_path / "pre" / "backbone.pt"
    assert weights.exists() and pre.export_dir is None
    start = torch.load(weights, weights_only=True)
    cfg = tiny_train_config(data=str(image_folder), backbone=FACTORY, backbone_weights=str(weights),
                            epochs=1, batch_size=4, max_steps=None)
    assert cfg.resolved_pretrain_epochs == 0  # trained weights given: straight to joint training
    res = train(cfg)
    assert res.pretrain_steps == 0 and res.steps == 2
    assert not torch.equal(res.classifier.backbone[0].weight.cpu(), start["0.weight"])  # it trained on


def test_fidelity_term_changes_the_loss(tmp_path):
    a = train(tiny_train_config(max_steps=3, zero_init_last=False, fidelity_weight=0.0))
    b = train(tiny_train_config(max_steps=3, zero_init_last=False, fidelity_weight=50.0))
    assert a.losses[0] < b.losses[0]  # the random residual moves the low frequencies: penalised
    with pytest.raises(ValueError, match="fidelity_weight"):
        tiny_train_config(fidelity_weight=-1)


def _convert(src, dst, fmt):
    assert main(["convert", str(src), str(dst), "--size", "48", "--format", fmt, "--workers", "1"]) == 0


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_train_from_our_own_shards(image_folder, tmp_path, fmt, capsys):
    dst = tmp_path / "shards"
    _convert(image_folder, dst, fmt)
    ds = data.open_dataset(str(dst), 16)  # listed through readers.shard_urls / arrow_table
    assert len(ds) == 10 and sorted(ds.labels) == [0] * 5 + [1] * 5
    assert ds[0][0].shape == (3, 16, 16)
    res = train(tiny_train_config(data=str(dst), batch_size=4, max_steps=2))
    assert res.steps == 2


def test_parquet_image_struct_column(tmp_path, photos):
    """The Hugging Face Image layout: image = struct{bytes, path} (bytes, or only a path)."""
    def jpeg(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG")
        return buf.getvalue()

    crops = [photos["astronaut"][:64, :80], photos["coffee"][:70, :60], photos["chelsea"][:50, :50]]
    (tmp_path / "c.jpg").write_bytes(jpeg(crops[2]))
    images = [{"bytes": jpeg(crops[0]), "path": "a.jpg"}, {"bytes": jpeg(crops[1]), "path": None},
              {"bytes": None, "path": str(tmp_path / "c.jpg")}, None]
    pq.write_table(pa.table({"image": images, "label": [0, 1, 1, 0]}), tmp_path / "hf.parquet")
    ds = data.open_dataset(str(tmp_path / "hf.parquet"), 24)
    assert len(ds) == 4 and ds.labels.tolist() == [0, 1, 1, 0]
    assert all(ds[i][0].shape == (3, 24, 24) for i in range(2))
    # a cell without bytes is a read error, as in `convert` (sources/reader.py): skipped and counted
    for i in (2, 3):
        image, _, _, err = ds[i]
        assert image is None and err["stage"] == "read" and "null image bytes" in err["error"]


def test_manifest_csv(image_folder, tmp_path):
    rows = [(os.path.relpath(p, tmp_path), p.parent.name) for p in sorted(image_folder.rglob("*.*"))]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    ds = data.open_dataset(str(tmp_path / "train.csv"), 16)
    assert len(ds) == 10 and ds.classes == ["chelsea", "coffee"] and sorted(ds.labels) == [0] * 5 + [1] * 5
    assert ds[9][0].shape == (3, 16, 16)
    with open(tmp_path / "nolabel.csv", "w") as f:
        f.write("path\n" + rows[0][0] + "\n")
    with pytest.raises(ValueError, match="none of its 1 images has a label"):
        data.open_dataset(str(tmp_path / "nolabel.csv"), 16)


def test_bad_data_is_a_one_line_cli_error(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path / "nothing*"), *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "training data" in err and "no such directory" in err and "Traceback" not in err


@pytest.mark.slow
def test_torchrun_two_processes_gloo(image_folder, tmp_path):
    """`torchrun --nproc-per-node 2` on CPU: DDP over gloo, each rank half of every epoch, rank 0 exports."""
    art = tmp_path / "ddp_resizer"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "resize_pipeline.cli", "train", "--backbone", FACTORY, "--data", str(image_folder),
           "--val-data", str(image_folder), "--epochs", "2", "--pretrain-epochs", "1", *TINY,
           "--export", str(art), "--out-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("held-out accuracy") == 1 and "on 2 processes" in proc.stdout  # rank 0 reports
    prov = json.loads((art / "config.json").read_text())["provenance"]
    # 10 training images, 2 ranks x 4 per batch: one step per epoch, 3 epochs over both phases
    assert prov["world_size"] == 2 and prov["steps"] == 3 and prov["pretrain_steps"] == 1
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert (ck["phase"], ck["epoch"], ck["step"]) == (1, 2, 3)
    # the accuracy both processes computed on their halves is the exported model's, in one process
    from torch.utils.data import DataLoader

    from resize_pipeline.learned.backbones import build_backbone
    from resize_pipeline.learned.export import load_artifact
    from resize_pipeline.learned.train import evaluate_accuracy

    resizer, _ = load_artifact(art)
    backbone = build_backbone(FACTORY, 2, weights=str(tmp_path / "run" / "backbone.pt"))
    loader = DataLoader(data.open_dataset(str(image_folder), 32), batch_size=10, collate_fn=data.collate)
    acc = evaluate_accuracy(resizer, backbone, loader, 16, torch.device("cpu"))
    assert acc == prov["val_accuracy"]


@gpu
@needs_cuda
def test_cuda_training_bf16_channels_last(tmp_path):
    from resize_pipeline.learned.train import _amp_dtype

    cfg = tiny_train_config(device="cuda", target_size=16, num_train=64, batch_size=16, max_steps=4,
                            export_dir=str(tmp_path / "r"))
    assert _amp_dtype(cfg, torch.device("cuda")) == torch.bfloat16
    res = train(cfg)
    assert res.steps == 4 and all(np.isfinite(res.losses)) and res.export_dir
    assert next(res.resizer.parameters()).is_cuda
    assert res.resizer.out_conv.weight.is_contiguous(memory_format=torch.channels_last)


