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


def test_evaluate_an_exported_resizer_on_the_users_data(image_folder, tmp_path, capsys):
    """`evaluate --resizers learned:DIR,bilinear`: the exported resizer, frozen, against a baseline,
    the backbone trained behind each, two seeds; JSON, Markdown and the exported resizer's colour
    fidelity (issue 16, finding 3: evaluate always retrained from scratch)."""
    from resize_pipeline.cli import main
    from resize_pipeline.learned.export import export_resizer
    from resize_pipeline.learned.model import create_resizer

    art = export_resizer(create_resizer("resizer_n16_r1_lumahp", input_scale=1.5), tmp_path / "mine")
    before = (art / "model.safetensors").read_bytes()
    rc = main(["evaluate", "--data", str(image_folder), "--resizers", f"learned:{art},bilinear", "--seeds", "0,1",
               "--size", "16", "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--no-progress",
               "--threads", "1", "--backbone", "backbone_factories:tiny_cnn", "--pretrain-epochs", "0",
               "--fidelity-photos", "2", "--fidelity-size", "32",
               "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")])
    out = capsys.readouterr().out
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    name = f"learned:{art}"
    assert list(report["summary"]) == [name, "bilinear"] and len(report["runs"]) == 4
    assert report["config"]["train"]["input_scale"] == 1.5  # every run's inputs at the exported scale
    assert all(r["steps"] == 2 for r in report["runs"])  # 8 training images, batch 4, 1 epoch
    fid = report["exported_fidelity"][name]
    assert fid["photos"] == 2 and fid["size"] == 32 and fid["grey_spread_mean"] == 0.0
    assert f"{name} minus baseline (points): bilinear" in out and f"{name} on 2 held-out photos" in out
    md = (tmp_path / "r.md").read_text()
    assert f"| **learned, exported `{art}` (frozen)** |" in md and "low-pass PSNR" in md
    assert (art / "model.safetensors").read_bytes() == before  # frozen: never written


def test_evaluate_scores_a_trained_backbone_as_it_is(image_folder, tmp_path):
    """`--backbone-weights` with `--epochs 0`: no training, one run per resizer."""
    from resize_pipeline.learned.train import train

    train(tiny_train_config(data=str(image_folder), backbone="backbone_factories:tiny_cnn", resizer="bilinear",
                            batch_size=4, target_size=16, epochs=1, max_steps=None, pretrain_epochs=0,
                            out_dir=str(tmp_path / "pre")))
    cfg = EvaluateConfig(
        train=tiny_train_config(data=str(image_folder), backbone="backbone_factories:tiny_cnn", batch_size=4,
                                target_size=16, epochs=0, backbone_weights=str(tmp_path / "pre" / "backbone.pt")),
        seeds=(0, 1), resizers=("bilinear", "bicubic"), fidelity_photos=0)
    report = evaluate(cfg)
    assert [(r["resizer"], r["steps"]) for r in report["runs"]] == [("bilinear", 0), ("bicubic", 0)]
    with pytest.raises(ValueError, match="0 only with --backbone-weights"):
        tiny_train_config(epochs=0)


def test_evaluate_json_to_an_unwritable_path(tmp_path, capsys, monkeypatch):
    """Refused before any training when the folder is missing; when the write itself fails at the end,
    the table is on stdout and the JSON in a fallback file, then one line, exit 2."""
    from resize_pipeline.cli import main
    from resize_pipeline.learned import evaluate as evaluate_mod

    args = ["evaluate", "--resizers", "bilinear", "--seeds", "0", "--size", "8", "--num-train", "16",
            "--num-val", "8", "--batch-size", "8", "--max-steps", "1", "--classifier-width", "4",
            "--device", "cpu", "--no-progress", "--fidelity-photos", "0"]
    rc = main([*args, "--json", str(tmp_path / "missing" / "r.json")])
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--json" in err and "no such folder" in err and out == ""

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluate_mod, "_write", disk_full)
    monkeypatch.setattr(evaluate_mod.tempfile, "tempdir", str(tmp_path))
    rc = main([*args, "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.startswith("resize-pipeline: error")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "bilinear" in out and "mean acc" in out  # the results were shown first
    fallback = lines[0].rsplit("the results are in ", 1)[1]
    assert "No space left on device" in lines[0]
    assert json.loads(open(fallback).read())["summary"]["bilinear"]["accuracies"]
