"""Bad values in a config file (TOML and YAML) or a flag: exit 2, one line on stderr, before any work.

SOURCE does not exist in these tests: a value that slipped through would end with "source not found"
instead of the message about the value; DEST must not be created.
"""

import pytest

from resize_pipeline.cli import main

# (key, TOML value, YAML value, message); None: no such value in that syntax
FILE_CASES = [
    ("quality", '"95"', '"95"', "config: quality must be an integer, got the string '95'"),
    ("quality", "95.0", "95.0", "config: quality must be an integer, got the number 95.0"),
    ("quality", None, "null", "config: quality must be an integer in 1..100, got null"),
    ("samples_per_shard", '"10"', "'10'", "config: samples_per_shard must be an integer, got the string '10'"),
    ("samples-per-shard", "0", "0", "config: samples_per_shard must be an integer in 1..10000000, got the integer 0"),
    ("max_pixels", '"lots"', "lots", "config: max_pixels must be an integer, got the string 'lots'"),
    ("resizer", "5", "5", "config: resizer must be a string, got the integer 5"),
    ("overwrite", '"false"', '"false"', "config: overwrite must be true or false, got the string 'false'"),
    ("overwrite", "0", "0", "config: overwrite must be true or false, got the integer 0"),
    ("size", "true", "true", "config: size must be N, WxH or [w, h] with sides in 1..16384 (e.g. 224 or 224x160), got the boolean true"),
    ("size", "[224, true]", "[224, true]", "config: size must be N, WxH or [w, h]"),
    ("size", "0", "0", "config: size must be N, WxH or [w, h] with sides in 1..16384"),
    ("batch_size", "2.5", "2.5", "config: batch_size must be an integer, got the number 2.5"),
    ("row_group_size", "0", "0", "config: row_group_size must be an integer in 1..1000000, got the integer 0"),
    ("row-group-size", "-1", "-1", "config: row_group_size must be an integer in 1..1000000, got the integer -1"),
    ("background", '"#zzzzzz"', "'#zzzzzz'", "config: background must be R,G,B, #rrggbb or [r, g, b] with values in 0..255, got the string '#zzzzzz'"),
    ("pad_color", '"#+f+f+f"', "'#+f+f+f'", "config: pad_color must be R,G,B, #rrggbb or [r, g, b] with values in 0..255, got the string '#+f+f+f'"),
    ("pad_color", "[0, 0, 256]", "[0, 0, 256]", "config: pad_color must be R,G,B, #rrggbb or [r, g, b] with values in 0..255, got the list [0, 0, 256]"),
    ("device", '"bogus"', "bogus", "config: device must be auto, cpu, cuda or cuda:N (N >= 0), got the string 'bogus'"),
    ("device", '"cuda:x"', "cuda:x", "config: device must be auto, cpu, cuda or cuda:N (N >= 0), got the string 'cuda:x'"),
    ("device", '"cuda:-1"', "cuda:-1", "config: device must be auto, cpu, cuda or cuda:N (N >= 0), got the string 'cuda:-1'"),
    ("mode", '"zoom"', "zoom", "config: mode must be one of stretch, center-crop, pad, shorter-side, longer-side, got the string 'zoom'"),
    ("precision", '"fp8"', "fp8", "config: precision must be one of auto, fp32, bf16, fp16, got the string 'fp8'"),
    ("compile", '"yes"', "'yes'", "config: compile must be true or false, got the string 'yes'"),
    ("hw_decoder_load", "1.5", "1.5", "config: hw_decoder_load must be a number in [0, 1], got the number 1.5"),
    ("read_timeout", "-1", "-1", "config: read_timeout must be a number in (0, 86400] (or 0 / none for no timeout), got the integer -1"),
    ("dry_run", '"true"', '"true"', "config: dry_run must be true or false, got the string 'true'"),
    ("ray_gpus_per_actor", "-1", "-1", "config: ray_gpus_per_actor must be a number in [0, 1024], got the integer -1"),
    ("ray_cpus_per_actor", "0", "0", "config: ray_cpus_per_actor must be a number in (0, 1024], got the integer 0"),
    ("ray_max_task_retries", "1.5", "1.5", "config: ray_max_task_retries must be an integer, got the number 1.5"),
    ("ray_ship_code", '"1"', "'1'", "config: ray_ship_code must be true or false, got the string '1'"),
    ("samples_per_shrd", "3", "3", "unknown config keys: samples_per_shrd (did you mean samples_per_shard?)"),
    ("source", '"elsewhere"', "elsewhere", "source must be given on the command line"),
]


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc, err, message, dest):
    assert rc == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("resize-pipeline: error: ")
    assert message in lines[0]
    assert not dest.exists()


