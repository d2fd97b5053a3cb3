"""The ROS 2 entry of the node, run without ROS: what setup.py installs (the console scripts, the
launch file, the parameters file, the packages), and launch/relocalize.launch.py launched against
minimal stand-ins of `launch` and `launch_ros` that evaluate its substitutions as `ros2 launch`
does: the node it starts, with which parameters (the installed parameters file, then the launch
arguments) and remappings, for the default arguments and for a user's.

setup.py is run with `setuptools.setup` recording its arguments (the values setuptools would get,
globs included), and its data files are copied into a temporary install prefix, so the launch file's
default parameters file is the one `colcon build` installs."""

from __future__ import annotations

import importlib.util
import math
import os
import runpy
import shutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from posenet_ros.node.parameters import NODE_NAME, NODE_PARAMETERS, NodeSettings, read_parameters_file
from posenet_ros.ros.camera_info import camera_info_topic

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
    assert installed[f"share/{PACKAGE}/launch"] == {"launch/relocalize.launch.py"}
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
    arguments: dict[str, str]
    share: dict[str, Path]
    used: set[str]


def perform(value: Any, context: Context) -> Any:
    """A launch substitution's value: strings as they are, lists concatenated, substitutions performed."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(perform(part, context)) for part in value)
    return value.perform(context)


class LaunchConfiguration:
    def __init__(self, name: str) -> None:
        self.name = name

    def perform(self, context: Context) -> str:
        context.used.add(self.name)
        return context.arguments[self.name]  # launch fails on an undeclared argument too


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
    """launch_ros's: the performed text, as a string (value_type str) or parsed as YAML and checked."""

    def __init__(self, value: Any, value_type: type | None = None) -> None:
        self.value, self.value_type = value, value_type

    def perform(self, context: Context) -> Any:
        text = perform(self.value, context)
        if self.value_type is str:
            return text
        parsed = yaml.safe_load(text)
        if self.value_type is not None and type(parsed) is not self.value_type:
            raise TypeError(f"{text!r} is not a {self.value_type.__name__}")
        return parsed


class Recorded:
    """DeclareLaunchArgument, Node, LaunchDescription: their arguments, recorded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class DeclareLaunchArgument(Recorded):
    pass


class Node(Recorded):
    pass


class LaunchDescription(Recorded):
    pass


@pytest.fixture(scope="module")
def description() -> LaunchDescription:
    """`generate_launch_description()` of the launch file, against the stand-ins."""
    stand_ins = {
        "launch": types.SimpleNamespace(LaunchDescription=LaunchDescription),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=DeclareLaunchArgument),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration,
                                                      PathJoinSubstitution=PathJoinSubstitution),
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
    """What `ros2 launch` would start: the node's identity, parameters, remappings."""

    package: str
    executable: str
    name: str
    namespace: str
    parameters: dict[str, Any]
    remappings: dict[str, str]
    used: set[str]


def launch(description: LaunchDescription, install_prefix: Path, **arguments: str) -> Launched:
    """Evaluate the description with `name:=value` launch arguments, as ros2 launch does: the
    declared defaults, then the arguments; the node's parameters are its parameters files (read as rcl
    reads them, for the node's full name) and dictionaries, in order."""
    defaults = {name: entity.kwargs["default_value"] for name, entity in declared(description).items()}
    assert set(arguments) <= set(defaults), f"undeclared launch arguments {set(arguments) - set(defaults)}"
    context = Context({}, {PACKAGE: install_prefix / "share" / PACKAGE}, set())
    context.arguments = {name: str(perform(default, context)) for name, default in defaults.items()}
    context.arguments.update(arguments)
    (node,) = [entity for entity in description.args[0] if isinstance(entity, Node)]
    namespace = perform(node.kwargs["namespace"], context)
    parameters: dict[str, Any] = {}
    for entry in node.kwargs["parameters"]:
        if isinstance(entry, dict):
            parameters.update({name: perform(value, context) for name, value in entry.items()})
            continue
        path = perform(entry, context)
        try:
            parameters.update(read_parameters_file(path, NODE_NAME, "/" + namespace.strip("/")))
        except ValueError as error:  # rcl applies no section of another node name
            assert "has no section" in str(error)
    remappings = {source: perform(target, context) for source, target in node.kwargs["remappings"]}
    return Launched(node.kwargs["package"], node.kwargs["executable"], node.kwargs["name"], namespace,
                    parameters, remappings, context.used)


