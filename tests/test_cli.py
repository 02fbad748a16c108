"""The CLI contract: flag names, output files, exit codes and one-line errors."""

import json
import subprocess
import sys

import pytest

from resize_pipeline.cli import main


def test_convert_flags_and_summary(image_folder, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("quality: 80\nsamples-per-shard: 3\n")
    dst = tmp_path / "out"
    rc = main(["convert", str(image_folder / "**" / "*.jpg"), str(dst), "--size", "48x32", "--mode", "center-crop",
               "--resizer", "lanczos", "--encode", "png", "--format", "both", "--workers", "1", "--config", str(cfg),
               "--samples-per-shard", "4"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "8 inputs: 8 written, 0 failed" in out and str(dst) in out
    m = json.loads((dst / "_manifest.json").read_text())
    assert m["config"]["samples_per_shard"] == 4  # the flag wins over the file
    assert m["config"]["quality"] == 80 and m["config"]["encode"] == "png"
    assert len(list(dst.glob("*.tar"))) == 2 and len(list(dst.glob("*.parquet"))) == 2


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "resize_pipeline.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args,msg", [
    (["convert", "/nonexistent/x", "/tmp/o"], "source not found"),
    (["convert", "SRC", "/tmp/o", "--size", "abc"], "invalid size"),
    (["convert", "SRC", "/tmp/o", "--resizer", "magic"], "unknown resizer"),
])
def test_job_errors_are_one_line(image_folder, args, msg):
    args = [str(image_folder) if a == "SRC" else a for a in args]
    r = _cli(*args)
    assert r.returncode == 2
    assert msg in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_inputs_do_not_fail_the_job(broken_folder, tmp_path):
    r = _cli("convert", str(broken_folder), str(tmp_path / "o"), "--size", "32", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "13 inputs: 10 written, 3 failed" in r.stdout


def test_quiet(image_folder, tmp_path):
    r = _cli("convert", str(image_folder), str(tmp_path / "o"), "--size", "16", "-q")
    assert r.returncode == 0 and r.stdout == ""


def test_cli_starts_without_torch_or_ray():
    code = ("import sys; from resize_pipeline.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'nvidia.dali', 'webdataset') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_train_flags_name_the_registered_variants():
    from resize_pipeline.learned.model import INTERPOLATIONS, list_variants

    helps = {a.dest: a.help for a in main.__globals__["build_parser"]()._subparsers._group_actions[0].choices["train"]._actions}
    assert all(v in helps["variant"] for v in list_variants())
    assert all(i in helps["interpolation"] for i in INTERPOLATIONS)
