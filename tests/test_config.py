import dataclasses

import pytest

from resize_pipeline.config import (
    RAY_ENV,
    ConvertConfig,
    cli_options,
    load_config_file,
    parse_color,
    parse_size,
    ray_knobs_from_env,
)
from resize_pipeline.errors import ConfigError


@pytest.mark.parametrize("value,expected", [("224", (224, 224)), ("224x160", (224, 160)), (64, (64, 64)),
                                            ([32, 16], (32, 16)), ("10X20", (10, 20)), ((8, 9), (8, 9))])
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "0", "abc", "224x", "x224", "99999", "-5", True, False, 2.5, [1, True],
                                   [1, 2, 3], [0, 5], None])
def test_parse_size_rejects(value):
    with pytest.raises(ConfigError, match="size"):
        parse_size(value)


def test_parse_color():
    assert parse_color("#ff8000") == (255, 128, 0)
    assert parse_color("#FF8000") == (255, 128, 0)
    assert parse_color("1,2,3") == (1, 2, 3)
    assert parse_color(" 1, 2 ,3 ") == (1, 2, 3)
    assert parse_color([1, 2, 3]) == (1, 2, 3)


@pytest.mark.parametrize("value", ["1,2", "300,0,0", "#zzzzzz", "#+f+f+f", "#fff", "#ff80000", "ff8000",
                                   "-1,0,0", "1,2,3,4", "", [1, 2], [1, 2, 256], [True, 0, 0], [1.0, 2, 3],
                                   255, True, None])
def test_parse_color_rejects(value):
    with pytest.raises(ConfigError, match="colour must be R,G,B, #rrggbb or"):
        parse_color(value)


@pytest.mark.parametrize("field,value,allowed", [
    ("mode", "zoom", "center-crop"), ("format", "tfrecord", "webdataset"), ("encode", "gif", "jpg"),
    ("resizer", "magic", "lanczos"), ("decoder", "opencv", "pillow"), ("engine", "spark", "ray"),
    ("precision", "fp8", "bf16"), ("parallelism", "fork", "thread"),
])
def test_invalid_choices_name_the_allowed_values(field, value, allowed):
    with pytest.raises(ConfigError, match=allowed):
        ConvertConfig("src", "dst", **{field: value})


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_forms(device):
    assert ConvertConfig("s", "d", device=device).device == device


@pytest.mark.parametrize("device", ["bogus", "cuda:x", "cuda:-1", "cuda:", "CUDA", "tpu", "cuda:1:2", " cpu", "cuda0"])
def test_device_syntax_is_checked(device):
    with pytest.raises(ConfigError, match=r"device must be auto, cpu, cuda or cuda:N"):
        ConvertConfig("s", "d", device=device)


def test_side_modes_need_a_single_size():
    with pytest.raises(ConfigError, match="single size"):
        ConvertConfig("s", "d", size="224x160", mode="shorter-side")
    assert ConvertConfig("s", "d", size=256, mode="shorter-side").size == (256, 256)


