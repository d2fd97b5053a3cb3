"""node/parameters.py: the parameter table both runtimes read, NodeSettings validation (types, ranges,
choices, unknown names, the required model), parameters files as rcl matches their sections, and
command-line overrides; and config/relocalize.yaml, read as both runtimes read it, holds every
parameter with its default, in the type rcl gives it."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from posenet_ros.node.parameters import (
    NODE_NAME,
    NODE_PARAMETERS,
    NodeSettings,
    parameter_from_text,
    parse_override,
    read_parameters_file,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "relocalize.yaml"
SPECS = {spec.name: spec for spec in NODE_PARAMETERS}


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same type, NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == b


# --------------------------------------------------------------------------------------------------
# config/relocalize.yaml
# --------------------------------------------------------------------------------------------------


def _rcl_type(node: yaml.ScalarNode) -> str:
    """The type rcl_yaml_param_parser (`get_value` in parse.c) gives a scalar: bool, integer (strtol
    base 0), double (strtod, .nan/.inf) or string; quoted scalars are strings."""
    text = node.value
    if node.style in ("'", '"'):
        return "string"
    if not text:
        raise AssertionError(f"line {node.start_mark.line + 1}: rcl refuses an empty unquoted value")
    if text in {"Y", "y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
                "N", "n", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"}:
        return "bool"
    if re.fullmatch(r"\s*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text):
        return "integer"
    if re.fullmatch(r"[+-]?\.(nan|NaN|NAN|inf|Inf|INF)", text) or re.fullmatch(
            r"\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|(?i:inf|infinity|nan))", text):
        return "double"
    return "string"


ROS_TYPES = {bool: "bool", int: "integer", float: "double", str: "string"}


@pytest.mark.parametrize(("text", "expected"), [
    ("true", "bool"), ("off", "bool"), ("'true'", "string"), ("1", "integer"), ("-1", "integer"),
    ("0x1f", "integer"), ("1.0", "double"), ("1e3", "double"), (".nan", "double"), ("-.inf", "double"),
    ("nan", "double"), ('""', "string"), ("auto", "string"), ("/camera/image_raw", "string"),
])


def test_rcl_type_emulation(text, expected):
    assert _rcl_type(yaml.compose(text)) == expected


def test_rcl_refuses_an_empty_unquoted_value():
    with pytest.raises(AssertionError, match="empty unquoted"):
        _rcl_type(yaml.compose("key:").value[0][1])


def test_config_has_every_parameter_with_its_default():
    document = yaml.safe_load(CONFIG.read_text())
    assert list(document) == [NODE_NAME]
    values = document[NODE_NAME]["ros__parameters"]
    assert set(values) == set(SPECS)
    for name, value in values.items():
        assert _same(value, SPECS[name].default), f"{name}: {value!r}, default {SPECS[name].default!r}"
    from_file = read_parameters_file(CONFIG)
    assert from_file.keys() == values.keys() and all(_same(from_file[k], values[k]) for k in values)


def test_config_values_have_the_parameter_types_under_rcl():
    """rclpy rejects an override of another type than the declared default (an integer for a double
    parameter), so every value must parse in rcl as the type of its default."""
    root = yaml.compose(CONFIG.read_text())
    (_, node_section), = root.value
    (_, parameters), = node_section.value
    for key, value in parameters.value:
        assert _rcl_type(value) == ROS_TYPES[type(SPECS[key.value].default)], key.value


def test_config_with_a_model_is_valid_and_without_one_is_refused():
    values = read_parameters_file(CONFIG)
    settings = NodeSettings.from_values({**values, "model": "/runs/office"})
    expected = NodeSettings(model="/runs/office").values()
    assert all(_same(settings.values()[name], expected[name]) for name in SPECS)
    with pytest.raises(ValueError, match="'model' is required"):
        NodeSettings.from_values(values)


# --------------------------------------------------------------------------------------------------
# parameters.py: validation and parameters files
# --------------------------------------------------------------------------------------------------


def _wrong_type(spec) -> Any:
    return {bool: "true", int: 1.5, float: "1.0", str: 1}[type(spec.default)]


@pytest.mark.parametrize("spec", NODE_PARAMETERS, ids=lambda spec: spec.name)
def test_a_value_of_another_type_is_refused_naming_the_parameter(spec):
    with pytest.raises(ValueError, match=f"parameter '{spec.name}' must be {type(spec.default).__name__}"):
        NodeSettings.from_values({"model": "m", spec.name: _wrong_type(spec)})


@pytest.mark.parametrize("spec", [s for s in NODE_PARAMETERS if isinstance(s.default, int | float)
                                  and not isinstance(s.default, bool)], ids=lambda spec: spec.name)


def test_bool_is_not_a_number(spec):
    with pytest.raises(ValueError, match=f"'{spec.name}'"):
        NodeSettings.from_values({"model": "m", spec.name: True})


def test_an_integer_is_accepted_for_a_double_parameter():
    settings = NodeSettings.from_values({"model": "m", "reset_gap": 2})
    assert settings.reset_gap == 2.0 and type(settings.reset_gap) is float


RANGED = [spec for spec in NODE_PARAMETERS if spec.minimum is not None]


def test_the_ranged_parameters_are_the_numeric_ones_with_limits():
    assert {spec.name for spec in RANGED} == {"max_depth_stamp_diff", "mc_samples", "loop_closure_min_frames",
                                              "reset_gap", "diagnostics_period", "smoothing_reset_unknown",
                                              "transform_tolerance", "transform_timeout",
                                              "initial_pose_lost_frames", "odometry_position_noise",
                                              "odometry_rotation_noise_deg", "odometry_max_gap"}
    for spec in RANGED:
        assert spec.maximum is not None and spec.minimum <= spec.default <= spec.maximum


@pytest.mark.parametrize("spec", RANGED, ids=lambda spec: spec.name)
def test_the_range_limits_are_accepted_and_values_outside_refused(spec):
    kind = type(spec.default)
    for limit in (spec.minimum, spec.maximum):
        assert getattr(NodeSettings.from_values({"model": "m", spec.name: kind(limit)}), spec.name) == limit
    step = 1 if kind is int else 1e-6
    for outside in (kind(spec.minimum) - step, kind(spec.maximum) + step):
        with pytest.raises(ValueError, match=rf"parameter '{spec.name}' must lie in \["):
            NodeSettings.from_values({"model": "m", spec.name: outside})


@pytest.mark.parametrize("name", ["max_position_sigma", "max_rotation_sigma"])
def test_a_sigma_limit_is_nan_positive_or_inf(name):
    assert math.isnan(getattr(NodeSettings.from_values({"model": "m"}), name))  # the checkpoint's
    for value in (0.25, math.inf):
        assert getattr(NodeSettings.from_values({"model": "m", name: value}), name) == value
    for value in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"parameter '{name}' must be > 0"):
            NodeSettings.from_values({"model": "m", name: value})


def test_odometry_is_none_tf_or_a_topic_and_needs_the_robot_frames():
    assert NodeSettings.from_values({"model": "m"}).odometry == "none"
    for value in ("tf", "/odom", "odom", "/robot1/wheel/odometry", "~/odom"):
        assert NodeSettings.from_values({"model": "m", "odometry": value}).odometry == value
    for value in ("", "/odom topic", "/1odom", "odom/", "//odom"):
        with pytest.raises(ValueError, match="parameter 'odometry' must be none, tf or a topic name"):
            NodeSettings.from_values({"model": "m", "odometry": value})
    for frames in ({"base_frame": ""}, {"odom_frame": ""}):
        with pytest.raises(ValueError, match="parameter 'odometry' needs base_frame and odom_frame"):
            NodeSettings.from_values({"model": "m", "odometry": "tf", **frames})


def test_a_value_outside_the_choices_is_refused():
    assert NodeSettings.from_values({"model": "m", "precision": "bf16"}).precision == "bf16"
    with pytest.raises(ValueError, match="parameter 'precision' must be one of fp32, fp16, bf16, got 'fp64'"):
        NodeSettings.from_values({"model": "m", "precision": "fp64"})


def test_an_unknown_parameter_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown parameter 'image_topics'.*image_topic"):
        NodeSettings.from_values({"model": "m", "image_topics": "/camera"})


def test_missing_parameters_take_their_defaults_and_values_round_trip():
    settings = NodeSettings.from_values({"model": "m"})
    assert all(_same(settings.values()[spec.name], spec.default) for spec in NODE_PARAMETERS[1:])
    again = NodeSettings.from_values(settings.values()).values()
    assert all(_same(again[name], value) for name, value in settings.values().items())


def test_the_settings_fields_are_the_parameter_table():
    fields = NodeSettings(model="m").values()
    assert list(fields) == [spec.name for spec in NODE_PARAMETERS]
    assert NODE_PARAMETERS[0].name == "model"
    assert all(_same(fields[spec.name], spec.default) for spec in NODE_PARAMETERS[1:])


def test_parameters_file_wildcard_and_namespaced_node(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("/robot1/relocalize_node:\n  ros__parameters:\n    map_frame: odom\n    model: /m\n"
                    "other_node:\n  ros__parameters:\n    map_frame: other\n"
                    "/**:\n  ros__parameters:\n    map_frame: world\n    device: cpu\n")
    robot1 = read_parameters_file(path, namespace="/robot1")
    assert robot1 == {"map_frame": "odom", "device": "cpu", "model": "/m"}
    assert read_parameters_file(path) == {"map_frame": "world", "device": "cpu"}  # not /robot1's section
    assert read_parameters_file(path, "other_node") == {"map_frame": "other", "device": "cpu"}


def test_parameters_file_sections_apply_as_rcl_applies_them(tmp_path):
    """/** to every node, /**/relocalize_node to the node in any namespace, the full name to that node
    alone; the more specific section wins whatever the order in the file."""
    path = tmp_path / "params.yaml"
    path.write_text("/robot1/relocalize_node:\n  ros__parameters:\n    map_frame: odom\n"
                    "/**/relocalize_node:\n  ros__parameters:\n    map_frame: any\n    mc_samples: 4\n"
                    "/**:\n  ros__parameters:\n    map_frame: world\n    device: cpu\n    mc_samples: 2\n"
                    "/relocalize_node:\n  ros__parameters:\n    publish_tf: true\n")
    assert read_parameters_file(path, namespace="/robot1") == {"map_frame": "odom", "device": "cpu",
                                                               "mc_samples": 4}
    assert read_parameters_file(path, namespace="/robot2") == {"map_frame": "any", "device": "cpu",
                                                               "mc_samples": 4}
    assert read_parameters_file(path) == {"map_frame": "any", "device": "cpu", "mc_samples": 4,
                                          "publish_tf": True}
    assert read_parameters_file(path, "camera_node") == {"map_frame": "world", "device": "cpu",
                                                         "mc_samples": 2}


def test_parameters_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_parameters_file(tmp_path / "missing.yaml")
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("relocalize_node: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        read_parameters_file(invalid)
    other = tmp_path / "other.yaml"
    other.write_text("camera_node:\n  ros__parameters:\n    fps: 30\n")
    with pytest.raises(ValueError, match=r"no section for 'relocalize_node' \(keys: camera_node\)"):
        read_parameters_file(other)
    flat = tmp_path / "flat.yaml"
    flat.write_text("relocalize_node:\n  model: /m\n")
    with pytest.raises(ValueError, match="must contain a `ros__parameters` mapping"):
        read_parameters_file(flat)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ValueError, match="must map node names"):
        read_parameters_file(scalar)


@pytest.mark.parametrize(("text", "expected"), [
    ("use_depth:=true", ("use_depth", True)),
    ("mc_samples=16", ("mc_samples", 16)),
    ("reset_gap:=2.5", ("reset_gap", 2.5)),
    ("loop_closure_enter_score:=.nan", ("loop_closure_enter_score", math.nan)),
    ("image_topic:=/cam/image_raw/compressed", ("image_topic", "/cam/image_raw/compressed")),
    ("model:=/runs/a=b", ("model", "/runs/a=b")),
    ("camera_frame:=", ("camera_frame", "")),
    (" map_frame := world", ("map_frame", "world")),
])


def test_parse_override(text, expected):
    name, value = parse_override(text)
    assert name == expected[0] and _same(value, expected[1])


@pytest.mark.parametrize("text", ["use_depth", ":=true", "=1"])
def test_parse_override_refuses_a_missing_name_or_separator(text):
    with pytest.raises(ValueError, match="expected NAME:=VALUE"):
        parse_override(text)


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("model", "2024", "2024"),  # a string parameter takes the text as it is
    ("device", "true", "true"),
    ("publish_tf", "true", True),
    ("use_depth", "False", False),
    ("mc_samples", "16", 16),
    ("reset_gap", "2", 2.0),  # an integer for a double
    ("reset_gap", "2.5e-1", 0.25),
    ("loop_closure_enter_score", ".nan", math.nan),
    ("loop_closure_enter_score", "nan", math.nan),
    ("loop_closure_leave_score", "-inf", -math.inf),
])
def test_parameter_from_text_types_the_text_as_the_parameter(name, text, expected):
    value = parameter_from_text(name, text)
    assert _same(value, expected) and type(value) is type(SPECS[name].default)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("publish_tf", "maybe", "parameter 'publish_tf' must be bool, got 'maybe'"),
    ("mc_samples", "2.0", "parameter 'mc_samples' must be int, got 2.0"),
    ("mc_samples", "[1", "parameter 'mc_samples' must be int, got '[1'"),
    ("reset_gap", "7200", "parameter 'reset_gap' must lie in [0.0, 3600.0], got 7200.0"),
    ("precision", "fp64", "parameter 'precision' must be one of fp32, fp16, bf16, got 'fp64'"),
    ("publish_ft", "true", "unknown parameter 'publish_ft'; the node's parameters are: model, device"),
])
def test_parameter_from_text_refuses_what_the_node_would_refuse(name, text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parameter_from_text(name, text)
