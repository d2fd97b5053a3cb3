"""The robot's odometry for the odometry-aided smoothing (inference/odometry_fusion.py): the camera's
motion between two consecutive frames, from the base's pose in the odometry frame at their stamps.

Where the odometry comes from (parameter `odometry`, `odometry_source`):

    "none"       no odometry: the node smooths as without this module (CausalSmoother)
    "tf"         odom_frame <- base_frame from TF at each image stamp (REP-105)
    a topic      nav_msgs/Odometry on that topic: its pose, as odom_frame <- base_frame at header.stamp

Either way the poses go into a `TransformBuffer` (ros/tf_buffer.py; for "tf" the /tf and /tf_static
tree, for a topic one link odom_frame -> base_frame), which interpolates them at an image's stamp as tf2
does (lerp + slerp, a bounded cache) and, unlike tf2, refuses a stamp inside a gap longer than
`odometry_max_gap` seconds (an odometry that stopped for a while has no motion to interpolate). This is
why even the rclpy node, whose other lookups go to tf2_ros, keeps its own buffer for the odometry: tf2's
Buffer does not expose the stamps around a query.

`OdometryTracker.lookup(stamp_ns, base_from_camera)` gives the frame's odometry (`RobotOdometry`:
odom_from_base at its stamp and the camera's mount), or None (with the reason) when it is missing. The
smoother (`OdometryAidedSmoother`) makes the camera's motion from consecutive frames' odometry, with the
noise of `odometry_position_noise` / `odometry_rotation_noise_deg`; where the odometry is missing it
falls back on the temporal model's learned motion, and the pipeline counts it (`odometry_missing`).

A nav_msgs/Odometry message's covariance is not used: it is the covariance of the absolute pose in the
odometry frame, and the covariance of the motion between two stamps is not a function of the two (the
errors of the two poses are correlated by the whole path before them); drivers also publish constant or
placeholder values. The noise per metre travelled comes from the parameters (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from posenet_ros.inference.odometry_fusion import OdometryNoise, RobotOdometry
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.ros.conversions import pose_from_msg, stamp_to_ns
from posenet_ros.ros.tf_buffer import TransformBuffer, TransformUnavailable

ODOMETRY_TYPE = "nav_msgs/msg/Odometry"


def odometry_source(settings: NodeSettings) -> str | None:
    """None (no odometry), "tf", or the nav_msgs/Odometry topic name."""
    return None if settings.odometry == "none" else settings.odometry


def odometry_topic(settings: NodeSettings) -> str | None:
    """The nav_msgs/Odometry topic the node subscribes to; None for "none" and "tf"."""
    return settings.odometry if settings.odometry not in ("none", "tf") else None


def odometry_noise(settings: NodeSettings) -> OdometryNoise:
    """The odometry's error per metre travelled, from the parameters."""
    return OdometryNoise(settings.odometry_position_noise, settings.odometry_rotation_noise_deg)


def add_odometry_message(buffer: TransformBuffer, msg: Any, odom_frame: str, base_frame: str) -> None:
    """A nav_msgs/Odometry message's pose into `buffer` as `odom_frame` <- `base_frame` at its
    header.stamp. Its frame ids may be empty (drivers often leave child_frame_id empty); a non-empty one
    other than the node's frame is a ValueError, as is a pose that is not finite or a zero quaternion."""
    named = (str(msg.header.frame_id).lstrip("/"), str(msg.child_frame_id).lstrip("/"))
    for name, expected, field in zip(named, (odom_frame, base_frame), ("header.frame_id", "child_frame_id"),
                                     strict=True):
        if name and name != expected.lstrip("/"):
            raise ValueError(f"odometry {field} is {name!r}, not {expected!r} (parameters odom_frame, "
                             "base_frame)")
    position, quat = pose_from_msg(msg)
    buffer.add_pose(odom_frame, base_frame, stamp_to_ns(msg.header.stamp), position, quat)


@dataclass(frozen=True)
class OdometryStep:
    """One frame's odometry (None: missing) and, when it is missing, why."""

    odometry: RobotOdometry | None
    problem: str


class OdometryTracker:
    """The odometry at each frame's stamp. `buffer`: where odom_frame <- base_frame is looked up
    (waiting up to `timeout_s`, refusing gaps longer than `max_gap_s`)."""

    def __init__(self, buffer: TransformBuffer, odom_frame: str, base_frame: str, max_gap_s: float,
                 timeout_s: float = 0.0) -> None:
        self.buffer, self.odom_frame, self.base_frame = buffer, odom_frame, base_frame
        self.max_gap_s, self.timeout_s = max_gap_s, timeout_s

    @classmethod
    def for_settings(cls, settings: NodeSettings, buffer: TransformBuffer) -> OdometryTracker:
        return cls(buffer, settings.odom_frame, settings.base_frame, settings.odometry_max_gap,
                   settings.transform_timeout)

    def lookup(self, stamp_ns: int, base_from_camera: np.ndarray,
               timeout_s: float | None = None) -> OdometryStep:
        """The odometry of a frame stamped `stamp_ns` whose camera is mounted at base_from_camera (4x4),
        waiting up to `timeout_s` (None: the tracker's) for it to arrive."""
        try:
            odom_from_base = self.buffer.lookup(self.odom_frame, self.base_frame, stamp_ns,
                                                self.timeout_s if timeout_s is None else timeout_s,
                                                max_gap_s=self.max_gap_s)
        except TransformUnavailable as error:
            return OdometryStep(None, str(error))
        return OdometryStep(RobotOdometry(odom_from_base, base_from_camera), "")