# Every field's type and range, as a config file (or Python) would give it: (field, value, message).
BAD_VALUES = [
    ("quality", "95", "config: quality must be an integer, got the string '95'"),
    ("quality", 95.0, "config: quality must be an integer, got the number 95.0"),
    ("quality", True, "config: quality must be an integer, got the boolean true"),
    ("quality", 0, "config: quality must be an integer in 1..100, got the integer 0"),
    ("quality", 101, "config: quality must be an integer in 1..100"),
    ("quality", None, "config: quality must be an integer in 1..100, got null"),
    ("samples_per_shard", "10", "config: samples_per_shard must be an integer, got the string '10'"),
    ("samples_per_shard", 0, "samples_per_shard must be an integer in 1..10000000"),
    ("max_shard_bytes", 1023, "max_shard_bytes must be an integer in 1024..1099511627776"),
    ("max_shard_bytes", "1G", "max_shard_bytes must be an integer, got the string '1G'"),
    ("max_pixels", "lots", "config: max_pixels must be an integer, got the string 'lots'"),
    ("max_pixels", 0, "max_pixels must be an integer in 1..1099511627776"),
    ("batch_size", 2.5, "config: batch_size must be an integer, got the number 2.5"),
    ("batch_size", 0, "batch_size must be an integer in 1..65536"),
    ("row_group_size", 0, "config: row_group_size must be an integer in 1..1000000, got the integer 0"),
    ("row_group_size", -3, "row_group_size must be an integer in 1..1000000"),
    ("workers", -1, "workers must be an integer in 0..1024"),
    ("workers", "4", "workers must be an integer, got the string '4'"),
    ("overwrite", "false", "config: overwrite must be true or false, got the string 'false'"),
    ("overwrite", 0, "overwrite must be true or false, got the integer 0"),
    ("quiet", "yes", "quiet must be true or false"),
    ("draft", 1, "draft must be true or false"),
    ("overlap", "auto", "overlap must be true or false"),
    ("compile", "true", "compile must be true or false, got the string 'true'"),
    ("dry_run", 1, "dry_run must be true or false"),
    ("size", True, "config: size must be N, WxH or [w, h] with sides in 1..16384 (e.g. 224 or 224x160), got the boolean true"),
    ("size", [224, 2.5], "size must be N, WxH"),
    ("resizer", 5, "config: resizer must be a string, got the integer 5"),
    ("resizer", "learned:", "resizer must be one of"),
    ("mode", None, "mode must be one of"),
    ("background", "#zzzzzz", "config: background must be R,G,B, #rrggbb or [r, g, b] with values in 0..255, got the string '#zzzzzz'"),
    ("pad_color", "#+f+f+f", "config: pad_color must be R,G,B, #rrggbb"),
    ("pad_color", [0, 0, 256], "pad_color must be R,G,B"),
    ("shard_prefix", "a/b", "shard_prefix must be made of letters, digits, _ and -"),
    ("shard_prefix", "", "shard_prefix must be"),
    ("path_column", "", "path_column must be a non-empty string"),
    ("label_column", 3, "label_column must be a string"),
    ("address", True, "address must be a string"),
    ("device", "bogus", "config: device must be auto, cpu, cuda or cuda:N (N >= 0), got the string 'bogus'"),
    ("device", None, "config: device must be a string, got null"),
    ("engine", 5, "config: engine must be a string, got the integer 5"),
    ("format", None, "config: format must be one of webdataset, parquet, both, got null"),
    ("encode", "gif", "config: encode must be one of jpg, png, webp, npy, got the string 'gif'"),
    ("parallelism", True, "parallelism must be a string, got the boolean true"),
    ("decoder", "opencv", "decoder must be one of auto, pillow, dali"),
    ("precision", "fp8", "precision must be one of auto, fp32, bf16, fp16"),
    ("hw_decoder_load", 1.5, "config: hw_decoder_load must be a number in [0, 1], got the number 1.5"),
    ("hw_decoder_load", -0.1, "hw_decoder_load must be a number in [0, 1]"),
    ("hw_decoder_load", "0.5", "hw_decoder_load must be a number in [0, 1], got the string '0.5'"),
    ("hw_decoder_load", True, "hw_decoder_load must be a number in [0, 1], got the boolean true"),
    ("hw_decoder_load", float("nan"), "hw_decoder_load must be a number"),
    ("read_timeout", -1, "config: read_timeout must be a number in (0, 86400] (or 0 / none for no timeout), got the integer -1"),
    ("read_timeout", float("inf"), "read_timeout must be a number in (0, 86400]"),
    ("read_timeout", 1e10, "read_timeout must be a number in (0, 86400] (or 0 / none for no timeout), got the number 10000000000.0"),
    ("read_timeout", "soon", "read_timeout must be a number in (0, 86400]"),
    ("io_timeout", 86401, "config: io_timeout must be a number in (0, 86400] (or 0 / none for no timeout), got the integer 86401"),
    ("max_batch_pixels", 0, "config: max_batch_pixels must be an integer in 1..1099511627776, got the integer 0"),
    ("max_bytes", 2**40 + 1, "config: max_bytes must be an integer in 1..1099511627776, got the integer 1099511627777"),
    ("ray_gpus_per_actor", -1, "ray_gpus_per_actor must be a number in [0, 1024]"),
    ("ray_cpus_per_actor", 0, "ray_cpus_per_actor must be a number in (0, 1024]"),
    ("ray_max_task_retries", 1.5, "ray_max_task_retries must be an integer, got the number 1.5"),
    ("ray_max_task_retries", -1, "ray_max_task_retries must be an integer in 0..1000000"),
    ("ray_ship_code", "1", "ray_ship_code must be true or false, got the string '1'"),
    ("update", "yes", "config: update must be true or false, got the string 'yes'"),
    ("on_change", "overwrite", "config: on_change must be one of refuse, skip, replace, got the string 'overwrite'"),
    ("prune_deleted", 1, "prune_deleted must be true or false, got the integer 1"),
    ("dedup", "md5", "config: dedup must be one of sha256, got the string 'md5'"),
    ("storage_options", [1], "storage_options must be a mapping"),
    ("storage_options", {1: 2}, "storage_options must be a mapping with string keys"),
    ("cuda_graphs", "false", "config: cuda_graphs must be true or false, got the string 'false'"),
    ("channels_last", 0, "channels_last must be true or false"),
    ("jpeg_fancy_upsampling", None, "jpeg_fancy_upsampling must be true or false, got null"),
    ("shard_attempts", 0, "config: shard_attempts must be an integer in 1..100, got the integer 0"),
    ("shard_attempts", 101, "shard_attempts must be an integer in 1..100"),
    ("shard_attempts", "3", "shard_attempts must be an integer, got the string '3'"),
]


