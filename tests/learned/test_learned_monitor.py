"""What a training run watches: divergence (issue 16 finding 6, issue 20 finding 2), the cost said up
front (finding 4), the device refused in one line, the default batch."""

import json

import pytest
import torch
from helpers_learned import tiny_train_config

from resize_pipeline.cli import main
from resize_pipeline.errors import ConfigError
from resize_pipeline.learned.export import ArtifactError, export_resizer, load_artifact
from resize_pipeline.learned.model import create_resizer
from resize_pipeline.learned.train import train

TINY = ["--size", "8", "--num-train", "16", "--num-val", "8", "--batch-size", "8", "--classifier-width", "4",
        "--device", "cpu", "--no-progress", "--threads", "1"]


def test_nan_learning_rate_stops_at_step_1_and_exports_nothing(tmp_path, capsys):
    """`train --lr nan --export` exited 0 with 14 of 16 exported tensors NaN (issue 20, finding 2)."""
    rc = main(["train", *TINY, "--lr", "nan", "--resizer-lr", "nan", "--max-steps", "3",
               "--export", str(tmp_path / "r"), "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "training diverged at step 1 (joint)" in lines[0] and "not finite (nan/inf)" in lines[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_nan_loss_names_its_step(image_folder):
    from resize_pipeline.learned.monitor import TrainingDiverged

    cfg = tiny_train_config(data=str(image_folder), backbone="backbone_factories:overflows_at_step_3",
                            batch_size=2, max_steps=5, target_size=16)
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 3 \(pretrain\): the loss is nan"):
        train(cfg)


def test_export_refuses_non_finite_weights(tmp_path):
    net = create_resizer("resizer_n16_r1_lumahp")
    with torch.no_grad():
        net.out_conv.weight.fill_(float("nan"))
    with pytest.raises(ArtifactError, match="refusing to export.*1 of .* tensors are not finite"):
        export_resizer(net, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_load_refuses_non_finite_weights_whatever_wrote_them(tmp_path):
    from safetensors.torch import load_file, save_file

    from resize_pipeline.learned.util import sha256_file

    art = export_resizer(create_resizer("resizer_n16_r1_lumahp"), tmp_path / "r")
    state = load_file(str(art / "model.safetensors"))
    state["tail_conv.weight"][0, 0, 0, 0] = float("inf")
    save_file(state, str(art / "model.safetensors"))
    meta = json.loads((art / "config.json").read_text())
    meta["sha256"] = sha256_file(str(art / "model.safetensors"))  # a valid hash: only finiteness catches it
    (art / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="tail_conv.weight"):
        load_artifact(art)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_device_cuda_without_a_gpu_is_one_line(command, capsys):
    rc = main([command, *TINY[:-5], "--device", "cuda", "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "--device cuda: no CUDA GPU is visible" in err
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda"):
        train(tiny_train_config(device="tpu"))


def test_cost_is_said_up_front():
    """On a CPU at --size >= 128 a line before the first step; after 4 steps s/step, total, memory."""
    said = []
    train(tiny_train_config(target_size=128, input_scale=1.0, num_train=12, batch_size=2, max_steps=5,
                            classifier_width=2), notify=said.append)
    assert said[0].startswith("training on the CPU at --size 128 (batch 2, 128->128 px, small on cpu)")
    cost = said[1]
    assert "s/step (measured over steps 2-4" in cost and "5 steps: about" in cost
    assert "peak memory" in cost and "GiB (process RSS)" in cost
    said.clear()
    train(tiny_train_config(max_steps=5, num_train=40), notify=said.append)  # small: no warning, the cost
    assert len(said) == 1 and "s/step" in said[0]


def test_default_batch_is_smaller_on_a_cpu_at_large_sizes():
    from resize_pipeline.learned.train_config import TrainConfig

    assert TrainConfig().resolved_batch_size("cpu") == 64  # the bundled recipe (32 px) is unchanged
    assert TrainConfig(target_size=224).resolved_batch_size("cpu") == 16
    assert TrainConfig(target_size=224).resolved_batch_size("cuda") == 64
    assert TrainConfig(target_size=224, batch_size=32).resolved_batch_size("cpu") == 32
