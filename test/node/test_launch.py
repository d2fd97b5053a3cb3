"""The ROS 2 entry of the node, run without ROS: what setup.py installs (the console scripts, the
launch file, the parameters file, the packages), and launch/relocalize.launch.py launched against
minimal stand-ins of `launch` and `launch_ros` that evaluate it as `ros2 launch` does (neither is on
PyPI: the `launch` there is another project): the arguments it declares (one per node parameter), the
node it starts, with which parameters (the installed parameters file, then the arguments the user
gave, typed), for the default arguments and for a user's, and what it refuses or warns about.

setup.py is run with `setuptools.setup` recording its arguments (the values setuptools would get,
globs included), and its data files are copied into a temporary install prefix, so the launch file's
default parameters file is the one `colcon build` installs."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import runpy
import shutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from posenet_ros.node.parameters import (
    NODE_NAME,
    NODE_PARAMETERS,
    NodeSettings,
    ParameterSpec,
    read_parameters_file,
)
from posenet_ros.node.pipeline import input_topics

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH_PY = REPO_ROOT / "launch" / "relocalize.launch.py"
SPECS = {spec.name: spec for spec in NODE_PARAMETERS}
PACKAGE = "posenet_ros"


# --------------------------------------------------------------------------------------------------
# setup.py
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup_arguments() -> dict[str, Any]:
    """The keyword arguments setup.py passes to setuptools.setup (run in the repository root)."""
    setuptools = pytest.importorskip("setuptools")
    recorded: dict[str, Any] = {}
    stub = types.ModuleType("setuptools")
    stub.setup = lambda **arguments: recorded.update(arguments)
    stub.find_packages = setuptools.find_packages
    saved, cwd = sys.modules["setuptools"], os.getcwd()
    sys.modules["setuptools"] = stub
    try:
        os.chdir(REPO_ROOT)
        runpy.run_path("setup.py", run_name="__main__")
    finally:
        sys.modules["setuptools"] = saved
        os.chdir(cwd)
    return recorded


def console_scripts(setup_arguments: dict[str, Any]) -> dict[str, str]:
    entries = setup_arguments["entry_points"]["console_scripts"]
    return dict(tuple(part.strip() for part in entry.split("=")) for entry in entries)


def test_console_scripts_are_the_cli_and_the_rclpy_node(setup_arguments):
    scripts = console_scripts(setup_arguments)
    assert scripts == {"posenet-ros": "posenet_ros.cli:main",
                       "relocalize_node": "posenet_ros.node.rclpy_node:main"}
    module, _, function = scripts["posenet-ros"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    # relocalize_node's module imports rclpy: it runs against stand-ins in test_rclpy_node.py.
    assert importlib.util.find_spec(scripts["relocalize_node"].partition(":")[0]) is not None


def test_every_package_is_installed_and_no_test_code(setup_arguments):
    package_dirs = {path.parent for path in (REPO_ROOT / PACKAGE).rglob("__init__.py")}
    expected = {".".join(folder.relative_to(REPO_ROOT).parts) for folder in package_dirs}
    assert set(setup_arguments["packages"]) == expected
    assert {PACKAGE, f"{PACKAGE}.node", f"{PACKAGE}.core"} <= expected


def test_the_launch_file_the_parameters_file_and_the_ament_index_entry_are_installed(setup_arguments):
    installed = {destination: set(files) for destination, files in setup_arguments["data_files"]}
    assert installed[f"share/{PACKAGE}/launch"] == {"launch/relocalize.launch.py",
                                                    "launch/ekf_relocalization.launch.py"}
    assert "config/relocalize.yaml" in installed[f"share/{PACKAGE}/config"]
    assert installed[f"share/{PACKAGE}/config"] == {
        path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "config").glob("*.yaml")}
    assert installed[f"share/{PACKAGE}"] == {"package.xml"}
    assert installed["share/ament_index/resource_index/packages"] == {f"resource/{PACKAGE}"}
    for files in installed.values():
        assert all((REPO_ROOT / name).is_file() for name in files), files


@pytest.fixture(scope="module")
def install_prefix(setup_arguments, tmp_path_factory) -> Path:
    """The data files copied where setup.py installs them, under a temporary prefix."""
    prefix = tmp_path_factory.mktemp("install")
    for destination, files in setup_arguments["data_files"]:
        (prefix / destination).mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copy(REPO_ROOT / name, prefix / destination)
    return prefix


# --------------------------------------------------------------------------------------------------
# launch/relocalize.launch.py
# --------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """launch's LaunchContext: the launch configurations (argument name -> text), and where each
    package's share folder is (for FindPackageShare)."""

    launch_configurations: dict[str, str]
    share: dict[str, Path]