FILE_VALUES = [(syntax, key, value, message) for key, toml, yaml, message in FILE_CASES
               for syntax, value in (("toml", toml), ("yaml", yaml)) if value is not None]


@pytest.mark.parametrize("syntax,key,value,message", FILE_VALUES, ids=[f"{s}:{k}={v}" for s, k, v, _ in FILE_VALUES])
def test_bad_config_file_value(tmp_path, capsys, syntax, key, value, message):
    cfg = tmp_path / f"c.{syntax}"
    cfg.write_text(f"{key} = {value}\n" if syntax == "toml" else f"{key}: {value}\n")
    dest = tmp_path / "out"
    rc, _, err = _run(capsys, "convert", tmp_path / "missing", dest, "--config", cfg)
    _assert_one_line_error(rc, err, message, dest)


@pytest.mark.parametrize("name,content,message", [
    ("c.toml", "quality = \n", "invalid TOML in"),
    ("c.toml", "[convert]\nquality = 1\n[convert]\n", "invalid TOML in"),
    ("c.yaml", "a: [\n", "invalid YAML in"),
    ("c.yaml", "quality: 90\n  mode: pad\n", "invalid YAML in"),
    ("c.yaml", "- quality\n", "must hold a mapping of option names to values"),
    ("c.yml", "1: 2\n", "config keys must be option names"),
    ("c.json", "{}", "must end in .toml, .yaml or .yml"),
])
def test_bad_config_file(tmp_path, capsys, name, content, message):
    cfg = tmp_path / name
    cfg.write_text(content)
    dest = tmp_path / "out"
    rc, _, err = _run(capsys, "convert", tmp_path / "missing", dest, "--config", cfg)
    _assert_one_line_error(rc, err, message, dest)


def test_unreadable_config_file(tmp_path, capsys):
    dest = tmp_path / "out"
    rc, _, err = _run(capsys, "convert", tmp_path / "missing", dest, "--config", tmp_path / "nope.toml")
    _assert_one_line_error(rc, err, "cannot read config file", dest)
    rc, _, err = _run(capsys, "convert", tmp_path / "missing", dest, "--config", tmp_path)
    _assert_one_line_error(rc, err, "cannot read config file", dest)


