"""The relocalization node's parameters: one table read by both runtimes.

The rclpy node declares every entry of `NODE_PARAMETERS` (with its description and range) and the
Cyclone DDS runtime (`posenet-ros node`) reads the same YAML file, so `config/relocalize.yaml`
works unchanged with both:

    relocalize_node:
      ros__parameters:
        model: /path/to/run
        image_topic: /camera/image_raw

`NodeSettings.from_values` validates a name -> value mapping (types, ranges, choices) and is what
both runtimes build their pipeline from.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NODE_NAME = "relocalize_node"


@dataclass(frozen=True)
class ParameterSpec:
    """One ROS parameter: name, default (its type is the parameter's type), description, and an
    optional numeric range [minimum, maximum] or set of allowed string values."""

    name: str
    default: bool | int | float | str
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


NODE_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("model", "",
                  "Checkpoint to load: a training run directory or its model.safetensors (required)"),
    ParameterSpec("device", "auto", "Inference device: auto (CUDA when available), cpu, cuda or cuda:N"),
    ParameterSpec("precision", "fp32", "Inference precision; fp16 and bf16 need a CUDA device",
                  choices=("fp32", "fp16", "bf16")),
    ParameterSpec("runtime", "torch",
                  "Network runtime: torch, or onnx / torchscript (the file `posenet-ros export` wrote; "
                  "onnx is the fastest on CPU)", choices=("torch", "onnx", "torchscript")),
    ParameterSpec("exported_model", "",
                  "Exported network file for runtime onnx or torchscript; empty: beside the checkpoint"),
    ParameterSpec("fast_path", True,
                  "On CUDA: preprocessing on the GPU, channels_last and CUDA graphs (no effect on CPU)"),
    ParameterSpec("image_topic", "/camera/image_raw",
                  "Camera image topic (sensor_msgs/Image; a name ending in /compressed: CompressedImage)"),
    ParameterSpec("camera_info_topic", "auto",
                  "CameraInfo of the images (sensor_msgs/CameraInfo, the latest one is used): auto: "
                  "camera_info beside image_topic (/camera/image_raw -> /camera/camera_info); empty: "
                  "none, the images are taken as the checkpoint's camera"),
    ParameterSpec("depth_topic", "/camera/depth/image_raw",
                  "Depth image topic (16UC1 millimetres or 32FC1 metres), used when use_depth is true"),
    ParameterSpec("use_depth", False, "Subscribe to the depth topic and pair depth with each image by stamp"),
    ParameterSpec("max_depth_stamp_diff", 0.02,
                  "Largest stamp difference (s) between an image and the depth paired with it",
                  minimum=0.0, maximum=1.0),
    ParameterSpec("mc_samples", -1,
                  "Monte-Carlo dropout samples per frame; -1: the checkpoint's calibrated setting, "
                  "0: deterministic (no epistemic term, no loop-closure score)", minimum=-1, maximum=1024),
    ParameterSpec("smoothing", True,
                  "Temporal smoothing when the checkpoint has a temporal model (no effect otherwise)"),
    ParameterSpec("smoothing_reset_unknown", 10,
                  "Consecutive unknown-place frames after which the temporal state is dropped; 0: never",
                  minimum=0, maximum=100000),
    ParameterSpec("odometry", "none",
                  "The robot's motion between frames for the temporal smoothing (a checkpoint with fusion "
                  "parameters, smoothing on): none (the temporal model alone); tf: odom_frame -> base_frame "
                  "from TF at each image stamp; a topic name (e.g. /odom): nav_msgs/Odometry, its pose as "
                  "odom_frame -> base_frame. Needs base_frame (the camera extrinsic)"),
    ParameterSpec("odometry_position_noise", 0.02,
                  "Odometry position error (m, standard deviation per axis) after 1 m travelled; it grows "
                  "with the square root of the distance", minimum=0.0, maximum=10.0),
    ParameterSpec("odometry_rotation_noise_deg", 1.0,
                  "Odometry rotation error (degrees, standard deviation per axis) after 1 m travelled",
                  minimum=0.0, maximum=90.0),
    ParameterSpec("odometry_max_gap", 0.5,
                  "Longest time (s) between two odometry poses the node interpolates across; a frame in a "
                  "longer gap has no odometry (the temporal model's learned motion stands in)",
                  minimum=0.0, maximum=60.0),
    ParameterSpec("map_frame", "map", "frame_id of the published poses, the map poses and the TF parent"),
    ParameterSpec("base_frame", "base_link",
                  "Robot base frame: relocalized_pose is its pose in map_frame (base -> camera from TF at "
                  "the image stamp); empty: publish the camera's pose, no TF needed"),
    ParameterSpec("odom_frame", "odom", "Odometry frame: parent of base_frame, child of the published map "
                  "-> odom transform"),
    ParameterSpec("camera_frame", "",
                  "The camera's TF frame (TF lookups, tf_mode map_camera); empty: the image's "
                  "header.frame_id"),
    ParameterSpec("publish_tf", False, "Publish the transform tf_mode names on /tf"),
    ParameterSpec("tf_mode", "map_odom",
                  "map_odom: map_frame -> odom_frame from the estimate and odometry (REP-105, needs "
                  "base_frame); map_camera: map_frame -> camera frame (a camera without a robot: needs "
                  "base_frame empty)", choices=("map_odom", "map_camera")),
    ParameterSpec("transform_tolerance", 1.0,
                  "Seconds the map -> odom transform is post-dated past its image stamp, as AMCL does",
                  minimum=0.0, maximum=10.0),
    ParameterSpec("transform_timeout", 0.1,
                  "Longest wait (s) for the transforms at an image's stamp; then the frame is dropped",
                  minimum=0.0, maximum=10.0),
    ParameterSpec("loop_closure_enter_score", math.nan,
                  "Loop-closure score at or below which a place counts as known; NaN: the checkpoint's"),
    ParameterSpec("loop_closure_leave_score", math.nan,
                  "Loop-closure score above which a known place is left; NaN: the checkpoint's"),
    ParameterSpec("loop_closure_min_frames", 0,
                  "Consecutive frames needed to switch the loop-closure flag; 0: the checkpoint's",
                  minimum=0, maximum=1000),
    ParameterSpec("publish_unknown", False,
                  "Publish every frame's pose; false: only confident ones (a known place, σ within the "
                  "limits), relocalization/status says why a pose was withheld"),
    ParameterSpec("max_position_sigma", math.nan,
                  "Largest position σ (√trace of the position covariance, m) of a confident pose; NaN: "
                  "the checkpoint's calibrated limit (no limit if it stores none), .inf: no limit"),
    ParameterSpec("max_rotation_sigma", math.nan,
                  "Largest rotation σ (√trace of the rotation covariance, degrees) of a confident pose; "
                  "NaN: the checkpoint's calibrated limit (no limit if it stores none), .inf: no limit"),
    ParameterSpec("initial_pose_at_start", False,
                  "Send the first confident pose to initialpose (Nav2 AMCL's initial pose)"),
    ParameterSpec("initial_pose_lost_frames", 0,
                  "After this many consecutive unconfident frames, send the next confident pose to "
                  "initialpose again; 0: never", minimum=0, maximum=100000),
    ParameterSpec("reset_gap", 1.0,
                  "A stamp gap (s) longer than this, or a stamp going backwards, resets the stream state",
                  minimum=0.0, maximum=3600.0),
    ParameterSpec("diagnostics_period", 1.0, "Period (s) of the /diagnostics status",
                  minimum=0.1, maximum=60.0),
)

_SPECS = {spec.name: spec for spec in NODE_PARAMETERS}
_TOPIC_NAME = re.compile(r"~?/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")  # a ROS 2 topic name


@dataclass(frozen=True)
class NodeSettings:
    """Validated node parameters (see `NODE_PARAMETERS` for meanings and units)."""

    model: str
    device: str = "auto"
    precision: str = "fp32"
    runtime: str = "torch"
    exported_model: str = ""
    fast_path: bool = True
    image_topic: str = "/camera/image_raw"
    camera_info_topic: str = "auto"
    depth_topic: str = "/camera/depth/image_raw"
    use_depth: bool = False
    max_depth_stamp_diff: float = 0.02
    mc_samples: int = -1
    smoothing: bool = True
    smoothing_reset_unknown: int = 10
    odometry: str = "none"
    odometry_position_noise: float = 0.02
    odometry_rotation_noise_deg: float = 1.0
    odometry_max_gap: float = 0.5
    map_frame: str = "map"
    base_frame: str = "base_link"
    odom_frame: str = "odom"
    camera_frame: str = ""
    publish_tf: bool = False
    tf_mode: str = "map_odom"
    transform_tolerance: float = 1.0
    transform_timeout: float = 0.1
    loop_closure_enter_score: float = math.nan
    loop_closure_leave_score: float = math.nan
    loop_closure_min_frames: int = 0
    publish_unknown: bool = False
    max_position_sigma: float = math.nan
    max_rotation_sigma: float = math.nan
    initial_pose_at_start: bool = False
    initial_pose_lost_frames: int = 0
    reset_gap: float = 1.0
    diagnostics_period: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_position_sigma", "max_rotation_sigma"):
            if getattr(self, name) <= 0:
                raise ValueError(f"parameter {name!r} must be > 0 (NaN: the checkpoint's, .inf: no limit), "
                                 f"got {getattr(self, name)!r}")

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> NodeSettings:
        """Check names, types, ranges and choices; missing names take their defaults.

        Raises ValueError naming the offending parameter.
        """
        checked = {name: _check(_spec(name), value) for name, value in values.items()}
        if not checked.get("model"):
            raise ValueError("parameter 'model' is required: the path of a training run or its "
                             "model.safetensors")
        settings = cls(**checked)
        if settings.publish_tf and settings.tf_mode == "map_odom" and not (settings.base_frame
                                                                           and settings.odom_frame):
            raise ValueError("publish_tf with tf_mode 'map_odom' needs base_frame and odom_frame (the map "
                             "-> odom transform comes from the base pose); for a camera without a robot "
                             "set tf_mode to 'map_camera'")
        if settings.publish_tf and settings.tf_mode == "map_camera" and settings.base_frame:
            raise ValueError(f"publish_tf with tf_mode 'map_camera' would give the camera frame a second "
                             f"parent ({settings.map_frame}, besides {settings.base_frame}): set base_frame "
                             "to '' (a camera without a robot) or tf_mode to 'map_odom'")
        if settings.odometry not in ("none", "tf") and not _TOPIC_NAME.fullmatch(settings.odometry):
            raise ValueError(f"parameter 'odometry' must be none, tf or a topic name (e.g. /odom), got "
                             f"{settings.odometry!r}")
        if settings.odometry != "none" and not (settings.base_frame and settings.odom_frame):
            raise ValueError("parameter 'odometry' needs base_frame and odom_frame: the odometry moves the "
                             "base, and base_frame -> camera (TF) carries that motion to the camera")
        return settings

    def values(self) -> dict[str, Any]:
        """name -> value of every parameter."""
        return dataclasses.asdict(self)


def parameter_from_text(name: str, text: str) -> bool | int | float | str:
    """The value of parameter `name` written as text (a launch argument `name:=text`), of the
    parameter's type: a string parameter takes the text as it is (a path such as 2024 stays a
    string), the others parse it as YAML (`true`, `8`, `0.5`, `.nan`; a double also takes `nan` and
    `inf`). Raises ValueError naming the parameter for an unknown name or a value of the wrong type,
    out of range or not among the choices, as `NodeSettings.from_values` does."""
    spec = _spec(name)
    if isinstance(spec.default, str):
        return _check(spec, text)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if isinstance(spec.default, float) and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass  # refused below, with the text in the message
    return _check(spec, value)


def _spec(name: str) -> ParameterSpec:
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown parameter {name!r}; the node's parameters are: {', '.join(_SPECS)}")
    return spec


def _check(spec: ParameterSpec, value: Any) -> bool | int | float | str:
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # YAML `1` for a double parameter, as ROS 2 accepts
    if type(value) is not expected:
        raise ValueError(f"parameter {spec.name!r} must be {expected.__name__}, got {value!r}")
    if spec.choices and value not in spec.choices:
        raise ValueError(f"parameter {spec.name!r} must be one of {', '.join(spec.choices)}, got {value!r}")
    if spec.minimum is not None and not (spec.minimum <= value <= spec.maximum):  # type: ignore[operator]
        raise ValueError(f"parameter {spec.name!r} must lie in [{spec.minimum}, {spec.maximum}], "
                         f"got {value!r}")
    return value


def read_parameters_file(path: str | Path, node_name: str = NODE_NAME,
                         namespace: str = "/") -> dict[str, Any]:
    """The `ros__parameters` of the node `namespace`/`node_name` in a ROS 2 parameters YAML file (the
    file `ros2 run ... --ros-args --params-file` takes), matched as rcl matches it: `/**` applies to
    every node, `/**/relocalize_node` to that name in any namespace, and the fully qualified name
    (`/relocalize_node`, or `relocalize_node` without the slash, in the root namespace;
    `/robot1/relocalize_node` in /robot1) to that node alone; later, more specific entries win."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"parameters file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ValueError(f"parameters file {path} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ValueError(f"parameters file {path} must map node names to `ros__parameters`")
    full_name = f"{namespace.rstrip('/')}/{node_name}"
    patterns = ("/**", f"/**/{node_name}", full_name)
    sections = sorted((key for key in document if "/" + str(key).lstrip("/") in patterns),
                      key=lambda key: patterns.index("/" + str(key).lstrip("/")))
    if not sections:
        raise ValueError(f"parameters file {path} has no section for {node_name!r} "
                         f"(keys: {', '.join(map(str, document))})")
    values: dict[str, Any] = {}
    for key in sections:
        section = document[key]
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise ValueError(f"parameters file {path}: {key!r} must contain a `ros__parameters` mapping")
        values.update(section["ros__parameters"])
    return values


def parse_override(text: str) -> tuple[str, Any]:
    """`name:=value` or `name=value` from a command line, the value parsed as YAML (as ROS 2 does)."""
    name, separator, raw = text.partition(":=") if ":=" in text else text.partition("=")
    if not separator or not name:
        raise ValueError(f"expected NAME:=VALUE, got {text!r}")
    return name.strip(), yaml.safe_load(raw) if raw.strip() else ""
