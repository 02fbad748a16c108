import argparse
import json

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


def test_evaluate_tiny(tmp_path):
    cfg = EvaluateConfig(
        train=tiny_train_config(),
        seeds=(0, 1),
        resizers=("bilinear", "bicubic-noaa", "learned"),
        fidelity_photos=2,
        fidelity_size=32,
        json_out=str(tmp_path / "r.json"),
        markdown_out=str(tmp_path / "r.md"),
    )
    report = evaluate(cfg)
    assert len(report["runs"]) == 6 and set(report["summary"]) == {"bilinear", "bicubic-noaa", "learned"}
    text = format_summary(report)
    assert "learned" in text and "learned minus baseline" in text and "grey spread" in text
    fid = report["fidelity"]
    assert fid["photos"] == 2 and fid["grey_spread_mean"]["max"] == 0.0  # colour-safe default variant
    assert [r for r in report["runs"] if r["resizer"] == "learned"][0]["fidelity"]["size"] == 32
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["learned"]["accuracies"]
    md = (tmp_path / "r.md").read_text()
    assert "| **learned** |" in md and "± " in md and "low-pass PSNR" in md
    with pytest.raises(ValueError, match="unknown resizer"):
        EvaluateConfig(resizers=("magic",))
    with pytest.raises(ValueError, match="seeds must differ"):
        EvaluateConfig(seeds=(1, 1))


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