FLAG_CASES = [
    (["--quality", "95.5"], "--quality must be an integer in 1..100, got '95.5'"),
    (["--quality", "abc"], "--quality must be an integer in 1..100, got 'abc'"),
    (["--quality", "0"], "--quality must be an integer in 1..100, got '0'"),
    (["--samples-per-shard", "0"], "--samples-per-shard must be an integer in 1..10000000, got '0'"),
    (["--max-shard-bytes", "1k"], "--max-shard-bytes must be an integer in 1024..1099511627776, got '1k'"),
    (["--row-group-size", "0"], "--row-group-size must be an integer in 1..1000000, got '0'"),
    (["--row-group-size", "-1"], "--row-group-size must be an integer in 1..1000000, got '-1'"),
    (["--batch-size", "2.5"], "--batch-size must be an integer in 1..65536, got '2.5'"),
    (["--workers", "-2"], "--workers must be an integer in 0..1024, got '-2'"),
    (["--max-pixels", "lots"], "--max-pixels must be an integer in 1..1099511627776, got 'lots'"),
    (["--size", "true"], "--size must be N, WxH or [w, h] with sides in 1..16384 (e.g. 224 or 224x160), got 'true'"),
    (["--size", "0x10"], "--size must be N, WxH"),
    (["--size", "abc"], "--size must be N, WxH"),
    (["--resizer", "magic"], "--resizer must be one of nearest, bilinear, bicubic, lanczos, area, learned, learned:PATH, got 'magic'"),
    (["--background", "#zzzzzz"], "--background must be R,G,B, #rrggbb or [r, g, b] with values in 0..255, got '#zzzzzz'"),
    (["--pad-color", "#+f+f+f"], "--pad-color must be R,G,B, #rrggbb or [r, g, b] with values in 0..255, got '#+f+f+f'"),
    (["--pad-color", "1,2"], "--pad-color must be R,G,B"),
    (["--device", "bogus"], "--device must be auto, cpu, cuda or cuda:N (N >= 0), got 'bogus'"),
    (["--device", "cuda:x"], "--device must be auto, cpu, cuda or cuda:N (N >= 0), got 'cuda:x'"),
    (["--device", "cuda:-1"], "--device must be auto, cpu, cuda or cuda:N (N >= 0), got 'cuda:-1'"),
    (["--shard-prefix", "a b"], "--shard-prefix must be made of letters, digits, _ and -, got 'a b'"),
    (["--path-column", ""], "--path-column must be a non-empty string, got ''"),
    (["--hw-decoder-load", "1.5"], "--hw-decoder-load must be a number in [0, 1], got '1.5'"),
    (["--hw-decoder-load", "nan"], "--hw-decoder-load must be a number in [0, 1], got 'nan'"),
    (["--read-timeout", "-1"], "--read-timeout must be a number in (0, 86400] (or 0 / none for no timeout), got '-1'"),
    (["--read-timeout", "soon"], "--read-timeout must be a number in (0, 86400] (or 0 / none for no timeout), got 'soon'"),
    (["--ray-gpus-per-actor", "-1"], "--ray-gpus-per-actor must be a number in [0, 1024], got '-1'"),
    (["--ray-cpus-per-actor", "0"], "--ray-cpus-per-actor must be a number in (0, 1024], got '0'"),
    (["--ray-max-task-retries", "1.5"], "--ray-max-task-retries must be an integer in 0..1000000, got '1.5'"),
    (["--mode", "shorter-side", "--size", "3x4"], "mode shorter-side takes a single size N, got 3x4"),
]


@pytest.mark.parametrize("flags,message", FLAG_CASES, ids=[" ".join(f) for f, _ in FLAG_CASES])
def test_bad_flag_value(tmp_path, capsys, flags, message):
    dest = tmp_path / "out"
    rc, _, err = _run(capsys, "convert", tmp_path / "missing", dest, *flags)
    _assert_one_line_error(rc, err, message, dest)


def test_a_bad_flag_value_wins_over_a_good_file_value(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("quality = 90\n")
    dest = tmp_path / "out"
    rc, _, err = _run(capsys, "convert", tmp_path / "missing", dest, "--config", cfg, "--quality", "101")
    _assert_one_line_error(rc, err, "--quality must be an integer in 1..100, got '101'", dest)


def test_a_flag_does_not_hide_a_bad_file_value(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('quality = "90"\n')
    dest = tmp_path / "out"
    rc, _, err = _run(capsys, "convert", tmp_path / "missing", dest, "--config", cfg, "--quality", "90")
    _assert_one_line_error(rc, err, "config: quality must be an integer, got the string '90'", dest)


def test_fields_are_checked_one_by_one_in_the_file(tmp_path, capsys):
    """The file alone may not be a whole valid config: the flags complete it."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('mode = "shorter-side"\nsize = "3x4"\n')
    dest = tmp_path / "out"
    rc, _, err = _run(capsys, "convert", tmp_path / "missing", dest, "--config", cfg, "--size", "64")
    _assert_one_line_error(rc, err, "source not found", dest)  # the values were fine: the job started