def test_every_launch_argument_is_declared_once_and_used(description, install_prefix):
    names = [entity.args[0] for entity in description.args[0] if isinstance(entity, DeclareLaunchArgument)]
    assert len(names) == len(set(names))
    assert set(names) == {"model", "params_file", "image_topic", "camera_info_topic", "depth_topic",
                          "use_depth", "device", "runtime", "namespace"}
    assert launch(description, install_prefix, model="/runs/office").used == set(names)
    for entity in declared(description).values():
        assert entity.kwargs["description"], entity.args[0]


def test_launch_argument_defaults_are_the_parameter_defaults(description, install_prefix):
    defaults = {name: entity.kwargs["default_value"] for name, entity in declared(description).items()}
    for name in ("image_topic", "depth_topic", "device", "runtime"):
        assert defaults[name] == SPECS[name].default, name
    assert defaults["use_depth"] == str(SPECS["use_depth"].default).lower()
    # The node's automatic camera_info topic (beside the default image topic) is what is remapped.
    assert defaults["camera_info_topic"] == camera_info_topic(SPECS["image_topic"].default)
    assert defaults["model"] == "" and defaults["namespace"] == ""
    context = Context({}, {PACKAGE: install_prefix / "share" / PACKAGE}, set())
    assert Path(perform(defaults["params_file"], context)) == (
        install_prefix / "share" / PACKAGE / "config" / "relocalize.yaml")


def test_the_default_launch_runs_the_console_script_with_the_installed_parameters(
        description, install_prefix, setup_arguments):
    launched = launch(description, install_prefix, model="/runs/office")
    assert (launched.package, launched.name, launched.namespace) == (PACKAGE, NODE_NAME, "")
    assert console_scripts(setup_arguments)[launched.executable] == "posenet_ros.node.rclpy_node:main"
    settings = NodeSettings.from_values(launched.parameters)
    expected = NodeSettings(model="/runs/office").values()
    assert all(_same(settings.values()[name], expected[name]) for name in SPECS)
    # The remappings act on the node's default topic names (the parameters' defaults).
    assert launched.remappings == {SPECS["image_topic"].default: "/camera/image_raw",
                                   "/camera/camera_info": "/camera/camera_info",
                                   SPECS["depth_topic"].default: "/camera/depth/image_raw"}
    # Without model:=..., the node refuses to start with the message the launch file documents.
    with pytest.raises(ValueError, match="parameter 'model' is required"):
        NodeSettings.from_values(launch(description, install_prefix).parameters)


def test_launch_arguments_reach_the_node_as_typed_parameters_and_remappings(description, install_prefix):
    launched = launch(description, install_prefix, model="2024", use_depth="true", device="cuda:1",
                      runtime="onnx", image_topic="/my/camera/image_raw",
                      camera_info_topic="/my/camera/camera_info", depth_topic="/my/depth")
    settings = NodeSettings.from_values(launched.parameters)
    # model stays a string (a path may look like a number); use_depth becomes a bool.
    assert (settings.model, settings.use_depth, settings.device, settings.runtime) == (
        "2024", True, "cuda:1", "onnx")
    assert launched.remappings == {"/camera/image_raw": "/my/camera/image_raw",
                                   "/camera/camera_info": "/my/camera/camera_info",
                                   "/camera/depth/image_raw": "/my/depth"}
    with pytest.raises(TypeError, match="not a bool"):
        launch(description, install_prefix, model="m", use_depth="maybe")


def test_the_parameters_file_comes_first_and_the_launch_arguments_override_it(description, install_prefix,
                                                                             tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("relocalize_node:\n  ros__parameters:\n    map_frame: odom\n    device: cpu\n"
                      "    mc_samples: 8\n")
    launched = launch(description, install_prefix, model="/runs/office", params_file=str(params))
    settings = NodeSettings.from_values(launched.parameters)
    assert (settings.map_frame, settings.mc_samples) == ("odom", 8)  # from the file
    assert settings.device == "auto"  # the launch argument's default overrides the file's device
    # In a namespace, ROS applies the section of the node's full name (or /**), not `relocalize_node:`.
    spaced = launch(description, install_prefix, model="/runs/office", params_file=str(params),
                    namespace="robot1")
    assert spaced.namespace == "robot1" and "map_frame" not in spaced.parameters
    params.write_text("/robot1/relocalize_node:\n  ros__parameters:\n    map_frame: odom\n")
    spaced = launch(description, install_prefix, model="/runs/office", params_file=str(params),
                    namespace="robot1")
    assert NodeSettings.from_values(spaced.parameters).map_frame == "odom"


def _same(a: Any, b: Any) -> bool:
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == b
