"""The relocalization node over Cyclone DDS on loopback, in separate processes started through the
CLI as a user starts them: `posenet-ros play` -> `posenet-ros node` -> `posenet-ros echo`; then the
node under overload and fed bad messages.

Cross-process waits use readiness lines and generous timeouts, never fixed sleeps. The overload test
is about timing by nature; its bounds are set far from what a correct node shows (latency stays
near one frame's processing time while an unbounded queue would grow it by seconds).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

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

from posenet_ros.node.dds_node import load_settings
from posenet_ros.node.pipeline import build_relocalizer, input_topics
from posenet_ros.ros.conversions import depth_msg, image_msg, stamp_to_ns
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



def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from /proc")
def test_overload_keeps_latency_and_memory_bounded_and_bad_messages_are_counted(tmp_path):
    """Images at 5x the node's throughput for 20 s, then bad messages each followed by a good frame."""
    model = make_checkpoint(tmp_path / "model.safetensors", backbone="resnet18", resize=224, crop=224,
                            mc_samples=32)
    width, height = 320, 240
    relocalizer = Relocalizer(model, device="cpu")
    frame = rgb_frame(0, width, height)
    durations = []
    for i in range(6):
        start = time.perf_counter()
        relocalizer.process(frame, stamp_ns=i)
        durations.append(time.perf_counter() - start)
    period_s = float(np.median(durations[1:])) / 5.0  # 5x the node's throughput
    del relocalizer
    domain = domain_id(1)
    node = start_node(model, domain, "--param", "diagnostics_period:=0.5")
    sent_at: dict[int, float] = {}
    answered_at: dict[int, float] = {}
    diagnostics: list[dict[str, str]] = []
    condition = threading.Condition()

    def on_pose(msg) -> None:
        with condition:
            answered_at[stamp_to_ns(msg.header.stamp)] = time.monotonic()
            condition.notify_all()

    def on_diagnostics(msg) -> None:
        with condition:
            diagnostics.append({kv.key: kv.value for kv in msg.status[0].values})
            condition.notify_all()

    try:
        with DdsNode("overload_test", domain_id=domain, config=loopback_config()) as dds:
            dds.subscription("/relocalized_pose", POSE_TYPE, "default", on_pose)
            dds.subscription("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", "default", on_diagnostics)
            camera = dds.publisher("/camera/image_raw", "sensor_msgs/msg/Image", "sensor_data")
            assert camera.wait_for_subscribers(1, TIMEOUT_S)
            messages = [image_msg(TYPES, rgb_frame(k, width, height), 0, "camera", "rgb8") for k in range(4)]
            start = time.monotonic()
            rss_start, i = None, 0
            while (now := time.monotonic()) < start + 20.0:
                msg = dataclasses.replace(messages[i % 4], header=image(i).header)
                sent_at[stamp(i)] = now
                camera.publish(msg)
                i += 1
                if rss_start is None and now > start + 5.0:
                    rss_start = _rss_mb(node.popen.pid)
                time.sleep(max(0.0, start + i * period_s - time.monotonic()))
            rss_end = _rss_mb(node.popen.pid)
            sent = i
            # Then bad messages, each followed by a good frame that must be answered.
            with condition:
                condition.wait_for(lambda: len(diagnostics) > 0, TIMEOUT_S)
            bad = [dataclasses.replace(messages[0], encoding="xyz8"),
                   dataclasses.replace(messages[0], data=messages[0].data[:100]),
                   dataclasses.replace(messages[0], width=0, height=0, step=0, data=np.zeros(0, np.uint8))]
            for k, msg in enumerate(bad):
                rejected = int(diagnostics[-1]["rejected"])
                bad_msg = dataclasses.replace(msg, header=image(sent + 2 * k).header)
                send_until(lambda _, m=bad_msg: camera.publish(m), condition,
                            lambda r=rejected: bool(diagnostics) and int(diagnostics[-1]["rejected"]) > r)
                good = dataclasses.replace(messages[1], header=image(sent + 2 * k + 1).header)
                good_stamp = stamp(sent + 2 * k + 1)
                send_until(lambda _, m=good: camera.publish(m), condition,
                            lambda s=good_stamp: s in answered_at)
            with condition:
                processed = len(answered_at)
                condition.wait_for(lambda: int(diagnostics[-1]["processed"]) >= processed, TIMEOUT_S)
                final = diagnostics[-1]
    finally:
        assert node.stop() == 0, "".join(node.lines)
    latencies = np.array([answered_at[s] - sent_at[s] for s in answered_at
                          if s in sent_at and sent_at[s] > start + 5])
    answered = sum(s in sent_at for s in answered_at)
    print(f"\noverload: frame period {1e3 * period_s:.1f} ms (5x throughput), sent {sent}, "
          f"answered {answered}, "
          f"latency p50 {1e3 * np.median(latencies):.0f} ms max {1e3 * latencies.max():.0f} ms, "
          f"RSS {rss_start:.0f} -> {rss_end:.0f} MB, diagnostics {final}")
    # The node works on the newest frames: most are dropped, and latency stays near one frame's
    # processing time instead of growing with the backlog (it would reach ~15 s over 20 s).
    assert answered < sent / 2
    assert int(final["dropped"]) > sent / 3
    assert latencies.size > 10 and latencies.max() < 2.0
    assert rss_end - rss_start < 50.0
    assert int(final["rejected"]) >= len(bad)
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
