"""REP-105 frames: the relocalized camera pose turned into the pose of the robot's base in the map and
the map -> odom transform a localizer publishes.

Frames (parameters): `map_frame`; `base_frame` (empty: the camera's own pose is published, nothing is
looked up); `odom_frame`; `camera_frame` (empty: the image's header.frame_id). For an image stamped t,
the transforms it needs are looked up at t, before the network runs:

    base_from_camera   base_frame <- camera frame (/tf_static, or /tf), when base_frame is set
    odom_from_base     odom_frame <- base_frame (/tf, the odometry), with publish_tf and tf_mode map_odom

and from the Relocalizer's world_from_cam (map_from_camera):

    map_from_base = map_from_camera · base_from_camera⁻¹     -> /relocalized_pose, its covariance
                    carried from the camera's by the lever arm (core/covariance_transport.py)
    map_from_odom = map_from_base · odom_from_base⁻¹          -> /tf, stamped t + transform_tolerance
                                                                 (post-dated as AMCL does)

so that map_from_odom · odom_from_base(t) · base_from_camera(t) = map_from_camera exactly. tf_mode
map_camera publishes map -> camera frame at t instead (a camera without a robot: base_frame empty, so
that nothing else parents the camera frame; parameters.py refuses it with a base_frame). A missing
base_from_camera, or one not yet known at t, raises `TransformUnavailable` naming the link; the pipeline
drops the frame and counts it. A missing odom_from_base costs only the map -> odom transform of that
frame (`FrameLinks.odom_problem` says why; the pipeline counts it): the pose itself needs only the
camera extrinsic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from posenet_ros.core.covariance_transport import transport_covariance
from posenet_ros.core.geometry import pose_from_position_quat, position_quat_from_pose
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.ros.tf_buffer import TransformUnavailable

DEFAULT_CAMERA_FRAME = "camera"  # when neither camera_frame nor the image's header names one


class TransformLookup(Protocol):
    """What the pipeline asks of a TF buffer (ros/tf_buffer.TransformBuffer, or tf2_ros's through the
    rclpy node's adapter): target_from_source (4x4, metres) at `stamp_ns`, waiting up to `timeout_s`
    seconds; raises ros.tf_buffer.TransformUnavailable naming the missing or stale link."""

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int,
               timeout_s: float = 0.0) -> np.ndarray: ...


@dataclass(frozen=True)
class FrameLinks:
    """The TF links of one image at its stamp: camera_frame, base_from_camera (4x4; None without
    base_frame) and odom_from_base (4x4; None unless map -> odom is published, or when it is missing at
    this stamp: then `odom_problem` says why)."""

    camera_frame: str
    base_from_camera: np.ndarray | None
    odom_from_base: np.ndarray | None
    odom_problem: str = ""


@dataclass(frozen=True)
class PublishedTransform:
    """parent_from_child (4x4, metres) to send on /tf, stamped `stamp_ns`."""

    parent: str
    child: str
    stamp_ns: int
    parent_from_child: np.ndarray


@dataclass(frozen=True)
class RobotPose:
    """What is published for one frame: the pose of `frame` (base_frame, or the camera frame without
    one) in the map (position metres, unit quaternion w, x, y, z; covariance 6x6 over x, y, z, rot
    X, Y, Z about the map axes, m² and rad²) and the transforms for /tf (empty without publish_tf)."""

    frame: str
    position_3: np.ndarray
    quat_wxyz_4: np.ndarray
    covariance_66: np.ndarray
    transforms: tuple[PublishedTransform, ...]


def camera_frame_of(settings: NodeSettings, image_msg: Any) -> str:
    """The camera's TF frame: `camera_frame`, else the image's header.frame_id, else "camera"."""
    header_frame = str(getattr(getattr(image_msg, "header", None), "frame_id", "") or "")
    return settings.camera_frame or header_frame.lstrip("/") or DEFAULT_CAMERA_FRAME


def needs_transforms(settings: NodeSettings) -> bool:
    """Whether the node looks anything up in TF (and so subscribes to /tf and /tf_static)."""
    return bool(settings.base_frame) or publishes_map_odom(settings)


def look_up_links(settings: NodeSettings, transforms: TransformLookup, camera_frame: str,
                  stamp_ns: int) -> FrameLinks:
    """The links an image stamped `stamp_ns` needs (see the module docstring); TransformUnavailable
    when base_from_camera is missing or stale (a missing odom_from_base is `FrameLinks.odom_problem`)."""
    timeout = settings.transform_timeout
    base_from_camera = odom_from_base = None
    odom_problem = ""
    if settings.base_frame:
        base_from_camera = transforms.lookup(settings.base_frame, camera_frame, stamp_ns, timeout)
    if publishes_map_odom(settings):
        try:
            odom_from_base = transforms.lookup(settings.odom_frame, settings.base_frame, stamp_ns, timeout)
        except TransformUnavailable as error:
            odom_problem = str(error)
    return FrameLinks(camera_frame, base_from_camera, odom_from_base, odom_problem)


def publishes_map_odom(settings: NodeSettings) -> bool:
    """Whether the node publishes map -> odom (publish_tf, tf_mode map_odom)."""
    return settings.publish_tf and settings.tf_mode == "map_odom"


def robot_pose(settings: NodeSettings, links: FrameLinks, stamp_ns: int, position_3: np.ndarray,
               quat_wxyz_4: np.ndarray, covariance_66: np.ndarray) -> RobotPose:
    """The published pose and transforms for the camera pose map_from_camera = (position_3,
    quat_wxyz_4) with `covariance_66`, given the frame's `links`."""
    map_from_camera = pose_from_position_quat(position_3, quat_wxyz_4)
    frame, map_from_frame, covariance = links.camera_frame, map_from_camera, covariance_66
    if links.base_from_camera is not None:
        camera_from_base = np.linalg.inv(links.base_from_camera)
        frame, map_from_frame = settings.base_frame, map_from_camera @ camera_from_base
        covariance = transport_covariance(covariance_66, map_from_camera, camera_from_base)
    transforms: tuple[PublishedTransform, ...] = ()
    if publishes_map_odom(settings):
        if links.odom_from_base is None:  # missing at this stamp: no map -> odom for this frame
            position, quat = position_quat_from_pose(map_from_frame)
            return RobotPose(frame, position, quat, covariance, ())
        post_dated = stamp_ns + round(settings.transform_tolerance * 1e9)
        transforms = (PublishedTransform(settings.map_frame, settings.odom_frame, post_dated,
                                         map_from_frame @ np.linalg.inv(links.odom_from_base)),)
    elif settings.publish_tf:
        transforms = (PublishedTransform(settings.map_frame, links.camera_frame, stamp_ns, map_from_camera),)
    position, quat = position_quat_from_pose(map_from_frame)
    return RobotPose(frame, position, quat, covariance, transforms)
