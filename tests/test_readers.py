"""Our shards read back through the readers we document (webdataset/torch, pyarrow, DALI CPU)."""

import numpy as np
import pytest

from resize_pipeline.config import ConvertConfig
from resize_pipeline.conversion import convert
from resize_pipeline.readers import arrow_table, dali_pipeline, shard_urls, torch_dataset


@pytest.fixture
def converted(image_folder, tmp_path):
    dst = tmp_path / "out"
    convert(ConvertConfig(str(image_folder), str(dst), size=(40, 32), format="both", samples_per_shard=4,
                          workers=1, quiet=True))
    return dst


def test_shard_urls_need_a_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="_manifest.json"):
        shard_urls(str(tmp_path))


def test_torch_dataset(converted):
    import torch

    items = list(torch_dataset(str(converted)))
    assert len(items) == 10
    img, label = items[0]
    assert isinstance(img, torch.Tensor) and img.shape == (3, 32, 40) and 0 <= float(img.min()) <= float(img.max()) <= 1
    assert sorted({int(lbl) for _, lbl in items}) == [0, 1]
    loader = torch.utils.data.DataLoader(torch_dataset(str(converted)), batch_size=5)
    xb, yb = next(iter(loader))
    assert xb.shape == (5, 3, 32, 40) and yb.shape == (5,)


def test_arrow_table(converted):
    t = arrow_table(str(converted), columns=["key", "label", "width"])
    assert t.num_rows == 10 and set(t.column("width").to_pylist()) == {40}


def test_dali_cpu_pipeline(converted):
    pytest.importorskip("nvidia.dali")
    pipe = dali_pipeline(str(converted), batch_size=4, num_threads=1)
    imgs, labels = pipe.run()
    arr = np.asarray(imgs.at(0))
    assert arr.shape == (32, 40, 3) and arr.dtype == np.uint8 and arr.std() > 1
    assert len(labels) == 4
    assert [int(bytes(np.asarray(labels.at(i)))) for i in range(4)] == [0, 0, 0, 0]  # first shard: chelsea
