import argparse

import numpy as np
import pytest
from helpers_learned import tiny_train_config
from PIL import Image

from resize_pipeline.commands import evaluate as evaluate_cmd
from resize_pipeline.commands import preview as preview_cmd
from resize_pipeline.commands import train as train_cmd
from resize_pipeline.learned.evaluate import EvaluateConfig, evaluate, format_summary
from resize_pipeline.learned.inference import default_weights_path
from resize_pipeline.learned.train import TrainConfig


def _parser():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    for m in (train_cmd, evaluate_cmd, preview_cmd):
        m.add_parser(sub)
    return p


def test_parsers_defaults_match_train_config():
    args = _parser().parse_args(["train"])
    cfg = train_cmd.train_config_from_args(args, seed=args.seed)
    assert cfg == TrainConfig(seed=0)  # CLI defaults = the library defaults = the bundled recipe
    args = _parser().parse_args(["evaluate", "--seeds", "1,2", "--resizers", "bilinear,learned"])
    assert args.func is evaluate_cmd.run and args.seeds == "1,2"


def test_train_run_tiny(tmp_path, capsys):
    args = _parser().parse_args(
        [
            "train",
            "--size",
            "8",
            "--num-train",
            "16",
            "--num-val",
            "8",
            "--batch-size",
            "8",
            "--max-steps",
            "2",
            "--classifier-width",
            "4",
            "--device",
            "cpu",
            "--no-progress",
            "--export",
            str(tmp_path / "r"),
        ]
    )
    assert args.func(args) == 0
    assert "exported resizer" in capsys.readouterr().out
    assert (tmp_path / "r" / "model.safetensors").exists()


def test_evaluate_tiny():
    cfg = EvaluateConfig(
        train=tiny_train_config(),
        seeds=(0, 1),
        resizers=("bilinear", "learned"),
    )
    report = evaluate(cfg)
    assert len(report["runs"]) == 4 and set(report["summary"]) == {"bilinear", "learned"}
    assert "learned" in format_summary(report)
    with pytest.raises(ValueError, match="unknown resizer"):
        EvaluateConfig(resizers=("magic",))


def test_preview_grid(tmp_path):
    if not (default_weights_path() / "config.json").exists():
        pytest.skip("bundled checkpoint not built yet")
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(90, 120, 3), (100, 70, 3)]):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    out = tmp_path / "grid.png"
    args = _parser().parse_args(
        [
            "preview",
            str(tmp_path / "0.png"),
            str(tmp_path / "1.png"),
            "--output",
            str(out),
            "--size",
            "32",
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    grid = Image.open(out)
    assert grid.size == (5 * 64, 18 + 2 * 64)
