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
    (["convert", "SRC", "/tmp/o", "--size", "abc"], "--size must be N, WxH"),
    (["convert", "SRC", "/tmp/o", "--resizer", "magic"], "--resizer must be one of"),
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


# --- usage errors: the message, then where to look; exit 2 -----------------------------------------------
@pytest.mark.parametrize("argv,prog,message", [
    (["convert", "a", "b", "--bogus"], "resize-pipeline convert", "unrecognized arguments: --bogus"),
    (["convert", "a", "b", "--mode", "zoom"], "resize-pipeline convert",
     "argument --mode: invalid choice: 'zoom' (choose from"),
    (["convert", "a", "b", "--precision", "fp8"], "resize-pipeline convert", "argument --precision: invalid choice"),
    (["convert", "a"], "resize-pipeline convert", "the following arguments are required: dest"),
    (["convert"], "resize-pipeline convert", "the following arguments are required: source, dest"),
    (["convert", "a", "b", "--quality"], "resize-pipeline convert", "argument --quality: expected one argument"),
    (["train", "--bogus"], "resize-pipeline train", "unrecognized arguments: --bogus"),
    (["train", "--epochs", "x"], "resize-pipeline train", "argument --epochs: invalid int value: 'x'"),
    (["evaluate", "--bogus"], "resize-pipeline evaluate", "unrecognized arguments: --bogus"),
    (["preview", "img.jpg"], "resize-pipeline preview", "the following arguments are required: --output/-o"),
    (["demo", "d", "--num", "many"], "resize-pipeline demo", "argument --num: invalid int value: 'many'"),
    (["bogus"], "resize-pipeline", "argument COMMAND: invalid choice: 'bogus'"),
    (["--bogus", "convert", "a", "b"], "resize-pipeline convert", "unrecognized arguments: --bogus"),
    ([], "resize-pipeline", "a command is required: convert, inspect, demo, train, evaluate, preview"),
])
def test_usage_errors_are_short(capsys, argv, prog, message):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.splitlines() == [err.splitlines()[0], f"try '{prog} --help'"]
    assert err.startswith(f"{prog}: error: ") and message in err.splitlines()[0]
    assert "usage:" not in err


def test_usage_errors_in_a_process():
    r = _cli("convert", "a", "b", "--bogus")
    assert r.returncode == 2
    assert r.stderr == "resize-pipeline convert: error: unrecognized arguments: --bogus\ntry 'resize-pipeline convert --help'\n"


