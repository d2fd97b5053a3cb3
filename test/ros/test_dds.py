"""ros/dds.py: ROS 2 topic names and domain ids, the QoS profiles, publish and subscribe within one
process (latched samples, a failing callback, closing) and between two processes over loopback.

Every DDS test runs on the loopback interface only (``loopback_config()``) on a domain id derived
from the pid, and waits on events with generous timeouts rather than sleeping fixed times.

Run as a script (``python test/ros/test_dds.py --echo-child DOMAIN``), this file is the child
process of the round-trip test: it subscribes to ``/camera/image_raw`` and answers each image with
its mean pixel value (std_msgs/Float64 on ``/echo/mean``) and a PoseWithCovarianceStamped carrying
the image's header (``/echo/pose``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from cyclonedds.core import Policy
from dds_support import dds_image

from posenet_ros.ros.dds import (
    QOS_PROFILES,
    DdsNode,
    dds_topic_name,
    loopback_config,
    qos_profile,
    resolve_topic_name,
    ros_domain_id,
)
from posenet_ros.ros.dds_types import dds_type, typestore

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 20.0


def _test_domain_id() -> int:
    """A domain id (16..215) derived from the pid, so that parallel test runs do not meet."""
    return 16 + os.getpid() % 200


def test_topic_names_and_domain_id(monkeypatch: Any) -> None:
    assert dds_topic_name("/relocalized_pose") == "rt/relocalized_pose"
    assert dds_topic_name("/ns/topic") == "rt/ns/topic"
    assert dds_topic_name("image", namespace="/cam") == "rt/cam/image"
    assert resolve_topic_name("~/status", namespace="/robot", node_name="posenet") == "/robot/posenet/status"
    for bad in ("", "/a/", "a//b"):
        try:
            resolve_topic_name(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")
    monkeypatch.setenv("ROS_DOMAIN_ID", "42")
    assert ros_domain_id() == 42 and ros_domain_id(7) == 7
    monkeypatch.delenv("ROS_DOMAIN_ID")
    assert ros_domain_id() == 0


def test_qos_profiles_match_ros2() -> None:
    sensor = qos_profile("sensor_data")
    assert Policy.Reliability.BestEffort in sensor and Policy.History.KeepLast(5) in sensor
    assert Policy.Durability.Volatile in sensor
    default = qos_profile("default")
    assert Policy.History.KeepLast(10) in default and Policy.Durability.Volatile in default
    latched = qos_profile("transient_local")
    assert Policy.History.KeepLast(1) in latched and Policy.Durability.TransientLocal in latched
    for name in QOS_PROFILES:
        qos = qos_profile(name)
        assert Policy.DataRepresentation(use_cdrv0_representation=True) in qos  # XCDR1 only
        assert (Policy.Reliability.BestEffort in qos) == (name == "sensor_data")
    config = loopback_config()
    assert "127.0.0.1" in config and "<AllowMulticast>false</AllowMulticast>" in config


def test_in_process_publish_subscribe_latched_and_close(monkeypatch: Any) -> None:
    domain = _test_domain_id()
    config = loopback_config()
    float_type = dds_type("std_msgs/msg/Float64")
    wire_headers: list[bytes] = []
    plain_deserialize = float_type.deserialize

    def recording_deserialize(data: bytes, *args: Any, **kwargs: Any) -> Any:
        wire_headers.append(bytes(data[:4]))  # what the DataReader got from the network
        return plain_deserialize(data, *args, **kwargs)

    monkeypatch.setattr(float_type, "deserialize", recording_deserialize)
    received: list[float] = []
    got_value = threading.Event()
    latched: list[Any] = []
    got_latched = threading.Event()

    def on_value(msg: Any) -> None:
        if msg.data < 0:
            raise RuntimeError("a failing callback must not stop the dispatcher")
        received.append(msg.data)
        got_value.set()

    with DdsNode("talker", domain_id=domain, config=config) as talker:
        with DdsNode("listener", domain_id=domain, config=config) as listener:
            listener.subscription("/values", "std_msgs/msg/Float64", "default", on_value)
            values = talker.publisher("/values", "std_msgs/msg/Float64", "default")
            assert values.wait_for_subscribers(1, TIMEOUT_S)
            values.publish(float_type(data=-1.0))
            values.publish(typestore().types["std_msgs/msg/Float64"](data=2.5))  # a rosbags message
            assert got_value.wait(TIMEOUT_S)
            assert received == [2.5]
            assert wire_headers and set(wire_headers) == {b"\x00\x01\x00\x00"}  # XCDR1, little endian

            # transient local: a subscription created after the publication still gets the sample
            pose = talker.publisher("/map_pose", "geometry_msgs/msg/PoseStamped", "transient_local")
            sample = dds_type("geometry_msgs/msg/PoseStamped")()
            sample.header.frame_id = "map"
            sample.pose.position.x = 1.25
            pose.publish(sample)
            listener.subscription(
                "/map_pose",
                "geometry_msgs/msg/PoseStamped",
                "transient_local",
                lambda msg: (latched.append(msg), got_latched.set()),
            )
            assert got_latched.wait(TIMEOUT_S)
            assert latched[0].header.frame_id == "map" and latched[0].pose.position.x == 1.25
            dispatcher = listener._thread
        assert not dispatcher.is_alive()
        listener.close()  # idempotent


def _echo_child(domain: int) -> None:
    """Child process: answer each image with its mean pixel value and a pose with its header."""
    float_type = dds_type("std_msgs/msg/Float64")
    pose_type = dds_type("geometry_msgs/msg/PoseWithCovarianceStamped")
    with DdsNode("echo", domain_id=domain, config=loopback_config()) as node:
        mean_pub = node.publisher("/echo/mean", "std_msgs/msg/Float64", "default")
        pose_pub = node.publisher("/echo/pose", "geometry_msgs/msg/PoseWithCovarianceStamped", "default")

        def on_image(image: Any) -> None:
            assert isinstance(image.data, bytes)  # the fast path
            pixels = np.frombuffer(image.data, dtype=np.uint8)
            mean_pub.publish(float_type(data=float(pixels.mean())))
            pose = pose_type(header=image.header)
            pose.pose.pose.position.x = float(image.width)
            pose.pose.pose.orientation.w = 1.0
            pose.pose.covariance = [0.01 * (i % 7 == 0) for i in range(36)]
            pose_pub.publish(pose)

        node.subscription("/camera/image_raw", "sensor_msgs/msg/Image", "sensor_data", on_image)
        sys.stdin.read()  # until the parent closes our stdin


def test_two_process_round_trip_over_loopback() -> None:
    domain = _test_domain_id()
    env = dict(
        os.environ,
        CYCLONEDDS_URI=loopback_config(),
        # the child runs this file as a script: the repository and test/ (dds_support) on its path
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), str(REPO_ROOT / "test"),
                                                 os.environ.get("PYTHONPATH")])),
    )
    images = [dds_image(48, 64, seed=10 + i, stamp_sec=100 + i) for i in range(3)]
    expected_means = {float(np.asarray(image.data).mean()) for image in images}
    expected_stamps = {(image.header.stamp.sec, image.header.stamp.nanosec) for image in images}
    means: set[float] = set()
    stamps: set[tuple[int, int]] = set()
    poses: list[Any] = []
    lock = threading.Lock()
    all_received = threading.Event()

    def check_done() -> None:
        if expected_means <= means and expected_stamps <= stamps:
            all_received.set()

    def on_mean(msg: Any) -> None:
        with lock:
            means.add(msg.data)
            check_done()

    def on_pose(msg: Any) -> None:
        with lock:
            stamps.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
            poses.append(msg)
            check_done()

    child = subprocess.Popen(
        [sys.executable, __file__, "--echo-child", str(domain)],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.PIPE,
    )
    try:
        with DdsNode("camera", domain_id=domain, config=loopback_config()) as node:
            node.subscription("/echo/mean", "std_msgs/msg/Float64", "default", on_mean)
            node.subscription("/echo/pose", "geometry_msgs/msg/PoseWithCovarianceStamped", "default", on_pose)
            camera = node.publisher("/camera/image_raw", "sensor_msgs/msg/Image", "sensor_data")
            assert camera.wait_for_subscribers(1, TIMEOUT_S), "the child's reader was never matched"
            # best effort: keep publishing until every reply is in (discovery may still be one-sided)
            deadline = time.monotonic() + TIMEOUT_S
            while not all_received.is_set() and time.monotonic() < deadline:
                for image in images:
                    camera.publish(image)
                all_received.wait(0.2)
            assert all_received.is_set(), f"means {means}, stamps {stamps}"
        with lock:
            assert expected_means <= means and expected_stamps <= stamps
            for pose in poses:
                assert pose.header.frame_id == "cam"
                assert pose.pose.pose.position.x == 64.0 and pose.pose.pose.orientation.w == 1.0
                assert len(pose.pose.covariance) == 36 and pose.pose.covariance[7] == 0.01
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    assert child.returncode == 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo-child":
        _echo_child(int(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} --echo-child DOMAIN_ID")
