"""The rclpy node's files, checked without ROS: node.py and the launch file are parsed, not imported
(rclpy is not installed here), config/relocalize.yaml is read as both runtimes read it, and the
parameter table (parameters.py) validates what they pass on."""

from __future__ import annotations

import ast
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
    parse_override,
    read_parameters_file,
)

REPO = Path(__file__).resolve().parents[2]
NODE_PY = REPO / "posenet_ros" / "node" / "rclpy_node.py"
LAUNCH_PY = REPO / "launch" / "relocalize.launch.py"
CONFIG = REPO / "config" / "relocalize.yaml"
SETUP_PY = REPO / "setup.py"
SPECS = {spec.name: spec for spec in NODE_PARAMETERS}
ROS_MODULES = ("rclpy", "rcl_interfaces", "tf2_ros", "launch", "launch_ros")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Calls of `name(...)` or `anything.name(...)`."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and (getattr(node.func, "id", None) == name or getattr(node.func, "attr", None) == name)]


def _names(tree: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same type, NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == b


def _console_scripts() -> dict[str, str]:
    for call in _calls(_tree(SETUP_PY), "setup"):
        for keyword in call.keywords:
            if keyword.arg == "entry_points":
                entries = ast.literal_eval(keyword.value)["console_scripts"]
                return dict(tuple(part.strip() for part in entry.split("=")) for entry in entries)
    raise AssertionError("setup.py has no entry_points")


# --------------------------------------------------------------------------------------------------
# node.py
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_tree() -> ast.Module:
    return _tree(NODE_PY)


def test_node_compiles_and_defines_main_and_the_node_class(node_tree):
    compile(NODE_PY.read_text(), str(NODE_PY), "exec")
    functions = {node.name for node in node_tree.body if isinstance(node, ast.FunctionDef)}
    classes = {node.name: node for node in node_tree.body if isinstance(node, ast.ClassDef)}
    assert "main" in functions
    assert "RelocalizeNode" in classes
    assert any(getattr(base, "id", None) == "Node" for base in classes["RelocalizeNode"].bases)
    assert _calls(classes["RelocalizeNode"], "__init__"), "RelocalizeNode must call Node.__init__"
    assert "NODE_NAME" in _names(classes["RelocalizeNode"]), "the node must be named NODE_NAME"


def test_console_script_runs_node_main():
    assert _console_scripts()["relocalize_node"] == "posenet_ros.node.rclpy_node:main"


def test_node_takes_names_from_the_shared_tables(node_tree):
    imported = {alias.name for node in ast.walk(node_tree) if isinstance(node, ast.ImportFrom)
                and node.module == "posenet_ros.node.parameters" for alias in node.names}
    assert {"NODE_NAME", "NODE_PARAMETERS", "NodeSettings"} <= imported
    pipeline_imports = {alias.name for node in ast.walk(node_tree) if isinstance(node, ast.ImportFrom)
                        and node.module == "posenet_ros.node.pipeline" for alias in node.names}
    assert {"OUTPUTS", "input_topics", "build_relocalizer", "RelocalizationPipeline"} <= pipeline_imports


def test_node_declares_every_parameter_in_a_loop_over_the_table(node_tree):
    declares = _calls(node_tree, "declare_parameter")
    assert declares, "node.py declares no parameter"
    loops = [node for node in ast.walk(node_tree) if isinstance(node, ast.For)
             and isinstance(node.iter, ast.Name) and node.iter.id == "NODE_PARAMETERS"]
    in_loops = {id(call) for loop in loops for call in _calls(loop, "declare_parameter")}
    assert in_loops == {id(call) for call in declares}, "declare_parameter outside the NODE_PARAMETERS loop"
    for call in declares:  # declare_parameter(spec.name, spec.default, descriptor(spec))
        loop_variable = next(loop.target.id for loop in loops if call in ast.walk(loop))
        assert [ast.unparse(arg) for arg in call.args[:2]] == [f"{loop_variable}.name",
                                                               f"{loop_variable}.default"]
        assert len(call.args) == 3 or any(k.arg == "descriptor" for k in call.keywords), "no descriptor"


def test_node_names_no_parameter_of_its_own(node_tree):
    calls = _calls(node_tree, "declare_parameter") + _calls(node_tree, "get_parameter")
    assert _calls(node_tree, "get_parameter"), "node.py reads no parameter"
    for call in calls:
        name = call.args[0] if call.args else next(k.value for k in call.keywords if k.arg == "name")
        assert not isinstance(name, ast.Constant), f"literal parameter name in line {call.lineno}"
    literals = {node.value for node in ast.walk(node_tree) if isinstance(node, ast.Constant)}
    assert not literals & set(SPECS), "parameter names belong in NODE_PARAMETERS"


def test_node_wires_the_pipeline_topics(node_tree):
    publishers = _calls(node_tree, "create_publisher")
    subscriptions = _calls(node_tree, "create_subscription")
    assert publishers and subscriptions
    comprehension_sources = {ast.unparse(generator.iter) for node in ast.walk(node_tree)
                             if isinstance(node, ast.DictComp | ast.ListComp | ast.For)
                             for generator in getattr(node, "generators", [node])}
    assert "OUTPUTS.items()" in comprehension_sources, "publishers must come from OUTPUTS"
    assert _calls(node_tree, "input_topics"), "subscriptions must come from input_topics(settings)"
    assert any("inputs.items()" in source or "input_topics(" in source for source in comprehension_sources)
    assert _calls(node_tree, "TransformBroadcaster") and _calls(node_tree, "sendTransform")
    timer = _calls(node_tree, "create_timer")
    assert [ast.unparse(arg) for arg in timer[0].args] == ["settings.diagnostics_period",
                                                           "self.pipeline.publish_diagnostics"]
    assert _calls(node_tree, "start") and _calls(node_tree, "stop")


def test_node_maps_every_qos_profile_name_the_pipeline_uses(node_tree):
    from posenet_ros.node.pipeline import OUTPUTS, input_topics

    qos_dicts = [node.value for node in node_tree.body if isinstance(node, ast.AnnAssign | ast.Assign)
                 and isinstance(node.value, ast.Dict) and "QOS" in ast.unparse(node)]
    assert len(qos_dicts) == 1, "one QoS mapping in node.py"
    mapped = {ast.literal_eval(key) for key in qos_dicts[0].keys}
    settings = NodeSettings(model="m", use_depth=True, image_topic="/camera/image_raw/compressed")
    used = {topic.qos for topic in [*OUTPUTS.values(), *input_topics(settings).values()]}
    assert used <= mapped


def test_only_node_py_imports_ros_python_packages():
    importers = []
    for path in sorted((REPO / "posenet_ros").rglob("*.py")):
        for node in ast.walk(_tree(path)):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(module.split(".")[0] in ROS_MODULES for module in modules):
                importers.append(path.relative_to(REPO).as_posix())
    assert set(importers) == {"posenet_ros/node/rclpy_node.py"}


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
                                              "reset_gap", "diagnostics_period", "smoothing_reset_unknown"}
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