def test_help_and_version_exit_0(capsys):
    assert main(["--version"]) == 0
    assert main(["convert", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # as wrapped for the terminal's width
    for text in ("--quality N", "jpg/webp quality (range 1..100; default: 95)", "{auto,fp32,bf16,fp16}", "(default: auto)",
                 "--compile, --no-compile", "--hw-decoder-load SHARE", "(range [0, 1]; default: 0.65)",
                 "--read-timeout SECONDS", "(range (0, 86400], or 0/none for no timeout; default: 60)",
                 "--batch-size N", "(range 1..65536; default: 64)", "--max-batch-pixels PIXELS", "--dry-run", "--ray-gpus-per-actor N", "--ray-ship-code, --no-ray-ship-code",
                 "{webdataset,parquet,both}", "(default: webdataset)", "(default: 255,255,255)", "-q, --quiet"):
        assert text in out, text


def test_job_error_messages_are_reduced_to_one_line(monkeypatch, capsys):
    from resize_pipeline.commands import convert as convert_cmd
    from resize_pipeline.errors import OutputError

    def fail(args):
        raise OutputError("first line\n  second line\n")

    monkeypatch.setattr(convert_cmd, "run", fail)
    assert main(["convert", "a", "b"]) == 2
    assert capsys.readouterr().err == "resize-pipeline: error: first line second line\n"


def test_unexpected_errors_are_not_hidden(monkeypatch):
    from resize_pipeline.commands import convert as convert_cmd

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(convert_cmd, "run", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["convert", "a", "b"])


# --- the convert flags are generated from ConvertConfig --------------------------------------------------
def _convert_parser():
    from resize_pipeline.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return parser, sub.choices["convert"]


def test_every_cli_field_has_a_flag_and_every_flag_a_field():
    import argparse

    from resize_pipeline.config import ConvertConfig, cli_options, flag_names

    _, convert = _convert_parser()
    actions = {a.dest: a for a in convert._actions if not isinstance(a, argparse._HelpAction)}
    positional = {k for k, o in ConvertConfig.options().items() if o.positional}
    assert positional == {"source", "dest"}
    assert set(actions) == set(cli_options()) | positional | {"config"}
    assert set(ConvertConfig.options()) - set(actions) == {"storage_options"}  # Python / config file only
    for name, option in cli_options().items():
        strings = tuple(actions[name].option_strings)
        expected = flag_names(name, option)
        if isinstance(actions[name], argparse.BooleanOptionalAction):
            expected += tuple(f"--no-{f[2:]}" for f in expected)
        assert strings == expected, name
        assert actions[name].default is None, name  # "not given": the config file or the default decides


CONTRACT = ["--size", "--mode", "--resizer", "--format", "--encode", "--quality", "--samples-per-shard",
            "--max-shard-bytes", "--shard-prefix", "--workers", "--parallelism", "--batch-size", "--decoder",
            "--engine", "--address", "--device", "--background", "--pad-color", "--max-pixels", "--no-draft",
            "--overlap", "--no-overlap", "--path-column", "--label-column", "--row-group-size", "--overwrite",
            "-q", "--quiet", "--config"]
NEW = ["--precision", "--compile", "--no-compile", "--hw-decoder-load", "--ray-gpus-per-actor",
       "--ray-cpus-per-actor", "--ray-max-task-retries", "--ray-ship-code", "--no-ray-ship-code",
       "--read-timeout", "--dry-run", "--update", "--on-change", "--prune-deleted", "--dedup",
       "--max-batch-pixels", "--max-bytes", "--io-timeout",  # issue 20: the names the issue spells out
       # issue 17: GPU-path options that could not be set, and the attempt cap
       "--cuda-graphs", "--no-cuda-graphs", "--channels-last", "--no-channels-last", "--jpeg-fancy-upsampling",
       "--no-jpeg-fancy-upsampling", "--shard-attempts"]


def test_flag_spellings():
    _, convert = _convert_parser()
    assert set(convert._option_string_actions) == set(CONTRACT) | set(NEW) | {"-h", "--help"}


def test_contract_flags_parse(tmp_path):
    from resize_pipeline.cli import build_parser
    from resize_pipeline.commands.convert import config_from_args

    cfg = tmp_path / "c.toml"
    cfg.write_text("quality = 70\n")
    argv = ["convert", "SRC", "DST", "--size", "32x16", "--mode", "pad", "--resizer", "learned:/w/r",
            "--format", "both", "--encode", "png", "--quality", "80", "--samples-per-shard", "7",
            "--max-shard-bytes", "2048", "--shard-prefix", "part", "--workers", "2", "--parallelism", "thread",
            "--batch-size", "8", "--decoder", "dali", "--engine", "ray", "--address", "ray://h:10001",
            "--device", "cuda:1", "--background", "1,2,3", "--pad-color", "#0a0b0c", "--max-pixels", "1000",
            "--no-draft", "--overlap", "--path-column", "p", "--label-column", "l", "--row-group-size", "9",
            "--overwrite", "-q", "--config", str(cfg),
            "--precision", "bf16", "--compile", "--hw-decoder-load", "0.9", "--read-timeout", "5", "--dry-run",
            "--ray-gpus-per-actor", "0.5", "--ray-cpus-per-actor", "4", "--ray-max-task-retries", "3",
            "--no-ray-ship-code"]
    c = config_from_args(build_parser().parse_args(argv))
    assert (c.source, c.dest, c.size, c.mode, c.resizer, c.format, c.encode) == (
        "SRC", "DST", (32, 16), "pad", "learned:/w/r", "both", "png")
    assert (c.quality, c.samples_per_shard, c.max_shard_bytes, c.shard_prefix, c.workers, c.parallelism) == (
        80, 7, 2048, "part", 2, "thread")
    assert (c.batch_size, c.decoder, c.engine, c.address, c.device) == (8, "dali", "ray", "ray://h:10001", "cuda:1")
    assert (c.background, c.pad_color, c.max_pixels, c.draft, c.overlap) == ((1, 2, 3), (10, 11, 12), 1000, False, True)
    assert (c.path_column, c.label_column, c.row_group_size, c.overwrite, c.quiet) == ("p", "l", 9, True, True)
    assert (c.precision, c.compile, c.hw_decoder_load, c.read_timeout, c.dry_run) == ("bf16", True, 0.9, 5.0, True)
    assert (c.ray_gpus_per_actor, c.ray_cpus_per_actor, c.ray_max_task_retries, c.ray_ship_code) == (0.5, 4.0, 3, False)
    other = config_from_args(build_parser().parse_args(
        ["convert", "S", "D", "--quiet", "--no-overlap", "--no-compile", "--ray-ship-code", "--size", "64"]))
    assert (other.quiet, other.overlap, other.compile, other.ray_ship_code, other.size) == (True, False, False, True, (64, 64))
    plain = config_from_args(build_parser().parse_args(["convert", "S", "D"]))
    from resize_pipeline.config import ConvertConfig

    assert plain == ConvertConfig("S", "D")  # no flag given: every default


@pytest.mark.parametrize("syntax", ["toml", "yaml"])
def test_flags_override_the_config_file(tmp_path, syntax):
    from resize_pipeline.cli import build_parser
    from resize_pipeline.commands.convert import config_from_args

    cfg = tmp_path / f"c.{syntax}"
    if syntax == "toml":
        cfg.write_text('[convert]\nquality = 80\nsamples-per-shard = 3\noverwrite = true\ncompile = true\n'
                       'overlap = true\nmode = "pad"\nhw_decoder_load = 0.5\nstorage_options = {anon = true}\n')
    else:
        cfg.write_text("quality: 80\nsamples-per-shard: 3\noverwrite: true\ncompile: true\noverlap: true\n"
                       "mode: pad\nhw_decoder_load: 0.5\nstorage_options: {anon: true}\n")
    args = build_parser().parse_args(["convert", "S", "D", "--config", str(cfg), "--quality", "70",
                                      "--no-compile", "--no-overlap", "--mode", "stretch"])
    c = config_from_args(args)
    assert (c.quality, c.compile, c.overlap, c.mode) == (70, False, False, "stretch")  # the flags
    assert (c.samples_per_shard, c.overwrite, c.hw_decoder_load, c.storage_options) == (3, True, 0.5, {"anon": True})