@pytest.mark.parametrize("field,value,message", BAD_VALUES, ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_strict_types_and_ranges(field, value, message):
    with pytest.raises(ConfigError) as info:
        ConvertConfig("s", "d", **{field: value})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_every_field_is_checked():
    """Each field's kind refuses a value of the wrong type (the table above covers every field)."""
    covered = {f for f, _, _ in BAD_VALUES}
    assert covered == {f.name for f in dataclasses.fields(ConvertConfig)} - {"source", "dest"}
    for name in ("source", "dest"):
        with pytest.raises(ConfigError, match=f"{name} must be a non-empty string"):
            ConvertConfig(**{"source": "s", "dest": "d", name: ""})


def test_optional_fields_take_none_and_new_defaults():
    cfg = ConvertConfig("s", "d", max_shard_bytes=None, overlap=None, address=None, path_column=None,
                        ray_gpus_per_actor=None, ray_ship_code=None)
    assert (cfg.precision, cfg.compile, cfg.hw_decoder_load, cfg.read_timeout, cfg.dry_run) == (
        "auto", False, 0.65, 60.0, False)
    assert (cfg.ray_gpus_per_actor, cfg.ray_cpus_per_actor, cfg.ray_max_task_retries, cfg.ray_ship_code) == (
        None, None, None, None)
    assert cfg.device == "auto"
    ok = ConvertConfig("s", "d", hw_decoder_load=1, read_timeout=0.5, ray_gpus_per_actor=0, ray_cpus_per_actor=0.5,
                       ray_max_task_retries=0, ray_ship_code=False, precision="bf16", compile=True)
    assert ok.hw_decoder_load == 1.0 and isinstance(ok.hw_decoder_load, float)


def test_replace_checks_again():
    cfg = ConvertConfig("s", "d")
    assert cfg.replace(quality=50).quality == 50
    with pytest.raises(ConfigError, match="quality"):
        cfg.replace(quality="50")


def test_to_dict_round_trips_and_hides_storage_options():
    cfg = ConvertConfig("s", "d", size="32x16", background="#010203", storage_options={"key": "secret"})
    d = cfg.to_dict()
    assert "storage_options" not in d and d["size"] == [32, 16] and d["background"] == [1, 2, 3]
    assert ConvertConfig.from_dict(d) == cfg.replace(storage_options={})


# --- fingerprint -------------------------------------------------------------------------------------
# a valid value other than the default, for each field
OTHER_VALUES = {
    "size": 128, "mode": "pad", "resizer": "lanczos", "format": "both", "encode": "png", "quality": 80,
    "samples_per_shard": 7, "max_shard_bytes": 4096, "shard_prefix": "part", "background": "0,0,0",
    "pad_color": "#ffffff", "max_pixels": 1000, "draft": False, "decoder": "dali", "precision": "fp32",
    "compile": True, "hw_decoder_load": 0.9, "path_column": "p", "label_column": "l", "row_group_size": 9,
    "workers": 3, "parallelism": "thread", "batch_size": 7, "overlap": True, "engine": "ray",
    "address": "auto", "device": "cuda:1", "read_timeout": 5, "max_batch_pixels": 1000, "max_bytes": 1000,
    "io_timeout": None, "dry_run": True, "overwrite": True,
    "quiet": True, "storage_options": {"anon": True}, "ray_gpus_per_actor": 0.5, "ray_cpus_per_actor": 2,
    "ray_max_task_retries": 3, "ray_ship_code": True, "dest": "elsewhere",
    "cuda_graphs": False, "channels_last": False, "jpeg_fancy_upsampling": False, "shard_attempts": 5,
    # the update options (alone only --update: the others need it, see test_update_options_...)
    "update": True, "on_change": "refuse", "prune_deleted": False, "dedup": None,
}
OUTPUT = {"size", "mode", "resizer", "format", "encode", "quality", "samples_per_shard", "max_shard_bytes",
          "shard_prefix", "background", "pad_color", "max_pixels", "draft", "decoder", "precision", "compile",
          "hw_decoder_load", "path_column", "label_column", "row_group_size", "source",
          "cuda_graphs", "channels_last", "jpeg_fancy_upsampling"}


def test_output_flags_are_the_documented_ones():
    options = ConvertConfig.options()
    assert {k for k, o in options.items() if o.output} == OUTPUT | {"dest"}
    assert set(OTHER_VALUES) | {"source"} == set(options)


@pytest.mark.parametrize("field", sorted(set(OTHER_VALUES) - OUTPUT))
def test_fingerprint_ignores_how_it_runs(field):
    base = ConvertConfig("s", "d")
    assert base.replace(**{field: OTHER_VALUES[field]}).fingerprint() == base.fingerprint()


@pytest.mark.parametrize("field", sorted(OUTPUT - {"source"}))
def test_fingerprint_follows_what_is_written(field):
    base = ConvertConfig("s", "d")
    changed = base.replace(**{field: OTHER_VALUES[field]})
    assert changed.fingerprint() != base.fingerprint()
    assert field in changed.output_dict()


def test_update_options_are_not_part_of_the_fingerprint_and_need_update():
    base = ConvertConfig("s", "d", update=True)
    for field, value in (("on_change", "replace"), ("prune_deleted", True), ("dedup", "sha256")):
        assert base.replace(**{field: value}).fingerprint() == base.fingerprint() == ConvertConfig("s", "d").fingerprint()
        with pytest.raises(ConfigError, match="applies to --update only"):
            ConvertConfig("s", "d", **{field: value})
    with pytest.raises(ConfigError, match="give one of them"):
        base.replace(overwrite=True)


def test_fingerprint_is_stable():
    a = ConvertConfig("s", "d", workers=1, quiet=True)
    b = ConvertConfig("s", "d2", workers=8, batch_size=7)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != ConvertConfig("s", "d", size=128).fingerprint()
    assert ConvertConfig("s", "d", size="224").fingerprint() == ConvertConfig("s", "d", size=[224, 224]).fingerprint()


# --- dictionaries and files ----------------------------------------------------------------------------
def test_from_dict_keys():
    assert ConvertConfig.from_dict({"source": "s", "dest": "d", "samples-per-shard": 3}).samples_per_shard == 3
    with pytest.raises(ConfigError, match=r"unknown config keys: samples_per_shrd \(did you mean samples_per_shard\?\)"):
        ConvertConfig.from_dict({"source": "s", "dest": "d", "samples_per_shrd": 3})
    with pytest.raises(ConfigError, match="unknown config keys: nonsense$"):
        ConvertConfig.from_dict({"source": "s", "dest": "d", "nonsense": 1})
    with pytest.raises(ConfigError, match="dest not given"):
        ConvertConfig.from_dict({"source": "s"})
    with pytest.raises(ConfigError, match="must be a mapping"):
        ConvertConfig.from_dict([("source", "s")])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="config keys must be option names, got the integer 1"):
        ConvertConfig.from_dict({"source": "s", "dest": "d", 1: 2})