def perform(value: Any, context: Context) -> Any:
    """A launch substitution's value: strings as they are, lists concatenated, substitutions performed."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(perform(part, context)) for part in value)
    return value.perform(context)


class PathJoinSubstitution:
    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def perform(self, context: Context) -> str:
        return os.path.join(*(str(perform(part, context)) for part in self.parts))


class FindPackageShare:
    def __init__(self, package: str) -> None:
        self.package = package

    def perform(self, context: Context) -> str:
        return str(context.share[self.package])


class ParameterValue:
    """launch_ros's: the performed text, as a string (value_type str) or parsed as YAML."""

    def __init__(self, value: Any, value_type: type | None = None) -> None:
        self.value, self.value_type = value, value_type

    def perform(self, context: Context) -> Any:
        text = perform(self.value, context)
        return text if self.value_type is str else yaml.safe_load(text)


def node_parameter(value: Any, context: Context) -> Any:
    """A value of a Node's parameter dictionary as launch_ros evaluates it: a ParameterValue
    performed, a plain string read as YAML (its substitutions are performed, then parsed), a bool,
    int or float as it is."""
    if isinstance(value, ParameterValue):
        return value.perform(context)
    if isinstance(value, str):
        return yaml.safe_load(value)
    assert type(value) in (bool, int, float), value
    return value


