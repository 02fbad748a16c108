import json

import pytest
import torch
from helpers_learned import trained_net

from resize_pipeline.learned.export import (
    ArtifactError,
    export_resizer,
    export_torchscript,
    load_artifact,
    load_resizer_module,
)
from resize_pipeline.learned.folding import fold_batchnorm


@pytest.fixture
def artifact(tmp_path):
    net = trained_net()
    return net, export_resizer(net, tmp_path / "art", {"note": "test"})


def test_roundtrip_bit_identical(artifact):
    net, path = artifact
    loaded, meta = load_artifact(path)
    folded = fold_batchnorm(net)
    for a, b in zip(folded.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.rand(2, 3, 50, 64)
    with torch.no_grad():
        assert torch.equal(folded(x, (25, 32)), loaded(x, (25, 32)))
    assert meta["architecture"] == "resizer_n16_r1" and meta["folded"] is True
    assert meta["provenance"] == {"note": "test"}
    assert meta["contract"]["input"].startswith("float32")
    # every path form resolves to the same artifact
    for p in (path, path / "config.json", path / "model.safetensors"):
        assert load_resizer_module(p)[1]["sha256"] == meta["sha256"]


def test_weights_file_is_small(artifact):
    _, path = artifact
    assert (path / "model.safetensors").stat().st_size < 64 * 1024


def test_corrupted_weights_refused(artifact):
    _, path = artifact
    w = path / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.safetensors.*sha256") as e:
        load_artifact(path)
    assert isinstance(e.value, ValueError)


def test_truncated_weights_with_matching_hash_refused(artifact):
    from resize_pipeline.learned.util import sha256_file

    _, path = artifact
    w = path / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    meta = json.loads((path / "config.json").read_text())
    meta["sha256"] = sha256_file(str(w))
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="model.safetensors"):
        load_artifact(path)


def test_wrong_hash_refused(artifact):
    _, path = artifact
    meta = json.loads((path / "config.json").read_text())
    meta["sha256"] = "0" * 64
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="does not match"):
        load_artifact(path)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"config": {"channels": 32}}, "do not match architecture|architecture="),
        ({"config": {"blocks": 2}}, "architecture="),
        ({"input_scale": 3.0}, "input_scale="),
        ({"interpolation": "bicubic"}, "interpolation="),
        ({"config": {"interpolation": "nearest"}}, "invalid resizer config"),
        ({"format": "something"}, "format"),
    ],
)
def test_mismatched_config_refused(artifact, change, match):
    _, path = artifact
    meta = json.loads((path / "config.json").read_text())
    for k, v in change.items():
        if isinstance(v, dict):
            meta[k].update(v)
        else:
            meta[k] = v
    if change.get("config", {}).get("channels"):
        meta["architecture"] = "resizer_n32_r1"
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=match) as e:
        load_artifact(path)
    assert "config.json" in str(e.value) or "model.safetensors" in str(e.value)


def test_missing_files_refused(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path)
    with pytest.raises(ArtifactError, match="no such"):
        load_resizer_module(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="bad.pt"):
        load_resizer_module(bad)


def test_torchscript_roundtrip(tmp_path):
    net = trained_net()
    p = export_torchscript(net, tmp_path / "resizer.pt")
    module, meta = load_resizer_module(p)
    assert meta["format"] == "torchscript" and meta["input_scale"] == 2.0
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(module(x, (20, 20)), fold_batchnorm(net)(x, (20, 20)))
