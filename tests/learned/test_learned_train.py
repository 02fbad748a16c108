import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from helpers_learned import tiny_train_config
from PIL import Image

from resize_pipeline.learned import data, synthetic
from resize_pipeline.learned.train import TrainConfig, train


def test_synthetic_deterministic_and_balanced():
    a = synthetic.SyntheticGratings(16, seed=3, config=synthetic.SyntheticConfig(size=32))
    b = synthetic.SyntheticGratings(16, seed=3, config=synthetic.SyntheticConfig(size=32))
    c = synthetic.SyntheticGratings(16, seed=4, config=synthetic.SyntheticConfig(size=32))
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.images.shape == (16, 3, 32, 32) and a.images.dtype == torch.uint8
    assert np.bincount(a.labels.numpy()).tolist() == [4, 4, 4, 4]
    assert a.images.float().std() > 10  # real content, not blank


def test_train_lowers_loss_and_exports(tmp_path):
    cfg = TrainConfig(
        target_size=16,
        num_train=96,
        num_val=32,
        batch_size=16,
        epochs=6,
        lr=3e-3,
        resizer_lr=1e-3,
        classifier_width=8,
        seed=0,
        device="cpu",
        out_dir=str(tmp_path),
        progress=False,
    )
    res = train(cfg)
    first, last = np.mean(res.losses[:3]), np.mean(res.losses[-3:])
    assert last < first - 0.05, (first, last)
    assert res.steps == 36 and os.path.exists(tmp_path / "last.pt")
    meta = json.loads((tmp_path / "resizer" / "config.json").read_text())
    assert meta["provenance"]["steps"] == 36 and meta["provenance"]["train_config"]["seed"] == 0


def test_train_is_deterministic():
    cfg = tiny_train_config(num_train=32, max_steps=3)
    assert train(cfg).losses == train(cfg).losses


def test_baseline_has_no_resizer_params():
    res = train(tiny_train_config(resizer="bilinear"))
    assert sum(p.numel() for p in res.resizer.parameters()) == 0


def test_config_validation():
    with pytest.raises(ValueError, match="learned"):
        TrainConfig(resizer="magic")
    with pytest.raises(ValueError, match="bilinear"):
        TrainConfig(interpolation="nearest")


def _png(seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_readers_imagefolder_webdataset_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for c in ("cat", "dog"):
        (tmp_path / "folder" / c / "sub").mkdir(parents=True)
        for i in range(2):
            (tmp_path / "folder" / c / "sub" / f"{i}.png").write_bytes(_png(i))
    ds = data.open_dataset(str(tmp_path / "folder"), 16)
    assert len(ds) == 4 and ds.classes == ["cat", "dog"] and sorted(ds.labels) == [0, 0, 1, 1]
    x, y, i, err = ds[3]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and y == 1 and i == 3 and err is None

    shard = tmp_path / "wds" / "shard-000000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for i in range(3):
            for ext, payload in (("png", _png(i)), ("cls", str(i % 2).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        buf = io.BytesIO()
        np.save(buf, np.full((10, 12, 3), 200, np.uint8))
        for ext, payload in (("npy", buf.getvalue()), ("cls", b"1")):
            info = tarfile.TarInfo(f"000099.{ext}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    ds = data.open_dataset(str(shard.parent), 16)
    # the .npy sample is not an image `convert` lists (sources/base.IMAGE_EXTENSIONS): left out, as there
    assert len(ds) == 3 and ds.labels.tolist() == [0, 1, 0]
    assert ds[2][0].shape == (3, 16, 16)

    pq.write_table(
        pa.table({"image": [_png(i) for i in range(3)], "label": [2, 0, 1]}), tmp_path / "a.parquet"
    )
    ds = data.open_dataset(str(tmp_path / "*.parquet"), 12)
    assert len(ds) == 3 and ds.labels.tolist() == [2, 0, 1] and ds[0][0].shape == (3, 12, 12)
    pq.write_table(pa.table({"image": [buf.getvalue()], "label": [1]}), tmp_path / "npy.parquet")
    ds = data.open_dataset(str(tmp_path / "npy.parquet"), 12)  # a Parquet cell of .npy bytes decodes
    assert int(ds[0][0].float().mean()) == 200

    with pytest.raises(ValueError, match="no such"):
        data.open_dataset(str(tmp_path / "missing*"), 16)


@pytest.mark.parametrize("pretrain_epochs", [0, 1])
def test_resume_continues_from_checkpoint(tmp_path, monkeypatch, pretrain_epochs):
    """Interrupted after the first epoch (with a pretrain phase: between the phases), resumed: same run."""
    import shutil

    from resize_pipeline.learned import train as train_mod

    cfg = dict(
        target_size=8,
        num_train=32,
        num_val=8,
        batch_size=8,
        classifier_width=4,
        device="cpu",
        progress=False,
        epochs=2,
        pretrain_epochs=pretrain_epochs,
    )
    saved = []
    real_save = torch.save

    def save_and_keep_first(obj, path, *a, **kw):  # keep the epoch-1 checkpoint: the "interrupted" state
        real_save(obj, path, *a, **kw)
        if "epoch" not in obj:  # backbone.pt at the end
            return
        if not saved:
            (tmp_path / "b").mkdir()
            shutil.copy(path, tmp_path / "b" / "last.pt")
        saved.append((obj["phase"], obj["epoch"]))

    monkeypatch.setattr(train_mod.torch, "save", save_and_keep_first)
    full = train(TrainConfig(out_dir=str(tmp_path / "a"), **cfg))
    monkeypatch.setattr(train_mod.torch, "save", real_save)
    assert saved == [(0, 1), (0, 2)] if not pretrain_epochs else [(0, 1), (1, 1), (1, 2)]
    resumed = train(TrainConfig(out_dir=str(tmp_path / "b"), resume=True, **cfg))
    assert resumed.steps == full.steps == 4 * (2 + pretrain_epochs)
    assert resumed.losses == full.losses
    assert resumed.val_accuracy == full.val_accuracy
    assert (tmp_path / "b" / "backbone.pt").exists()