# --------------------------------------------------------------------------------------------------
# launch/relocalize.launch.py
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launch_tree() -> ast.Module:
    return _tree(LAUNCH_PY)


def _keyword(call: ast.Call, name: str) -> ast.expr:
    return next(keyword.value for keyword in call.keywords if keyword.arg == name)


def _launch_configurations(tree: ast.AST) -> set[str]:
    return {ast.literal_eval(call.args[0]) for call in _calls(tree, "LaunchConfiguration")}


def test_launch_file_compiles_and_defines_generate_launch_description(launch_tree):
    compile(LAUNCH_PY.read_text(), str(LAUNCH_PY), "exec")
    assert "generate_launch_description" in {node.name for node in launch_tree.body
                                             if isinstance(node, ast.FunctionDef)}


def test_every_launch_argument_is_used_and_every_used_one_declared(launch_tree):
    declared = [ast.literal_eval(call.args[0]) for call in _calls(launch_tree, "DeclareLaunchArgument")]
    assert len(declared) == len(set(declared))
    assert set(declared) == _launch_configurations(launch_tree)
    assert set(declared) == {"model", "params_file", "image_topic", "depth_topic", "use_depth", "device",
                             "runtime", "namespace"}


def test_launch_argument_defaults_are_the_parameter_defaults(launch_tree):
    defaults = {ast.literal_eval(call.args[0]): _keyword(call, "default_value")
                for call in _calls(launch_tree, "DeclareLaunchArgument")}
    for name in ("image_topic", "depth_topic", "device", "runtime"):
        assert ast.literal_eval(defaults[name]) == SPECS[name].default
    assert ast.literal_eval(defaults["use_depth"]) == str(SPECS["use_depth"].default).lower()
    assert ast.literal_eval(defaults["model"]) == ""
    assert "relocalize.yaml" in ast.unparse(defaults["params_file"])


def test_launch_node_runs_the_console_script_with_the_node_name(launch_tree):
    (node,) = _calls(launch_tree, "Node")
    assert ast.literal_eval(_keyword(node, "package")) == "posenet_ros"
    assert ast.literal_eval(_keyword(node, "executable")) in _console_scripts()
    entry_point = _console_scripts()[ast.literal_eval(_keyword(node, "executable"))]
    assert entry_point == "posenet_ros.node.rclpy_node:main"
    assert ast.literal_eval(_keyword(node, "name")) == NODE_NAME
    assert _launch_configurations(_keyword(node, "namespace")) == {"namespace"}


def test_launch_parameters_are_the_file_then_known_overrides(launch_tree):
    (node,) = _calls(launch_tree, "Node")
    parameters = _keyword(node, "parameters")
    assert isinstance(parameters, ast.List) and len(parameters.elts) == 2
    assert _launch_configurations(parameters.elts[0]) == {"params_file"}
    overrides = parameters.elts[1]
    assert isinstance(overrides, ast.Dict)
    names = [ast.literal_eval(key) for key in overrides.keys]
    assert set(names) <= set(SPECS)
    for name, value in zip(names, overrides.values, strict=True):
        assert _launch_configurations(value) == {name}  # the launch argument of the same name
        value_type = ast.unparse(_keyword(value, "value_type")) if isinstance(value, ast.Call) else None
        assert value_type in (None, type(SPECS[name].default).__name__), name


def test_launch_remaps_the_default_topic_names(launch_tree):
    (node,) = _calls(launch_tree, "Node")
    remappings = {ast.literal_eval(pair.elts[0]): _launch_configurations(pair.elts[1])
                  for pair in _keyword(node, "remappings").elts}
    assert remappings == {SPECS["image_topic"].default: {"image_topic"},
                          SPECS["depth_topic"].default: {"depth_topic"}}


def test_setup_installs_the_launch_and_config_files():
    text = SETUP_PY.read_text()
    assert 'glob("launch/*.launch.py")' in text and 'glob("config/*.yaml")' in text
