"""Issue 20, findings 4 and 6: every numeric option has a documented range, checked once in the config;
a YAML config cannot expand (aliases) or say one option twice (duplicate keys).

Each case is a job-level error: exit 2, one line, DEST not created.
"""

from __future__ import annotations

import json
import time

import pytest

from resize_pipeline.cli import main
from resize_pipeline.config import Float, Int

from .helpers import one_line_error, write_jpegs


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits") / "src"
    write_jpegs(root, 3, seed=2)
    return root


def _refused(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 2
    return one_line_error(capsys.readouterr().err)


def test_every_numeric_option_has_an_upper_bound():
    from resize_pipeline.config import ConvertConfig, Timeout

    unbounded = [name for name, o in ConvertConfig.options().items()
                 if isinstance(o.kind, (Int, Float)) and o.kind.hi is None]
    assert unbounded == []
    assert isinstance(ConvertConfig.options()["read_timeout"].kind, Timeout)


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--read-timeout", "1e10", "--read-timeout must be a number in (0, 86400] (or 0 / none for no timeout), got '1e10'"),
    ("--read-timeout", "inf", "--read-timeout must be a number in (0, 86400]"),
    ("--row-group-size", "99999999999999999999", "--row-group-size must be an integer in 1..1000000"),
    ("--samples-per-shard", "9223372036854775808", "--samples-per-shard must be an integer in 1..10000000"),
    ("--max-pixels", "99999999999999999999", "--max-pixels must be an integer in 1..1099511627776"),
    ("--max-shard-bytes", "99999999999999999999", "--max-shard-bytes must be an integer in 1024..1099511627776"),
    ("--batch-size", "10000000", "--batch-size must be an integer in 1..65536"),
    ("--workers", "100000", "--workers must be an integer in 0..1024"),
    ("--max-batch-pixels", "0", "--max-batch-pixels must be an integer in 1..1099511627776"),
    ("--max-bytes", "1e9", "--max-bytes must be an integer in 1..1099511627776, got '1e9'"),
    ("--io-timeout", "1e10", "--io-timeout must be a number in (0, 86400]"),
    ("--ray-cpus-per-actor", "1e300", "--ray-cpus-per-actor must be a number in (0, 1024]"),
    ("--ray-max-task-retries", "99999999999999999999", "--ray-max-task-retries must be an integer in 0..1000000"),
])
def test_values_beyond_platform_limits_are_refused(src, tmp_path, capsys, flag, value, says):
    dest = tmp_path / "out"
    line = _refused(capsys, "convert", src, dest, flag, value, "-q")
    assert says in line
    assert not dest.exists()


def test_a_config_file_value_beyond_the_range_is_refused(src, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("row_group_size = 9223372036854775807\n")
    line = _refused(capsys, "convert", src, tmp_path / "out", "--config", cfg)
    assert "config: row_group_size must be an integer in 1..1000000" in line


@pytest.mark.parametrize("spelling", ["0", "none", "NONE"])
def test_no_read_timeout_has_a_spelling(src, tmp_path, capsys, spelling):
    from resize_pipeline.cli import Parser
    from resize_pipeline.commands.convert import add_arguments, config_from_args

    p = Parser(prog="t")
    add_arguments(p)
    cfg = config_from_args(p.parse_args([str(src), str(tmp_path / "o"), "--read-timeout", spelling]))
    assert cfg.read_timeout is None
    assert main(["convert", str(src), str(tmp_path / "out"), "--read-timeout", spelling, "-q",
                 "--workers", "1", "--size", "16"]) == 0
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["counts"]["written"] == 3


def test_no_timeout_in_a_config_file(tmp_path):
    from resize_pipeline.config import load_config_file

    (tmp_path / "a.toml").write_text('read_timeout = "none"\nio_timeout = 0\n')
    (tmp_path / "b.yaml").write_text("read_timeout: null\n")
    from resize_pipeline.config import ConvertConfig

    a = ConvertConfig.from_dict({**load_config_file(str(tmp_path / "a.toml")), "source": "s", "dest": "d"})
    b = ConvertConfig.from_dict({**load_config_file(str(tmp_path / "b.yaml")), "source": "s", "dest": "d"})
    assert (a.read_timeout, a.io_timeout, b.read_timeout) == (None, None, None)


# ------------------------------------------------------------------------------------------ finding 6
def _alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes of nested aliases: 9 ** 9 (387 million) strings once expanded."""
    lines = ["anchors:", '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijklmnop"
    for i in range(1, levels):
        ref = ",".join([f"*{names[i - 1]}"] * 9)
        lines.append(f"  {names[i]}: &{names[i]} [{ref}]")
    lines.append(f"size: *{names[levels - 1]}")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once(src, tmp_path, capsys):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_alias_bomb())
    assert cfg.stat().st_size < 500
    t0 = time.perf_counter()
    line = _refused(capsys, "convert", src, tmp_path / "out", "--config", cfg)
    assert time.perf_counter() - t0 < 10  # on main this never ends (the message expands the aliases)
    assert "aliases (*name) are not allowed in a config file" in line and "line 3" in line
    assert len(line) < 300


def test_yaml_merge_keys_are_aliases_too(src, tmp_path, capsys):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("base: &b {size: 32}\nconvert:\n  <<: *b\n")
    assert "aliases (*name) are not allowed" in _refused(capsys, "convert", src, tmp_path / "out", "--config", cfg)


@pytest.mark.parametrize("text", ["size: 32\nsize: 64\n", "convert:\n  quality: 90\n  quality: 10\n",
                                  "storage_options:\n  anon: true\n  anon: false\n"])
def test_yaml_duplicate_keys_are_refused_as_in_toml(src, tmp_path, capsys, text):
    cfg = tmp_path / "d.yaml"
    cfg.write_text(text)
    line = _refused(capsys, "convert", src, tmp_path / "out", "--config", cfg)
    assert "invalid YAML in" in line and "duplicate key" in line and "line " in line
    toml = tmp_path / "d.toml"
    toml.write_text("size = 32\nsize = 64\n")
    assert "invalid TOML in" in _refused(capsys, "convert", src, tmp_path / "out", "--config", toml)


def test_a_huge_list_value_is_never_formatted_whole(tmp_path):
    """The refusal of a large value names its start only, and costs no more than that."""
    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.errors import ConfigError

    value = [[list(range(1000))] * 1000] * 1000  # a billion numbers, shared (as aliases would build it)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        ConvertConfig("s", "d", size=value)
    assert time.perf_counter() - t0 < 2
    assert len(str(info.value)) < 250 and "got the list [[[0, 1, 2" in str(info.value)


def test_a_config_file_too_large_to_be_one_is_refused(src, tmp_path, capsys):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("quality: 90\n" + "# padding\n" * 200_000)
    assert "larger than 1024 KiB" in _refused(capsys, "convert", src, tmp_path / "out", "--config", cfg)
