"""evaluation/replay.py with a robot's TF in the bag, on a small bag written here (fast): the
in-process replay looks base <- camera and odom <- base up in the bag's transforms, and offline
smoothing moves the published base pose and map -> odom with the smoothed camera pose."""

from __future__ import annotations

import numpy as np
from node_support import (
    BASE_FROM_CAMERA,
    TYPES,
    image,
    make_checkpoint,
    odom_from_base,
    random_temporal,
    stamp,
    transform,
)

from posenet_ros.core.covariance_transport import transport_covariance
from posenet_ros.core.geometry import pose_from_position_quat
from posenet_ros.evaluation.replay import run_in_process
from posenet_ros.inference.temporal import TemporalCalibration
from posenet_ros.node.dds_node import load_settings
from posenet_ros.ros.bag_reading import open_bag, read_transforms, select_streams
from posenet_ros.ros.bag_writing import write_messages
from posenet_ros.ros.conversions import covariance_from_msg, pose_from_msg, tf_message
from posenet_ros.runtime.checkpoint import load_model, store_temporal

FRAMES = 8
TF = "tf2_msgs/msg/TFMessage"


def _robot_bag(path) -> None:
    extrinsic = transform("base_link", "camera_optical", stamp(0), BASE_FROM_CAMERA)
    messages = [("/tf_static", TF, stamp(0), tf_message(TYPES, [extrinsic]))]
    for i in range(FRAMES):
        messages.append(("/tf", TF, stamp(i), tf_message(TYPES, [transform("odom", "base_link", stamp(i),
                                                                           odom_from_base(i))])))
        messages.append(("/camera/image_raw", "sensor_msgs/msg/Image", stamp(i), image(i)))
    write_messages(path, messages, storage="mcap")


def _published(run, topic: str) -> dict[int, object]:
    return {stamp_ns: msg for name, _, stamp_ns, msg in run.messages if name == topic}


def test_offline_smoothing_moves_the_base_pose_and_map_to_odom_with_the_camera(tmp_path):
    path = make_checkpoint(tmp_path / "model.safetensors")
    store_temporal(path, random_temporal(0, load_model(path).model.head_dim), {
        "config": {"hidden": 16, "feature_dim": 0}, "calibration": vars(TemporalCalibration())})
    bag = tmp_path / "bag"
    _robot_bag(bag)
    settings = load_settings(None, str(path), ["device:=cpu", "publish_tf:=true", "transform_timeout:=0.0",
                                               "mc_samples:=0", "publish_unknown:=true"])
    with open_bag(bag) as reader:
        streams = select_streams(reader, bag)
        transforms = read_transforms(reader, bag)
    runs = {smoothing: run_in_process(bag, settings, streams, offline_smoothing=smoothing, progress=False,
                                      transforms=transforms) for smoothing in (False, True)}
    per_frame, smoothed = runs[False], runs[True]
    assert len(smoothed.answers) == FRAMES and smoothed.counts["no_transform"] == 0
    moved = [np.abs(a.position_3 - b.position_3).max() for a, b in zip(per_frame.answers, smoothed.answers,
                                                                        strict=True)]
    assert max(moved) > 1e-4  # the smoother changed the camera poses
    camera_poses, poses = _published(smoothed, "/relocalization/camera_pose"), _published(smoothed,
                                                                                          "/relocalized_pose")
    transforms_by_stamp = _published(smoothed, "/tf")
    for i, answer in enumerate(smoothed.answers):
        map_from_camera = pose_from_position_quat(answer.position_3, answer.quat_wxyz_4)
        published_camera = pose_from_position_quat(*pose_from_msg(camera_poses[stamp(i)]))
        np.testing.assert_allclose(published_camera, map_from_camera, atol=1e-12)
        map_from_base = pose_from_position_quat(*pose_from_msg(poses[stamp(i)]))
        np.testing.assert_allclose(map_from_base @ BASE_FROM_CAMERA, map_from_camera, atol=1e-9)
        np.testing.assert_allclose(covariance_from_msg(poses[stamp(i)]), transport_covariance(
            answer.covariance_66, map_from_camera, np.linalg.inv(BASE_FROM_CAMERA)), atol=1e-12)
        (map_odom,) = transforms_by_stamp[stamp(i)].transforms
        map_from_odom = pose_from_position_quat(*pose_from_msg(map_odom))
        np.testing.assert_allclose(map_from_odom @ odom_from_base(i) @ BASE_FROM_CAMERA, map_from_camera,
                                   atol=1e-9)


def test_read_transforms_of_a_bag_without_tf_is_empty_and_ignores_other_topics(tmp_path):
    bag = tmp_path / "bag"
    write_messages(bag, [("/camera/image_raw", "sensor_msgs/msg/Image", stamp(0), image(0))], storage="mcap")
    with open_bag(bag) as reader:
        assert read_transforms(reader, bag).frames() == set()
    robot = tmp_path / "robot"
    _robot_bag(robot)
    with open_bag(robot) as reader:
        assert read_transforms(reader, robot).frames() == {"odom", "base_link", "camera_optical"}
