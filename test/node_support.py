"""Shared by the tests of the node, the runtime, the temporal model and RGB-D: a small calibrated
checkpoint, a random temporal model, and synthetic camera frames and messages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from posenet_ros.core.camera import Intrinsics
from posenet_ros.core.geometry import (
    matrix_to_quat,
    pose_from_position_quat,
    position_quat_from_pose,
    quat_exp,
    quat_multiply,
)
from posenet_ros.inference.loop_closure import LoopClosureConfig
from posenet_ros.inference.odometry_fusion import FusionParameters
from posenet_ros.inference.temporal import TemporalCalibration
from posenet_ros.inference.uncertainty import UncertaintyConfig
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.models.temporal import TemporalConfig, TemporalModel
from posenet_ros.ros.conversions import RosbagsTypes, image_msg, transform_stamped
from posenet_ros.runtime.checkpoint import load_model, save_checkpoint, store_calibration, store_temporal

TYPES = RosbagsTypes()
STAMP0_NS = 1_700_000_000_000_000_000  # 2023-11-14, a realistic ROS time
PERIOD_NS = 100_000_000  # 10 Hz


class ListLog:
    """A NodeLog that keeps its lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", message))


def make_checkpoint(path: Path, backbone: str = "resnet_tiny", resize: int = 24, crop: int = 24,
                    mc_samples: int = 8, depth: str = "none", camera: Intrinsics | None = None) -> Path:
    """An untrained but calibrated checkpoint (fixed seed) with 5 map poses; `depth` "dual_stream" or
    "early_fusion" makes it an RGB-D model; `camera`: its training camera."""
    config = {"model": {"backbone": backbone, "feature_dim": 64, "aleatoric": "per_axis", "depth": depth},
              "data": {"resize": resize, "crop": [crop, crop]}}
    torch.manual_seed(0)
    model = PoseNet(ModelConfig(**config["model"]))
    with torch.no_grad():
        model.feature_covariance.copy_(torch.eye(model.head_dim))
    map_poses = np.column_stack([np.arange(5.0), np.zeros((5, 2)), np.ones(5), np.zeros((5, 3))])
    path = save_checkpoint(path, model, config, map_poses,
                           {"camera": json.dumps(camera.to_dict())} if camera is not None else None)
    store_calibration(path, UncertaintyConfig(mc_samples=mc_samples, position_scale=2.0),
                      LoopClosureConfig(enter_score=1e9, leave_score=1e9, min_frames=2))
    return path


def rgb_frame(index: int, width: int = 40, height: int = 30) -> np.ndarray:
    """A deterministic textured RGB image (uint8 (H, W, 3)), different for every index."""
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def stamp(index: int) -> int:
    return STAMP0_NS + index * PERIOD_NS


def image(index: int, width: int = 40, height: int = 30, frame_id: str = "camera_optical") -> object:
    """sensor_msgs/Image rgb8 of `rgb_frame(index)` stamped `stamp(index)` (rosbags class)."""
    return image_msg(TYPES, rgb_frame(index, width, height), stamp(index), frame_id, "rgb8")


def depth_frame(index: int, width: int = 40, height: int = 30) -> np.ndarray:
    """A deterministic depth image in metres (float32 (H, W), 0.5 to 4.5 m), different for every index."""
    rng = np.random.default_rng(10_000 + index)
    return rng.uniform(0.5, 4.5, (height, width)).astype(np.float32)


def random_temporal(feature_dim: int, cnn_feature_dim: int = 64, components: int = 1) -> TemporalModel:
    """A TemporalModel whose output layers are random (an untrained one passes the per-frame poses
    through), seeded, in eval mode."""
    torch.manual_seed(1)
    config = TemporalConfig(hidden=16, feature_dim=feature_dim, mixture_components=components)
    temporal = TemporalModel(config, cnn_feature_dim)
    with torch.no_grad():
        for head in (temporal.causal_head, temporal.offline_head):
            head.weight.normal_(0.0, 0.3)
    return temporal.eval()


# A robot for the REP-105 frame tests: the camera's optical frame (z forward, x right, y down) 0.25 m
# ahead of, 0.05 m right of and 0.7 m above the base, pitched down 15°; odometry driving a curve.
BASE_FROM_CAMERA = pose_from_position_quat([0.25, -0.05, 0.7], quat_multiply(
    quat_exp([0.0, np.radians(15.0), 0.0]),
    matrix_to_quat(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))))


def odom_from_base(index: int) -> np.ndarray:
    """odom_from_base (4x4) at `stamp(index)`: 0.3 m forward and 0.1 rad about z per frame."""
    return pose_from_position_quat([0.3 * index, 0.02 * index**2, 0.0], quat_exp([0.0, 0.0, 0.1 * index]))


def transform(parent: str, child: str, stamp_ns: int, parent_from_child: np.ndarray) -> object:
    """geometry_msgs/TransformStamped (rosbags class) of a 4x4 parent_from_child."""
    return transform_stamped(TYPES, stamp_ns, parent, child, parent_from_child[:3, 3],
                             matrix_to_quat(parent_from_child[:3, :3]))


def odometry_msg(stamp_ns: int, odom_from_base_44: np.ndarray, frame_id: str = "odom",
                 child_frame_id: str = "base_link") -> object:
    """nav_msgs/Odometry (rosbags class) whose pose is a 4x4 odom_from_base; zero twist and covariances."""
    position, quat = position_quat_from_pose(odom_from_base_44)
    vector = TYPES.get("geometry_msgs/msg/Vector3")
    pose = TYPES.get("geometry_msgs/msg/Pose")(
        position=TYPES.get("geometry_msgs/msg/Point")(x=position[0], y=position[1], z=position[2]),
        orientation=TYPES.get("geometry_msgs/msg/Quaternion")(w=quat[0], x=quat[1], y=quat[2], z=quat[3]))
    header = transform(frame_id or "odom", "base_link", stamp_ns, odom_from_base_44).header
    header.frame_id = frame_id
    return TYPES.get("nav_msgs/msg/Odometry")(
        header=header, child_frame_id=child_frame_id,
        pose=TYPES.get("geometry_msgs/msg/PoseWithCovariance")(pose=pose, covariance=np.zeros(36)),
        twist=TYPES.get("geometry_msgs/msg/TwistWithCovariance")(
            twist=TYPES.get("geometry_msgs/msg/Twist")(linear=vector(x=0.0, y=0.0, z=0.0),
                                                       angular=vector(x=0.0, y=0.0, z=0.0)),
            covariance=np.zeros(36)))


def store_fused_temporal(path: Path, fusion: bool = True) -> Path:
    """Store a random temporal model (`random_temporal`) in the checkpoint at `path`, with the odometry
    filter's default fusion parameters unless `fusion` is False (a model trained before they existed)."""
    temporal = random_temporal(0, load_model(path).model.head_dim)
    description = {"config": {"hidden": 16, "feature_dim": 0}, "calibration": vars(TemporalCalibration())}
    if fusion:
        description["fusion"] = dataclasses.asdict(FusionParameters())
    return store_temporal(path, temporal, description)
