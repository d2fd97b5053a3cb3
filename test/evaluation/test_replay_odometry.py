"""Odometry-aided smoothing in the node (issue 27), on a make-bag bag with a simulated odometry and a
checkpoint whose temporal model has fusion parameters: across processes over Cyclone DDS the node's
/relocalized_pose equals the in-process replay of the same bag frame by frame; with the odometry cut off
for 2 s every frame is still answered, the learned motion standing in for exactly the frames without
odometry; a nav_msgs/Odometry topic with the same poses smooths exactly as the TF odometry does; and a
temporal model without fusion parameters refuses odometry at startup."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from dds_support import PARAMS, domain_id, start_node
from node_support import make_checkpoint, odometry_msg, store_fused_temporal

from posenet_ros.core.geometry import pose_from_position_quat
from posenet_ros.evaluation.replay import read_odometry, replay, run_in_process, run_live
from posenet_ros.inference.odometry_fusion import OdometryNoise
from posenet_ros.node.dds_node import load_settings
from posenet_ros.node.pipeline import build_relocalizer
from posenet_ros.ros.bag_reading import open_bag, read_transforms, select_streams
from posenet_ros.ros.bag_writing import write_messages
from posenet_ros.ros.conversions import covariance_from_msg, pose_from_msg, stamp_to_ns
from posenet_ros.ros.dds import loopback_config
from posenet_ros.tools.make_bag import make_bag

RATE_HZ = 10.0
OUTAGE_S = (1.0, 3.0)  # seconds after the first frame without odometry
NODE = ["device:=cpu", "base_frame:=base_link", "odometry:=tf", "mc_samples:=0", "publish_unknown:=true",
        "smoothing_reset_unknown:=0", "transform_timeout:=2.0"]

# Bags, a node process and replays (about 15 s): the fast tier keeps test/node/test_odometry.py.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def robot(small_capture, tmp_path_factory):
    """A checkpoint with a temporal model and fusion parameters; bags of the test loop (40 frames at
    10 Hz) with a random-walk odometry, one of them with a 2 s outage."""
    root = tmp_path_factory.mktemp("odometry")
    model = store_fused_temporal(make_checkpoint(root / "model.safetensors"))
    bags = {}
    for name, outages in (("odometry", []), ("outage", [OUTAGE_S])):
        bags[name] = make_bag(small_capture, root / name, splits=["test"], rate_hz=RATE_HZ,
                              odometry_noise=OdometryNoise(0.02, 1.0), odometry_seed=3,
                              odometry_outages=outages, progress=False)
    return {"root": root, "model": model, "bags": bags}


def _poses(run) -> dict[int, np.ndarray]:
    """stamp -> (position, quaternion, covariance) of every /relocalized_pose a replay recorded, flat."""
    return {stamp_to_ns(msg.header.stamp):
            np.concatenate([*pose_from_msg(msg), covariance_from_msg(msg).ravel()])
            for topic, _, _, msg in run.messages if topic == "/relocalized_pose"}


def _in_process(robot, bag, *overrides):
    """The node's pipeline stepped through `bag` in this process, as `replay` runs it."""
    settings = load_settings(PARAMS, str(robot["model"]), [*NODE, "transform_timeout:=0.0", *overrides])
    with open_bag(bag) as reader:
        streams = select_streams(reader, bag)
        transforms = read_transforms(reader, bag)
        odometry = (read_odometry(reader, bag, settings.odometry, settings.odom_frame, settings.base_frame)
                    if settings.odometry not in ("none", "tf") else None)
    return run_in_process(bag, settings, streams, progress=False, transforms=transforms, odometry=odometry)


def test_the_node_over_dds_publishes_the_poses_of_the_in_process_replay(robot):
    """`replay --live`: the bag's images, /tf (odom -> base_link, moving) and /tf_static (base_link ->
    camera) played in lock-step to `posenet-ros node` in another process."""
    bag = robot["bags"]["odometry"].path
    domain = domain_id(11)
    node = start_node(robot["model"], domain, *(arg for value in NODE for arg in ("--param", value)))
    try:
        with open_bag(bag) as reader:
            streams = select_streams(reader, bag)
        live = run_live(bag, streams, domain_id=domain, config=loopback_config(), progress=False,
                        transform_topics=["/tf", "/tf_static"])
    finally:
        assert node.stop() == 0, "".join(node.lines)
    with_odometry = _in_process(robot, bag)
    assert live.counts["processed"] == with_odometry.counts["processed"] == 40
    assert live.counts["odometry_missing"] == with_odometry.counts["odometry_missing"] == 0
    live_poses, poses = _poses(live), _poses(with_odometry)
    assert sorted(live_poses) == sorted(poses) and len(poses) == 40
    for stamp in poses:
        np.testing.assert_allclose(live_poses[stamp], poses[stamp], rtol=1e-6, atol=1e-12)
    # The odometry made a difference: without it (the temporal model alone) the poses differ.
    plain = _in_process(robot, bag, "odometry:=none")
    moved = [np.abs(a.position_3 - b.position_3).max() for a, b in zip(plain.answers, with_odometry.answers,
                                                                        strict=True)]
    assert max(moved) > 1e-3


