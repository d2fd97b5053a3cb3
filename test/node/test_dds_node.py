"""node/dds_node.py: the relocalization node over Cyclone DDS on loopback, in separate processes
started through the CLI as a user starts them: `posenet-ros play` -> `posenet-ros node` ->
`posenet-ros echo`; the node under overload and fed bad messages; RGB-D pairing by stamp; the camera
calibration from camera_info; and the settings it reads from a parameters file and overrides.

Cross-process waits use readiness lines and generous timeouts, never fixed sleeps, and nothing is
asserted about time: the overload test checks counts and the queue's bound (latency and memory under
overload are measured by bench/node_latency.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dds_support import (
    PARAMS,
    POSE_TYPE,
    REPO_ROOT,
    TIMEOUT_S,
    Process,
    domain_id,
    send_until,
    stamp_to_ns_dict,
    start_node,
)
from node_support import TYPES, depth_frame, image, make_checkpoint, rgb_frame, stamp
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore

from posenet_ros.core.camera import Intrinsics
from posenet_ros.node.dds_node import load_settings
from posenet_ros.node.pipeline import NodeDiagnostics, build_relocalizer, input_topics
from posenet_ros.ros.conversions import camera_info_msg, depth_msg, image_msg, stamp_to_ns
from posenet_ros.ros.dds import DdsNode, loopback_config
from posenet_ros.runtime.relocalizer import Relocalizer


def _write_bag(path: Path, frames: int) -> None:
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    with Writer(path, version=8) as writer:
        connection = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=typestore)
        for i in range(frames):
            writer.write(connection, stamp(i), typestore.serialize_cdr(image(i), "sensor_msgs/msg/Image"))


def test_play_node_echo_in_three_processes(tmp_path):
    model = make_checkpoint(tmp_path / "model.safetensors")
    frames, domain = 6, domain_id(0)
    _write_bag(tmp_path / "bag", frames)
    output = tmp_path / "poses.jsonl"
    node = start_node(model, domain)
    echo = Process(["echo", "/relocalized_pose", "--type", POSE_TYPE, "--format", "json",
                    "--output", str(output), "--timeout", str(4 * TIMEOUT_S)], domain)
    try:
        echo.wait_for_line("echo: subscribed")
        play = subprocess.run(
            [sys.executable, "-m", "posenet_ros.cli", "play", str(tmp_path / "bag"), "--quiet",
             "--wait-subscribers", "1", "--step-topic", "/relocalized_pose",
             "--step-timeout", str(TIMEOUT_S)],
            cwd=REPO_ROOT, env=dict(os.environ, CYCLONEDDS_URI=loopback_config(), ROS_DOMAIN_ID=str(domain)),
            capture_output=True, text=True, timeout=4 * TIMEOUT_S)
        assert play.returncode == 0, play.stderr
        deadline = time.monotonic() + TIMEOUT_S
        poses: dict[int, dict] = {}
        while len(poses) < frames and time.monotonic() < deadline:
            lines = output.read_text().splitlines() if output.exists() else []
            poses = {stamp_to_ns_dict(msg["header"]["stamp"]): msg for msg in map(json.loads, lines)}
            time.sleep(0.1)
    finally:
        echo.stop()
        assert node.stop() == 0, "".join(node.lines)
    assert sorted(poses) == [stamp(i) for i in range(frames)]
    assert "received 6, processed 6, dropped 0, rejected 0" in node.lines[-1]
    reference = Relocalizer(model, device="cpu")
    for i in range(frames):
        msg = poses[stamp(i)]
        assert msg["header"]["frame_id"] == "map"
        pose = msg["pose"]["pose"]
        position = [pose["position"][k] for k in "xyz"]
        quat = [pose["orientation"][k] for k in "wxyz"]
        covariance = np.array(msg["pose"]["covariance"]).reshape(6, 6)
        assert np.linalg.norm(quat) == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_array_equal(covariance, covariance.T)
        assert np.linalg.eigvalsh(covariance).min() >= -1e-12
        expected = reference.process(rgb_frame(i), stamp_ns=stamp(i))
        np.testing.assert_allclose(position, expected.position_3, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(quat, expected.quat_wxyz_4, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(covariance, expected.covariance_66, rtol=1e-5, atol=1e-10)


def test_any_number_of_sigint_and_sigterm_stop_the_node_cleanly(tmp_path):
    """Ctrl-C under `ros2 launch` reaches the node twice (the terminal's and launch's SIGINT), and
    launch may add SIGTERM: the node stops once, in order, exits 0 and prints no traceback, wherever
    the later signals land (in the main loop, in the cleanup, or after it)."""
    model = make_checkpoint(tmp_path / "model.safetensors")
    node = start_node(model, domain_id(3))
    node.popen.send_signal(signal.SIGINT)
    node.popen.send_signal(signal.SIGINT)
    node.wait_for_line("SIGINT: stopping the node")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):  # during the cleanup or after it
        node.popen.send_signal(signum)
    assert node.popen.wait(timeout=TIMEOUT_S) == 0
    node.wait_for_line("node: received 0, processed 0")  # the final counts: the whole stderr was read
    stderr = "".join(node.lines)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.count("stopping the node") == 1


# The node's queue holds one frame (pipeline.LatestSlot); besides it, one frame can be in the worker
# and one in the image callback between being counted as received and taking its place in the queue
# (or displacing the one there), so a /diagnostics report can show at most this many frames received
# and not yet processed, dropped, rejected or ignored.
QUEUE_BOUND = 1
IN_FLIGHT_BOUND = QUEUE_BOUND + 2
BURST_FRAMES = 400
COUNTERS = ("received", "processed", "dropped", "rejected", "unpaired", "failed", "duplicate", "no_transform")


def _unaccounted(counts: dict[str, int]) -> int:
    """Frames received that are not (yet) processed, dropped, rejected, unpaired, failed or duplicates."""
    return counts["received"] - sum(counts[name] for name in COUNTERS[1:])


@pytest.mark.slow
def test_overload_drops_the_oldest_frames_with_a_bounded_queue_and_counts_every_frame(tmp_path):
    """A burst of images far faster than the node processes them (ResNet-18 at 224 px with 32
    Monte-Carlo samples on the CPU, images every 2 ms), then bad messages each followed by a good
    frame. Only counts are asserted, never times: at every /diagnostics report at most
    IN_FLIGHT_BOUND frames are unaccounted for (the queue stays bounded), drops are counted and
    reported as a warning, every image the node received is in the final counts, and the next good
    frame after each bad message is answered."""
    model = make_checkpoint(tmp_path / "model.safetensors", backbone="resnet18", resize=224, crop=224,
                            mc_samples=32)
    width, height = 320, 240
    domain = domain_id(1)
    node = start_node(model, domain, "--param", "diagnostics_period:=0.2")
    answered: set[int] = set()
    published: list[int] = []  # stamps of every publish, resends included
    reports: list[tuple[dict[str, int], Any]] = []  # (counts, status) of every /diagnostics report
    condition = threading.Condition()

    def on_pose(msg) -> None:
        with condition:
            answered.add(stamp_to_ns(msg.header.stamp))
            condition.notify_all()

    def on_diagnostics(msg) -> None:
        status = msg.status[0]
        values = {kv.key: kv.value for kv in status.values}
        with condition:
            reports.append(({name: int(values[name]) for name in COUNTERS}, status))
            condition.notify_all()

    try:
        with DdsNode("overload_test", domain_id=domain, config=loopback_config()) as dds:
            dds.subscription("/relocalized_pose", POSE_TYPE, "default", on_pose)
            dds.subscription("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", "default", on_diagnostics)
            camera = dds.publisher("/camera/image_raw", "sensor_msgs/msg/Image", "sensor_data")
            assert camera.wait_for_subscribers(1, TIMEOUT_S)
            messages = [image_msg(TYPES, rgb_frame(k, width, height), 0, "camera", "rgb8") for k in range(4)]

            def publish(msg, index: int) -> None:
                camera.publish(dataclasses.replace(msg, header=image(index).header))
                published.append(stamp(index))

            # Until the node answers a frame, so that the burst is not lost to discovery.
            send_until(lambda k: publish(messages[0], k), condition, lambda: bool(answered))
            first = len(published)
            for i in range(first, first + BURST_FRAMES):
                publish(messages[i % 4], i)
                time.sleep(0.002)  # a pace for the publisher, not a bound: nothing depends on it
            burst_end = len(published)
            with condition:  # the node drains its queue: a report with nothing left in it
                assert condition.wait_for(lambda: reports and reports[-1][0]["received"] > 0
                                          and _unaccounted(reports[-1][0]) == 0, TIMEOUT_S)
            # Then bad messages, each followed by a good frame that must be answered.
            bad = [dataclasses.replace(messages[0], encoding="xyz8"),
                   dataclasses.replace(messages[0], data=messages[0].data[:100]),
                   dataclasses.replace(messages[0], width=0, height=0, step=0, data=np.zeros(0, np.uint8))]
            for k, msg in enumerate(bad):
                rejected = reports[-1][0]["rejected"]
                index = burst_end + 2 * k
                send_until(lambda _, m=msg, i=index: publish(m, i), condition,
                           lambda r=rejected: reports[-1][0]["rejected"] > r)
                good_stamp = stamp(index + 1)
                send_until(lambda _, i=index + 1: publish(messages[1], i), condition,
                           lambda s=good_stamp: s in answered)
            with condition:
                done = len(answered)
                assert condition.wait_for(lambda: reports[-1][0]["processed"] >= done, TIMEOUT_S)
    finally:
        assert node.stop() == 0, "".join(node.lines)
    final = {key: int(value) for key, value in re.findall(r"(\w+) (\d+)", node.lines[-1])}
    print(f"\noverload: published {len(published)}, final counts {final}, {len(reports)} reports, "
          f"most unaccounted {max(_unaccounted(counts) for counts, _ in reports)}")
    # The queue stays bounded: at no report are more frames waiting than the queue and the worker hold.
    assert all(0 <= _unaccounted(counts) <= IN_FLIGHT_BOUND for counts, _ in reports)
    # Every image the node received is accounted for (none lost or left in the queue), and it
    # received no more than was published (best-effort samples may be lost on the way, not invented).
    assert set(final) == set(NodeDiagnostics.COUNTERS) and _unaccounted(final) == 0
    assert 0 < final["received"] <= len(published)
    assert answered <= set(published) and len(answered) <= final["processed"]
    # Overloaded, the node drops frames, counts them and reports them as a warning.
    assert final["dropped"] > 0 and final["processed"] < final["received"]
    warned = [status for counts, status in reports if status.level == status.WARN]
    assert any("frames dropped" in status.message for status in warned)
    # The bad messages are rejected, counted, warned about at a throttled rate; the good frame after
    # each of them was answered (above).
    assert final["rejected"] >= len(bad) and final["failed"] == 0
    warnings = [line for line in node.lines if "dropped frame" in line]
    assert 1 <= len(warnings) <= len(bad) and "xyz8" in warnings[0]


def test_rgbd_node_pairs_depth_by_stamp_and_answers_only_paired_frames(tmp_path):
    """An RGB-D model over DDS: colour and depth published by another process, paired by stamp
    (max_depth_stamp_diff 0.02 s); frames whose depth is missing or too far in time get no answer."""
    model = make_checkpoint(tmp_path / "model.safetensors", depth="dual_stream")
    domain = domain_id(2)
    refused = subprocess.run(
        [sys.executable, "-m", "posenet_ros.cli", "node", "--model", str(model), "--params", str(PARAMS),
         "--param", "device:=cpu", "--param", "use_depth:=false"],
        cwd=REPO_ROOT, env=dict(os.environ, CYCLONEDDS_URI=loopback_config(), ROS_DOMAIN_ID=str(domain)),
        capture_output=True, text=True, timeout=4 * TIMEOUT_S)
    assert refused.returncode == 2
    assert "needs a depth image with every frame: set use_depth to true" in refused.stderr

    # Depth stamp offsets in ms per frame; None: no depth at all.
    offsets: dict[int, int | None] = {0: 5, 1: -5, 2: None, 3: 0, 4: 50, 5: 15, 6: 0}
    paired = [i for i, offset in offsets.items() if offset is not None and abs(offset) <= 20]
    node = start_node(model, domain, "--param", "use_depth:=true", "--param", "max_depth_stamp_diff:=0.02")
    answers: dict[int, object] = {}
    condition = threading.Condition()

    def on_pose(msg) -> None:
        with condition:
            answers[stamp_to_ns(msg.header.stamp)] = msg
            condition.notify_all()

    try:
        with DdsNode("rgbd_test", domain_id=domain, config=loopback_config()) as dds:
            dds.subscription("/relocalized_pose", POSE_TYPE, "default", on_pose)
            camera = dds.publisher("/camera/image_raw", "sensor_msgs/msg/Image", "sensor_data")
            depth_camera = dds.publisher("/camera/depth/image_raw", "sensor_msgs/msg/Image", "sensor_data")
            assert camera.wait_for_subscribers(1, TIMEOUT_S)
            assert depth_camera.wait_for_subscribers(1, TIMEOUT_S)
            warm_up_ns = stamp(0) - 10 * 1_000_000_000  # before a gap that resets the node's stream

            def publish_warm_up(k: int) -> None:
                stamp_ns = warm_up_ns + k * 100_000_000  # further apart than the pairing slop
                camera.publish(image_msg(TYPES, rgb_frame(0), stamp_ns, "camera_optical", "rgb8"))
                depth_camera.publish(depth_msg(TYPES, depth_frame(0), stamp_ns, "camera_depth", "16UC1"))

            # Warm-up frames until the node answers one, so that no frame below is lost to discovery.
            send_until(publish_warm_up, condition, lambda: any(s < stamp(0) for s in answers))
            for i, offset in offsets.items():
                camera.publish(image(i))
                if offset is not None:
                    depth_camera.publish(depth_msg(TYPES, depth_frame(i), stamp(i) + offset * 1_000_000,
                                                   "camera_depth", "16UC1"))
                if i in paired:  # one frame at a time: the node's queue never drops one
                    with condition:
                        assert condition.wait_for(lambda i=i: stamp(i) in answers, TIMEOUT_S)
    finally:
        assert node.stop() == 0, "".join(node.lines)
    warm_ups = [s for s in answers if s < stamp(0)]
    assert sorted(answers) == [*sorted(warm_ups), *[stamp(i) for i in paired]]
    counts = {key: int(value) for key, value in re.findall(r"(\w+) (\d+)", node.lines[-1])}
    # Every image received is processed, dropped or unpaired; warm-up frames may add to each.
    assert counts["processed"] == len(paired) + len(warm_ups)
    assert counts["received"] == counts["processed"] + counts["dropped"] + counts["unpaired"]
    assert counts["unpaired"] >= 2 and counts["rejected"] == counts["failed"] == 0
    reference = Relocalizer(model, device="cpu")
    for i in paired:
        pose = answers[stamp(i)].pose.pose
        # The node decoded the 16UC1 millimetres: the same depth, rounded to mm.
        depth = np.round(depth_frame(i) * 1000.0).astype(np.float32) / 1000.0
        expected = reference.process(rgb_frame(i), depth, stamp_ns=stamp(i))
        position = [pose.position.x, pose.position.y, pose.position.z]
        np.testing.assert_allclose(position, expected.position_3, rtol=1e-5, atol=1e-6)
        without_depth = reference.process(rgb_frame(i), np.zeros((30, 40), np.float32), stamp_ns=stamp(i))
        assert np.abs(without_depth.position_3 - expected.position_3).max() > 1e-6  # depth is used


def test_settings_come_from_the_parameters_file_with_overrides(tmp_path):
    model_path = make_checkpoint(tmp_path / "model.safetensors")
    params = tmp_path / "params.yaml"
    params.write_text("relocalize_node:\n  ros__parameters:\n    image_topic: /cam/image/compressed\n"
                      "    mc_samples: 4\n    loop_closure_enter_score: -2\n")
    settings = load_settings(params, str(model_path), ["loop_closure_leave_score:=3.5"])
    assert settings.mc_samples == 4 and settings.loop_closure_enter_score == -2.0
    assert input_topics(settings)["image"].type_name == "sensor_msgs/msg/CompressedImage"
    relocalizer = build_relocalizer(dataclasses.replace(settings, device="cpu"))
    assert relocalizer.uncertainty.mc_samples == 4
    assert (relocalizer.loop_closure.enter_score, relocalizer.loop_closure.leave_score) == (-2.0, 3.5)
    assert relocalizer.loop_closure.min_frames == 2  # the checkpoint's
    with pytest.raises(ValueError, match="mc_samples"):
        load_settings(params, str(model_path), ["mc_samples:=2000"])
    with pytest.raises(ValueError, match="'model' is required"):
        load_settings(params)


def test_the_node_relocalizes_with_the_camera_info_published_beside_the_images(tmp_path):
    """A camera with other intrinsics and lens distortion than the checkpoint's training camera: the
    node subscribes to /camera/camera_info (beside /camera/image_raw) and answers each frame as
    `Relocalizer.process(camera=...)` does with that calibration, not as with the checkpoint's."""
    training_camera = Intrinsics(40, 30, 20.0, 20.0, 19.5, 14.5)
    query_camera = Intrinsics(40, 30, 16.0, 16.5, 20.0, 14.0, (-0.2, 0.03, 0.0, 0.0))
    model = make_checkpoint(tmp_path / "model.safetensors", camera=training_camera)
    domain = domain_id(4)
    node = start_node(model, domain)
    answers: dict[int, object] = {}
    condition = threading.Condition()

    def on_pose(msg) -> None:
        with condition:
            answers[stamp_to_ns(msg.header.stamp)] = msg
            condition.notify_all()

    def publish(index: int, stamp_ns: int) -> None:  # as a camera driver: the CameraInfo, then its image
        info.publish(camera_info_msg(TYPES, stamp_ns, "camera_optical", 40, 30, query_camera.matrix(),
                                     query_camera.distortion))
        camera.publish(image_msg(TYPES, rgb_frame(index), stamp_ns, "camera_optical", "rgb8"))

    frames = range(3)
    try:
        with DdsNode("camera_info_test", domain_id=domain, config=loopback_config()) as dds:
            dds.subscription("/relocalized_pose", POSE_TYPE, "default", on_pose)
            camera = dds.publisher("/camera/image_raw", "sensor_msgs/msg/Image", "sensor_data")
            info = dds.publisher("/camera/camera_info", "sensor_msgs/msg/CameraInfo", "sensor_data")
            assert camera.wait_for_subscribers(1, TIMEOUT_S) and info.wait_for_subscribers(1, TIMEOUT_S)
            # Warm-up frames (stamped 10 s before) until the node has answered one with the CameraInfo.
            used = "relocalizing with the camera calibration on /camera/camera_info"
            send_until(lambda k: publish(0, stamp(0) - 10**10 + k * 10**8), condition,
                       lambda: any(used in line for line in node.lines))
            for i in frames:
                publish(i, stamp(i))
                with condition:
                    assert condition.wait_for(lambda i=i: stamp(i) in answers, TIMEOUT_S)
    finally:
        assert node.stop() == 0, "".join(node.lines)
    reference = Relocalizer(model, device="cpu")
    for i in frames:
        pose = answers[stamp(i)].pose.pose
        position = [pose.position.x, pose.position.y, pose.position.z]
        expected = reference.process(rgb_frame(i), stamp_ns=stamp(i), camera=query_camera)
        np.testing.assert_allclose(position, expected.position_3, rtol=1e-5, atol=1e-6)
        without = reference.process(rgb_frame(i), stamp_ns=stamp(i))
        assert np.abs(without.position_3 - expected.position_3).max() > 1e-4  # the calibration is used
