"""core/config.py, strict configuration merging: defaults, YAML, overrides, and errors naming the key."""

from dataclasses import dataclass, field

import pytest

from posenet_ros.core.config import ConfigError, config_to_dict, load_config


@dataclass
class Inner:
    rate: float = 0.1
    steps: int = 10


@dataclass
class Outer:
    name: str = "a"
    flag: bool = False
    size: tuple[int, int] = (4, 3)
    items: list[str] = field(default_factory=lambda: ["x"])
    maybe: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults_yaml_and_overrides_merge_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: b\ninner:\n  steps: 20\n")
    config = load_config(Outer, path, ["inner.rate=1e-3", "items=[p, q]", "size=[8, 6]", "maybe=5"])
    assert config == Outer(name="b", items=["p", "q"], size=(8, 6), maybe=5, inner=Inner(0.001, 20))
    assert isinstance(config.inner.rate, float)
    assert config_to_dict(config)["size"] == [8, 6]


def test_an_empty_override_of_a_text_setting_is_the_empty_string():
    # `data.val_split=""` in a shell arrives as `data.val_split=`; YAML reads the empty value as null
    assert load_config(Outer, None, ["name="]).name == ""
    assert load_config(Outer, None, ["name=''"]).name == ""
    assert load_config(Outer, None, ["maybe="]).maybe is None  # an optional setting: None, as before


def test_integers_are_accepted_for_floats_but_not_the_reverse():
    assert load_config(Outer, None, ["inner.rate=2"]).inner.rate == 2.0
    with pytest.raises(ConfigError, match=r"inner\.steps: expected an integer"):
        load_config(Outer, None, ["inner.steps=2.5"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inner.rte=1", r"unknown config key\(s\): inner\.rte"),
        ("colour=red", r"unknown config key\(s\): colour"),
        ("flag=3", r"flag: expected true or false"),
        ("size=[1, 2, 3]", r"size: expected 2 values"),
        ("name", r"not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, [override])


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*missing\.yaml"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(Outer, bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping"):
        load_config(Outer, listed)


@pytest.mark.parametrize(("file", "module", "name"), [
    ("config/train.yaml", "posenet_ros.training.train", "TrainConfig"),
    ("config/synthetic_scene.yaml", "posenet_ros.data.synthetic", "SceneConfig"),
])
def test_shipped_yaml_files_hold_exactly_the_defaults(file, module, name):
    import importlib
    from pathlib import Path

    cls = getattr(importlib.import_module(module), name)
    path = Path(__file__).resolve().parents[2] / file
    assert config_to_dict(load_config(cls, path)) == config_to_dict(cls())
    # Every key is written out, so the file documents the whole configuration.
    from posenet_ros.core.config import read_yaml

    def keys(values, prefix=""):
        return {prefix + k for k, v in values.items() if not isinstance(v, dict)} | {
            key for k, v in values.items() if isinstance(v, dict) for key in keys(v, prefix + k + ".")}

    assert keys(read_yaml(path)) == keys(config_to_dict(cls()))