class Recorded:
    """DeclareLaunchArgument, OpaqueFunction, Node, LaunchDescription: their arguments, recorded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class DeclareLaunchArgument(Recorded):
    pass


class OpaqueFunction(Recorded):
    pass


class Node(Recorded):
    pass


class LaunchDescription(Recorded):
    pass


WARNINGS: list[str] = []  # what the launch file logged as warnings (launch.logging's logger)


@pytest.fixture(scope="module")
def description() -> LaunchDescription:
    """`generate_launch_description()` of the launch file, against the stand-ins."""
    logger = types.SimpleNamespace(warning=WARNINGS.append)
    stand_ins = {
        "launch": types.SimpleNamespace(LaunchDescription=LaunchDescription, LaunchContext=Context),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=DeclareLaunchArgument,
                                                OpaqueFunction=OpaqueFunction),
        "launch.logging": types.SimpleNamespace(get_logger=lambda name=None: logger),
        "launch.substitutions": types.SimpleNamespace(PathJoinSubstitution=PathJoinSubstitution),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=Node),
        "launch_ros.parameter_descriptions": types.SimpleNamespace(ParameterValue=ParameterValue),
        "launch_ros.substitutions": types.SimpleNamespace(FindPackageShare=FindPackageShare),
    }
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)  # type: ignore[arg-type]
    try:
        spec = importlib.util.spec_from_file_location("relocalize_launch", LAUNCH_PY)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.generate_launch_description()
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def declared(description: LaunchDescription) -> dict[str, DeclareLaunchArgument]:
    entities = description.args[0]
    return {entity.args[0]: entity for entity in entities if isinstance(entity, DeclareLaunchArgument)}


@dataclass
class Launched:
    """What `ros2 launch` would start: the node's identity, parameters, remappings, and the warnings
    the launch file logged."""

    package: str
    executable: str
    name: str
    namespace: str
    parameters: dict[str, Any]
    remappings: dict[str, str]
    warnings: list[str]


def launch(description: LaunchDescription, install_prefix: Path, **arguments: str) -> Launched:
    """Evaluate the description with `name:=value` launch arguments, as ros2 launch does: the
    arguments (declared or not) become launch configurations, each declared argument not given
    takes its default, then the OpaqueFunction runs with that context. The node's parameters are its
    parameters files (read as rcl reads them, for the node's full name) and dictionaries, in order."""
    context = Context(dict(arguments), {PACKAGE: install_prefix / "share" / PACKAGE})
    for name, entity in declared(description).items():
        context.launch_configurations.setdefault(name, str(perform(entity.kwargs["default_value"], context)))
    (opaque,) = [entity for entity in description.args[0] if isinstance(entity, OpaqueFunction)]
    WARNINGS.clear()
    (node,) = opaque.kwargs["function"](context)
    assert isinstance(node, Node)
    namespace = perform(node.kwargs["namespace"], context)
    parameters: dict[str, Any] = {}
    for entry in node.kwargs["parameters"]:
        if isinstance(entry, dict):
            parameters.update({name: node_parameter(value, context) for name, value in entry.items()})
            continue
        path = perform(entry, context)
        try:
            parameters.update(read_parameters_file(path, NODE_NAME, "/" + namespace.strip("/")))
        except ValueError as error:  # rcl applies no section of another node name
            assert "has no section" in str(error)
    remappings = {source: perform(target, context) for source, target in node.kwargs.get("remappings", [])}
    return Launched(node.kwargs["package"], node.kwargs["executable"], node.kwargs["name"], namespace,
                    parameters, remappings, list(WARNINGS))


def a_value_other_than_the_default(spec: ParameterSpec) -> tuple[str, Any]:
    """(launch argument text, the typed value the node must get) for a valid non-default value."""
    if isinstance(spec.default, bool):
        return str(not spec.default).lower(), not spec.default
    if spec.choices:
        other = next(choice for choice in spec.choices if choice != spec.default)
        return other, other
    if isinstance(spec.default, str):
        return f"/given/{spec.name}", f"/given/{spec.name}"
    if isinstance(spec.default, int):
        value = spec.default + 1 if spec.maximum is None or spec.default < spec.maximum else spec.default - 1
        return str(value), value
    low, high = (spec.minimum, spec.maximum) if spec.minimum is not None else (-4.0, 4.0)
    value = low + 0.375 * (high - low)  # exact in binary: the text reads back to the same double
    assert value != spec.default or math.isnan(spec.default)
    return repr(value), value


def test_every_node_parameter_is_a_launch_argument_and_nothing_else_is(description, install_prefix):
    names = [entity.args[0] for entity in description.args[0] if isinstance(entity, DeclareLaunchArgument)]
    assert names == ["params_file", "namespace", *(spec.name for spec in NODE_PARAMETERS)]
    for entity in declared(description).values():
        assert entity.kwargs["description"], entity.args[0]
    for spec in NODE_PARAMETERS:  # not given: left to params_file, with the parameter's description
        entity = declared(description)[spec.name]
        assert entity.kwargs["default_value"] == ""
        assert entity.kwargs["description"].startswith(spec.description), spec.name
    assert declared(description)["namespace"].kwargs["default_value"] == ""
    context = Context({}, {PACKAGE: install_prefix / "share" / PACKAGE})
    assert Path(perform(declared(description)["params_file"].kwargs["default_value"], context)) == (
        install_prefix / "share" / PACKAGE / "config" / "relocalize.yaml")


def test_the_default_launch_runs_the_console_script_with_the_installed_parameters(
        description, install_prefix, setup_arguments):
    launched = launch(description, install_prefix, model="/runs/office")
    assert (launched.package, launched.name, launched.namespace) == (PACKAGE, NODE_NAME, "")
    assert console_scripts(setup_arguments)[launched.executable] == "posenet_ros.node.rclpy_node:main"
    settings = NodeSettings.from_values(launched.parameters)
    expected = NodeSettings(model="/runs/office").values()
    assert all(_same(settings.values()[name], expected[name]) for name in SPECS)
    assert launched.remappings == {} and launched.warnings == []
    # Without model:=..., the node refuses to start with the message the launch file documents.
    with pytest.raises(ValueError, match="parameter 'model' is required"):
        NodeSettings.from_values(launch(description, install_prefix).parameters)


def test_every_parameter_given_as_a_launch_argument_reaches_the_node_typed(description, install_prefix):
    """The Humble finding: publish_tf:=true was silently ignored (only 8 arguments were declared).
    Now each parameter of the table, set on the command line, is what the node gets."""
    launched = launch(description, install_prefix, model="RUN", publish_tf="true")
    assert launched.parameters["publish_tf"] is True and launched.warnings == []
    given = {spec.name: a_value_other_than_the_default(spec) for spec in NODE_PARAMETERS}
    launched = launch(description, install_prefix, **{name: text for name, (text, _) in given.items()})
    for name, (text, value) in given.items():  # (the node checks how the values go together)
        assert type(launched.parameters[name]) is type(SPECS[name].default), name
        assert launched.parameters[name] == value, (name, text)
    # A string parameter takes the text as it is: a path that reads as a number stays a string.
    assert launch(description, install_prefix, model="2024").parameters["model"] == "2024"
    nan = launch(description, install_prefix, model="m", loop_closure_enter_score="nan").parameters
    assert math.isnan(nan["loop_closure_enter_score"])


def test_the_parameters_file_keeps_what_no_launch_argument_gives(description, install_prefix, tmp_path):
    """The Humble finding: params_file's model, use_depth, device and runtime were always replaced by
    the launch defaults. Now only the arguments the user gave override the file."""
    params = tmp_path / "params.yaml"
    params.write_text("relocalize_node:\n  ros__parameters:\n    model: /runs/kitchen\n    device: cpu\n"
                      "    runtime: onnx\n    use_depth: true\n    map_frame: odom\n    mc_samples: 8\n")
    launched = launch(description, install_prefix, params_file=str(params))
    settings = NodeSettings.from_values(launched.parameters)
    assert (settings.model, settings.device, settings.runtime, settings.use_depth, settings.map_frame,
            settings.mc_samples) == ("/runs/kitchen", "cpu", "onnx", True, "odom", 8)
    launched = launch(description, install_prefix, params_file=str(params), device="cuda:1", mc_samples="4")
    settings = NodeSettings.from_values(launched.parameters)
    assert (settings.device, settings.mc_samples, settings.runtime) == ("cuda:1", 4, "onnx")
    # In a namespace, ROS applies the section of the node's full name (or /**), not `relocalize_node:`.
    spaced = launch(description, install_prefix, model="/runs/office", params_file=str(params),
                    namespace="robot1")
    assert spaced.namespace == "robot1" and "map_frame" not in spaced.parameters
    params.write_text("/robot1/relocalize_node:\n  ros__parameters:\n    map_frame: odom\n")
    spaced = launch(description, install_prefix, model="/runs/office", params_file=str(params),
                    namespace="robot1")
    assert NodeSettings.from_values(spaced.parameters).map_frame == "odom"


@pytest.mark.parametrize(("arguments", "message"), [
    ({"use_depth": "maybe"}, "parameter 'use_depth' must be bool, got 'maybe'"),
    ({"mc_samples": "5000"}, "parameter 'mc_samples' must lie in [-1, 1024], got 5000"),
    ({"mc_samples": "2.5"}, "parameter 'mc_samples' must be int, got 2.5"),
    ({"runtime": "tensorrt"}, "parameter 'runtime' must be one of torch, onnx, torchscript"),
    ({"reset_gap": "soon"}, "parameter 'reset_gap' must be float, got 'soon'"),
])
def test_a_bad_launch_argument_value_is_refused_with_the_parameters_message(description, install_prefix,
                                                                            arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        launch(description, install_prefix, model="m", **arguments)


def test_a_compressed_image_topic_subscribes_to_compressed_images(description, install_prefix):
    """The Humble finding: image_topic was a remapping, so a /compressed topic was subscribed as
    sensor_msgs/Image. It is the parameter now, from which the node chooses the type."""
    launched = launch(description, install_prefix, model="m", image_topic="/cam/image_raw/compressed",
                      camera_info_topic="/cam/info", depth_topic="/cam/depth", use_depth="true")
    topics = input_topics(NodeSettings.from_values(launched.parameters))
    assert (topics["image"].name, topics["image"].type_name) == (
        "/cam/image_raw/compressed", "sensor_msgs/msg/CompressedImage")
    assert (topics["camera_info"].name, topics["camera_info"].type_name) == (
        "/cam/info", "sensor_msgs/msg/CameraInfo")
    assert (topics["depth"].name, topics["depth"].type_name) == ("/cam/depth", "sensor_msgs/msg/Image")
    assert launched.remappings == {}
    # camera_info_topic left to params_file (auto): the camera_info topic beside the image topic
    auto = launch(description, install_prefix, model="m", image_topic="/cam/image_raw/compressed")
    assert input_topics(NodeSettings.from_values(auto.parameters))["camera_info"].name == "/cam/camera_info"


def test_an_argument_that_is_no_parameter_is_named_in_a_warning(description, install_prefix):
    launched = launch(description, install_prefix, model="m", publish_ft="true", use_sim_time="true")
    assert launched.warnings == ["ignoring publish_ft, use_sim_time: not an argument of "
                                 "relocalize.launch.py (see --show-args)"]
    assert "publish_ft" not in launched.parameters and launched.parameters["publish_tf"] is False


def _same(a: Any, b: Any) -> bool:
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == b
