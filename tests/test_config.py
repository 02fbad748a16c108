import pytest

from resize_pipeline.config import ConvertConfig, load_config_file, parse_color, parse_size
from resize_pipeline.errors import ConfigError


@pytest.mark.parametrize("value,expected", [("224", (224, 224)), ("224x160", (224, 160)), (64, (64, 64)),
                                            ([32, 16], (32, 16)), ("10X20", (10, 20))])
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "0", "abc", "224x", "x224", "99999", "-5"])
def test_parse_size_rejects(value):
    with pytest.raises(ConfigError, match="size"):
        parse_size(value)


def test_parse_color():
    assert parse_color("#ff8000") == (255, 128, 0)
    assert parse_color("1,2,3") == (1, 2, 3)
    with pytest.raises(ConfigError):
        parse_color("1,2")
    with pytest.raises(ConfigError):
        parse_color("300,0,0")


@pytest.mark.parametrize("field,value,allowed", [
    ("mode", "zoom", "center-crop"), ("format", "tfrecord", "webdataset"), ("encode", "gif", "jpg"),
    ("resizer", "magic", "lanczos"), ("decoder", "opencv", "pillow"), ("engine", "spark", "ray"),
])
def test_invalid_choices_name_the_allowed_values(field, value, allowed):
    with pytest.raises(ConfigError, match=allowed):
        ConvertConfig("src", "dst", **{field: value})


def test_side_modes_need_a_single_size():
    with pytest.raises(ConfigError, match="single size"):
        ConvertConfig("s", "d", size="224x160", mode="shorter-side")
    assert ConvertConfig("s", "d", size=256, mode="shorter-side").size == (256, 256)


def test_fingerprint_ignores_how_it_runs():
    a = ConvertConfig("s", "d", workers=1, quiet=True)
    b = ConvertConfig("s", "d2", workers=8, batch_size=7)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != ConvertConfig("s", "d", size=128).fingerprint()


def test_config_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[convert]\nsize = "128x96"\nsamples-per-shard = 7\nformat = "both"\n')
    yaml = tmp_path / "c.yaml"
    yaml.write_text("size: 64\nmode: pad\npad_color: [1, 2, 3]\n")
    assert ConvertConfig.from_dict({"source": "s", "dest": "d", **load_config_file(str(toml))}).samples_per_shard == 7
    cfg = ConvertConfig.from_dict({"source": "s", "dest": "d", **load_config_file(str(yaml))})
    assert (cfg.size, cfg.mode, cfg.pad_color) == ((64, 64), "pad", (1, 2, 3))
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n")
    with pytest.raises(ConfigError, match="unknown config keys: nonsense"):
        ConvertConfig.from_dict({"source": "s", "dest": "d", **load_config_file(str(bad))})