def test_config_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[convert]\nsize = "128x96"\nsamples-per-shard = 7\nformat = "both"\nhw_decoder_load = 1\n')
    yaml = tmp_path / "c.yaml"
    yaml.write_text("size: 64\nmode: pad\npad_color: [1, 2, 3]\nmax_shard_bytes: null\ncompile: yes\n")
    cfg = ConvertConfig.from_dict({"source": "s", "dest": "d", **load_config_file(str(toml))})
    assert (cfg.samples_per_shard, cfg.size, cfg.hw_decoder_load) == (7, (128, 96), 1.0)
    cfg = ConvertConfig.from_dict({"source": "s", "dest": "d", **load_config_file(str(yaml))})
    assert (cfg.size, cfg.mode, cfg.pad_color, cfg.compile) == ((64, 64), "pad", (1, 2, 3), True)
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n")
    with pytest.raises(ConfigError, match="unknown config keys: nonsense"):
        ConvertConfig.from_dict({"source": "s", "dest": "d", **load_config_file(str(bad))})


@pytest.mark.parametrize("name,content,message", [
    ("c.toml", "x = \n", r"invalid TOML in .*c.toml: Invalid value \(at line 1, column 5\)"),
    ("c.toml", b"\xff\xfe", "invalid TOML in .*: not UTF-8 text"),
    ("c.toml", "convert = 5\n", "'convert' must be a table of options, got the integer 5"),
    ("c.yaml", "a: [\n", r"invalid YAML in .*c.yaml: expected the node content, but found '<stream end>' \(line 2"),
    ("c.yaml", "- 1\n- 2\n", r"must hold a mapping of option names to values, got the list \[1, 2\]"),
    ("c.yaml", "just text\n", "must hold a mapping of option names to values, got the string 'just text'"),
    ("c.yml", "1: 2\n", "config keys must be option names, got the integer 1"),
    ("c.json", "{}", "must end in .toml, .yaml or .yml"),
])
def test_bad_config_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=message) as info:
        load_config_file(str(path))
    assert "\n" not in str(info.value)


