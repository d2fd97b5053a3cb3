"""ros/tf_buffer.py: the TF tree of /tf and /tf_static looked up at a stamp with tf2's rules
(interpolation, static links, extrapolation errors naming the link, the rolling cache)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from posenet_ros.core.geometry import pose_from_position_quat, position_quat_from_pose, quat_exp
from posenet_ros.ros.conversions import RosbagsTypes, tf_message, transform_stamped
from posenet_ros.ros.tf_buffer import TransformBuffer, TransformUnavailable

TYPES = RosbagsTypes()
T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000


def _transform(parent: str, child: str, stamp_ns: int, position, rotvec) -> object:
    return transform_stamped(TYPES, stamp_ns, parent, child, position, quat_exp(rotvec))


def _pose(position, rotvec) -> np.ndarray:
    return pose_from_position_quat(np.asarray(position, float), quat_exp(np.asarray(rotvec, float)))


def _robot_buffer(cache_time_s: float | None = 10.0) -> TransformBuffer:
    """odom -> base_link at T0 and T0 + 1 s (moving 1 m along x, turning 0.2 rad about z),
    base_link -> camera static."""
    buffer = TransformBuffer(cache_time_s)
    optical = _transform("base_link", "camera", 0, [0.2, 0, 0.6], [-1.2, 0, -1.2])
    buffer.add_message(tf_message(TYPES, [optical]), static=True)
    buffer.add(_transform("odom", "base_link", T0, [0, 0, 0], [0, 0, 0]))
    buffer.add(_transform("/odom", "base_link", T0 + SECOND, [1.0, 0, 0], [0, 0, 0.2]))
    return buffer


def test_lookup_composes_static_and_interpolated_links():
    buffer = _robot_buffer()
    base_from_camera = _pose([0.2, 0, 0.6], [-1.2, 0, -1.2])
    # Exactly at a stamp, then a quarter of the way: translation linear, rotation slerp (tf2's rule).
    np.testing.assert_allclose(buffer.lookup("odom", "camera", T0 + SECOND),
                               _pose([1.0, 0, 0], [0, 0, 0.2]) @ base_from_camera, atol=1e-12)
    quarter = buffer.lookup("odom", "camera", T0 + SECOND // 4)
    np.testing.assert_allclose(quarter, _pose([0.25, 0, 0], [0, 0, 0.05]) @ base_from_camera, atol=1e-12)
    # The inverse direction and a frame with itself.
    np.testing.assert_allclose(buffer.lookup("camera", "odom", T0 + SECOND // 4), np.linalg.inv(quarter),
                               atol=1e-12)
    np.testing.assert_array_equal(buffer.lookup("camera", "camera", 0), np.eye(4))
    # A static link holds at every time.
    np.testing.assert_allclose(buffer.lookup("/base_link", "camera", 5), base_from_camera, atol=1e-12)


def test_missing_and_stale_links_are_named():
    buffer = _robot_buffer()
    with pytest.raises(TransformUnavailable, match=r"odom -> base_link is not available at .* "
                                                   r"\(stale: no newer transform yet\)"):
        buffer.lookup("odom", "camera", T0 + 2 * SECOND)
    with pytest.raises(TransformUnavailable, match="odom -> base_link is not available"):
        buffer.lookup("odom", "camera", T0 - 1)
    with pytest.raises(TransformUnavailable, match="no transform from camera to map: camera's tree ends at "
                                                   "odom and map has no parent"):
        buffer.lookup("map", "camera", T0)
    with pytest.raises(ValueError, match="zero quaternion"):
        buffer.add(TYPES.get("geometry_msgs/msg/TransformStamped")(
            header=_transform("odom", "x", T0, [0, 0, 0], [0, 0, 0]).header, child_frame_id="x",
            transform=TYPES.get("geometry_msgs/msg/Transform")(
                translation=TYPES.get("geometry_msgs/msg/Vector3")(x=0.0, y=0.0, z=0.0),
                rotation=TYPES.get("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0, w=0.0))))


def test_the_cache_keeps_the_last_seconds_of_each_link():
    buffer = _robot_buffer(cache_time_s=10.0)
    buffer.add(_transform("odom", "base_link", T0 + 11 * SECOND, [2.0, 0, 0], [0, 0, 0]))
    with pytest.raises(TransformUnavailable, match=r"known from 1700000001\.000 s"):
        buffer.lookup("odom", "base_link", T0)  # older than the newest stamp - 10 s: pruned
    position, _ = position_quat_from_pose(buffer.lookup("odom", "base_link", T0 + 6 * SECOND))
    np.testing.assert_allclose(position, [1.5, 0, 0], atol=1e-12)
    keep_all = _robot_buffer(cache_time_s=None)
    keep_all.add(_transform("odom", "base_link", T0 + 11 * SECOND, [2.0, 0, 0], [0, 0, 0]))
    np.testing.assert_allclose(keep_all.lookup("odom", "base_link", T0), np.eye(4), atol=1e-12)


def test_lookup_waits_for_a_transform_that_arrives_within_the_timeout():
    buffer = _robot_buffer()
    arrived = threading.Event()

    def late_odometry() -> None:
        arrived.wait()
        buffer.add(_transform("odom", "base_link", T0 + 2 * SECOND, [2.0, 0, 0], [0, 0, 0.2]))

    thread = threading.Thread(target=late_odometry)
    thread.start()
    arrived.set()  # the transform arrives while lookup waits (the timeout is only an upper bound)
    position, _ = position_quat_from_pose(buffer.lookup("odom", "base_link", T0 + 2 * SECOND, timeout_s=60.0))
    thread.join()
    np.testing.assert_allclose(position, [2.0, 0, 0], atol=1e-12)


def test_max_gap_refuses_stamps_between_samples_further_apart_and_keeps_static_links():
    buffer = _robot_buffer()
    middle = T0 + SECOND // 2
    # tf2's rules interpolate across any gap; with max_gap_s a gap longer than that is refused, naming it.
    np.testing.assert_allclose(buffer.lookup("odom", "base_link", middle)[:3, 3], [0.5, 0, 0], atol=1e-12)
    np.testing.assert_allclose(buffer.lookup("odom", "base_link", middle, max_gap_s=1.0)[:3, 3], [0.5, 0, 0],
                               atol=1e-12)
    with pytest.raises(TransformUnavailable, match=r"odom -> base_link .* gap from .* \(longer than 0.5 s\)"):
        buffer.lookup("odom", "camera", middle, max_gap_s=0.5)
    # At a sample's own stamp there is nothing to interpolate; static links have no gaps.
    np.testing.assert_allclose(buffer.lookup("odom", "base_link", T0 + SECOND, max_gap_s=0.5)[:3, 3],
                               [1.0, 0, 0], atol=1e-12)
    assert buffer.lookup("base_link", "camera", middle, max_gap_s=0.0).shape == (4, 4)


def test_add_pose_takes_a_pose_and_refuses_bad_ones():
    buffer = TransformBuffer()
    buffer.add_pose("/odom", "base_link", T0, np.array([1.0, 2.0, 3.0]), np.array([2.0, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(buffer.lookup("odom", "base_link", T0), _pose([1, 2, 3], [0, 0, 0]),
                               atol=1e-15)
    for position, quat in (([np.nan, 0, 0], [1, 0, 0, 0]), ([0, 0, 0], [0, 0, 0, 0])):
        with pytest.raises(ValueError, match="not finite or has a zero quaternion"):
            buffer.add_pose("odom", "base_link", T0 + 1, np.array(position, float), np.array(quat, float))
    with pytest.raises(ValueError, match="invalid transform"):
        buffer.add_pose("odom", "", T0, np.zeros(3), np.array([1.0, 0, 0, 0]))