def test_an_odometry_outage_answers_every_frame_with_the_learned_motion(robot):
    summary = robot["bags"]["outage"]
    stamps = [stamp for stamp, *_ in summary.frame_stamps]
    elapsed = [(stamp - stamps[0]) / 1e9 for stamp in stamps]
    without = sum(OUTAGE_S[0] <= t < OUTAGE_S[1] for t in elapsed)
    assert without == 20
    run = _in_process(robot, summary.path)
    assert len(run.answers) == 40 and run.counts["processed"] == 40 and run.counts["no_transform"] == 0
    # The frames in the outage (the first after it is moved on by the odometry since the last before).
    assert run.counts["odometry_missing"] == without
    complete = _in_process(robot, robot["bags"]["odometry"].path)
    assert complete.counts["odometry_missing"] == 0
    # Before the outage the same odometry, the same poses.
    before = sum(t < OUTAGE_S[0] for t in elapsed)
    for a, b in zip(run.answers[:before], complete.answers[:before], strict=True):
        np.testing.assert_array_equal(a.position_3, b.position_3)


def _with_odometry_topic(source, out) -> None:
    """`source` with every odom -> base_link of its /tf also as a nav_msgs/Odometry on /odom (same pose
    and stamp, child_frame_id left empty as many drivers do) and no odom -> base_link on /tf."""
    messages = []
    with open_bag(source) as reader:
        for connection, log_ns, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            if connection.topic == "/tf":
                for t in [t for t in msg.transforms if t.child_frame_id == "base_link"]:
                    messages.append(("/odom", "nav_msgs/msg/Odometry", log_ns, odometry_msg(
                        stamp_to_ns(t.header.stamp), pose_from_position_quat(*pose_from_msg(t)),
                        child_frame_id="")))
                msg = dataclasses.replace(msg, transforms=[t for t in msg.transforms
                                                           if t.child_frame_id != "base_link"])
            messages.append((connection.topic, connection.msgtype, log_ns, msg))
    write_messages(out, messages, storage="mcap")


def test_an_odometry_topic_smooths_as_the_tf_odometry(robot):
    source = robot["bags"]["outage"].path
    bag = robot["root"] / "odom_topic"
    _with_odometry_topic(source, bag)
    by_topic, by_tf = _in_process(robot, bag, "odometry:=/odom"), _in_process(robot, source)
    assert by_topic.counts["odometry_missing"] == by_tf.counts["odometry_missing"] == 20
    topic_poses, tf_poses = _poses(by_topic), _poses(by_tf)
    assert sorted(topic_poses) == sorted(tf_poses) and len(tf_poses) == 40
    for stamp in tf_poses:
        # (the Odometry messages were built through a 4x4: the same poses to rounding)
        np.testing.assert_allclose(topic_poses[stamp], tf_poses[stamp], rtol=1e-9, atol=1e-12)


def test_replay_reports_the_smoothing_and_falls_back_without_the_bags_odometry(robot, caplog):
    bag = robot["bags"]["odometry"].path
    metrics = replay(bag, robot["root"] / "replay", load_settings(PARAMS, str(robot["model"]), NODE),
                     progress=False)
    assert metrics["smoothing"] == "causal with odometry" and metrics["odometry_missing"] == 0
    without = replay(bag, robot["root"] / "replay_no_topic",
                     load_settings(PARAMS, str(robot["model"]), [*NODE, "odometry:=/odom"]), progress=False)
    assert without["smoothing"] == "causal" and without["processed"] == 40
    assert "has no odometry topic /odom (nav_msgs/msg/Odometry): replaying with odometry none" in caplog.text


def test_odometry_with_a_temporal_model_without_fusion_parameters_is_refused(robot, tmp_path):
    model = store_fused_temporal(make_checkpoint(tmp_path / "model.safetensors"), fusion=False)
    settings = load_settings(PARAMS, str(model), NODE)
    with pytest.raises(ValueError, match=r"no fusion parameters .* run `posenet-ros train-temporal` again"):
        build_relocalizer(settings)
    build_relocalizer(dataclasses.replace(settings, odometry="none"))  # as before