def test_unreadable_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*missing.toml: No such file"):
        load_config_file(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="cannot read config file .*: Is a directory"):
        load_config_file(str(tmp_path))


def test_empty_yaml_is_no_options(tmp_path):
    (tmp_path / "c.yaml").write_text("# nothing\n")
    assert load_config_file(str(tmp_path / "c.yaml")) == {}


# --- Ray knobs from the environment --------------------------------------------------------------------
def test_ray_knobs_from_env():
    cfg = ConvertConfig("s", "d", ray_cpus_per_actor=4)
    assert ray_knobs_from_env(cfg, {}) is cfg
    env = {RAY_ENV["ray_gpus_per_actor"]: "0.5", RAY_ENV["ray_max_task_retries"]: " 3 ",
           RAY_ENV["ray_ship_code"]: "0", RAY_ENV["ray_cpus_per_actor"]: ""}
    out = ray_knobs_from_env(cfg, env)
    assert (out.ray_gpus_per_actor, out.ray_cpus_per_actor, out.ray_max_task_retries, out.ray_ship_code) == (
        0.5, 4.0, 3, False)
    assert ray_knobs_from_env(cfg, {"RESIZE_PIPELINE_RAY_SHIP_CODE": "1"}).ray_ship_code is True


def test_ray_knobs_from_os_environ(monkeypatch):
    monkeypatch.setenv("RESIZE_PIPELINE_RAY_CPUS_PER_ACTOR", "2")
    assert ray_knobs_from_env(ConvertConfig("s", "d")).ray_cpus_per_actor == 2.0


@pytest.mark.parametrize("var,value,message", [
    ("RESIZE_PIPELINE_RAY_GPUS_PER_ACTOR", "x", "RESIZE_PIPELINE_RAY_GPUS_PER_ACTOR must be a number in [0, 1024], got 'x'"),
    ("RESIZE_PIPELINE_RAY_GPUS_PER_ACTOR", "-1", "RESIZE_PIPELINE_RAY_GPUS_PER_ACTOR must be a number in [0, 1024], got '-1'"),
    ("RESIZE_PIPELINE_RAY_CPUS_PER_ACTOR", "0", "RESIZE_PIPELINE_RAY_CPUS_PER_ACTOR must be a number in (0, 1024], got '0'"),
    ("RESIZE_PIPELINE_RAY_CPUS_PER_ACTOR", "nan", "RESIZE_PIPELINE_RAY_CPUS_PER_ACTOR must be a number in (0, 1024], got 'nan'"),
    ("RESIZE_PIPELINE_RAY_MAX_TASK_RETRIES", "1.5", "RESIZE_PIPELINE_RAY_MAX_TASK_RETRIES must be an integer in 0..1000000, got '1.5'"),
    ("RESIZE_PIPELINE_RAY_MAX_TASK_RETRIES", "-1", "RESIZE_PIPELINE_RAY_MAX_TASK_RETRIES must be an integer in 0..1000000, got '-1'"),
    ("RESIZE_PIPELINE_RAY_SHIP_CODE", "maybe", "RESIZE_PIPELINE_RAY_SHIP_CODE must be 1/true/yes/on or 0/false/no/off, got 'maybe'"),
])
def test_ray_env_errors_name_the_variable(var, value, message):
    with pytest.raises(ConfigError) as info:
        ray_knobs_from_env(ConvertConfig("s", "d"), {var: value})
    assert str(info.value) == message


def test_ray_fields_are_all_overridable():
    assert set(RAY_ENV) == {k for k in ConvertConfig.options() if k.startswith("ray_")}
    assert set(RAY_ENV) <= set(cli_options())
