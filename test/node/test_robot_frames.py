"""REP-105 frames in the node's pipeline (node/robot_frames.py through pipeline.py), in one process
with a real Relocalizer and real TF messages: the base pose and its transported covariance, map -> odom
post-dated and consistent with odometry and the camera extrinsic, the map -> camera mode, frames
dropped, counted and warned about when the camera extrinsic is missing or stale, and answered without
map -> odom when only the odometry is."""

from __future__ import annotations

import numpy as np
import pytest
from node_support import (
    BASE_FROM_CAMERA,
    TYPES,
    ListLog,
    image,
    make_checkpoint,
    odom_from_base,
    rgb_frame,
    stamp,
)
from node_support import transform as tf

from posenet_ros.core.covariance_transport import transport_covariance
from posenet_ros.core.geometry import pose_from_position_quat
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.node.pipeline import RelocalizationPipeline, build_relocalizer, input_topics
from posenet_ros.ros.conversions import covariance_from_msg, pose_from_msg, stamp_to_ns, tf_message
from posenet_ros.runtime.relocalizer import Relocalizer


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("robot_frames") / "model.safetensors")


def make_pipeline(model_path, **values):
    """A pipeline publishing into a list, every pose (publish_unknown: the pose policy has its own tests),
    no camera_info (the query camera has its own tests)."""
    sent: list[tuple[str, object]] = []
    log = ListLog()
    settings = NodeSettings.from_values({"model": str(model_path), "device": "cpu", "transform_timeout": 0.0,
                                         "publish_unknown": True, "camera_info_topic": "", **values})
    pipeline = RelocalizationPipeline(settings, build_relocalizer(settings), TYPES,
                                      lambda name, msg: sent.append((name, msg)), log, clock=lambda: 100.0)
    return pipeline, sent, log


def outputs(sent, name):
    return [msg for key, msg in sent if key == name]


def test_the_base_pose_its_covariance_and_map_to_odom_match_the_camera_estimate(model_path):
    pipeline, sent, _ = make_pipeline(model_path, publish_tf=True, transform_tolerance=0.5)
    pipeline.on_tf_static(tf_message(TYPES, [tf("base_link", "camera_optical", 0, BASE_FROM_CAMERA)]))
    reference = Relocalizer(model_path, device="cpu")
    for i in range(3):
        pipeline.on_tf(tf_message(TYPES, [tf("odom", "base_link", stamp(i), odom_from_base(i))]))
        pipeline.on_image(image(i))
        assert pipeline.process_next(timeout=0) is not None
    poses, camera_poses, transforms = outputs(sent, "pose"), outputs(sent, "camera_pose"), outputs(sent, "tf")
    assert len(poses) == len(camera_poses) == len(transforms) == 3
    for i in range(3):
        expected = reference.process(rgb_frame(i), stamp_ns=stamp(i))
        map_from_camera = pose_from_position_quat(expected.position_3, expected.quat_wxyz_4)
        # The camera's own pose, unchanged, on its topic.
        position, quat = pose_from_msg(camera_poses[i])
        np.testing.assert_allclose(position, expected.position_3, atol=1e-9)
        np.testing.assert_allclose(quat, expected.quat_wxyz_4, atol=1e-9)
        np.testing.assert_allclose(covariance_from_msg(camera_poses[i]), expected.covariance_66, atol=1e-12)
        # relocalized_pose: the base in the map, its covariance carried by the lever arm.
        assert poses[i].header.frame_id == "map" and stamp_to_ns(poses[i].header.stamp) == stamp(i)
        map_from_base = pose_from_position_quat(*pose_from_msg(poses[i]))
        np.testing.assert_allclose(map_from_base @ BASE_FROM_CAMERA, map_from_camera, atol=1e-9)
        np.testing.assert_allclose(covariance_from_msg(poses[i]), transport_covariance(
            expected.covariance_66, map_from_camera, np.linalg.inv(BASE_FROM_CAMERA)), rtol=1e-9, atol=1e-12)
        assert not np.allclose(covariance_from_msg(poses[i]), expected.covariance_66, atol=1e-6)
        # map -> odom, post-dated by transform_tolerance, closes the chain to the camera.
        (transform,) = transforms[i].transforms
        assert (transform.header.frame_id, transform.child_frame_id) == ("map", "odom")
        assert stamp_to_ns(transform.header.stamp) == stamp(i) + 500_000_000
        map_from_odom = pose_from_position_quat(*pose_from_msg(transform))
        np.testing.assert_allclose(map_from_odom @ odom_from_base(i) @ BASE_FROM_CAMERA, map_from_camera,
                                   atol=1e-9)
    assert pipeline.diagnostics.counts["processed"] == 3 and pipeline.diagnostics.counts["no_transform"] == 0


def test_a_missing_or_stale_transform_drops_the_frame_counts_and_names_the_link(model_path):
    pipeline, sent, log = make_pipeline(model_path, publish_tf=True)
    pipeline.on_image(image(0))  # no TF at all
    assert pipeline.process_next(timeout=0) is None
    pipeline.on_image(image(1))
    assert pipeline.process_next(timeout=0) is None
    assert pipeline.diagnostics.counts["no_transform"] == 2 and not outputs(sent, "pose")
    (warning,) = [line for level, line in log.lines
                  if level == "warning" and "no transform" in line]  # throttled: one warning
    assert "dropped frame" in warning and "camera_optical" in warning and "base_link" in warning
    assert "a camera without a robot: base_frame '' publishes its pose, no TF" in warning
    # The extrinsic arrives and odometry up to frame 2; frame 2 is answered with map -> odom. Frame 3 is
    # newer than the odometry (stale): its pose needs only the extrinsic, so it is answered too, without
    # a map -> odom transform (counted and warned about, naming the link).
    pipeline.on_tf_static(tf_message(TYPES, [tf("base_link", "camera_optical", 0, BASE_FROM_CAMERA)]))
    pipeline.on_tf(tf_message(TYPES, [tf("odom", "base_link", stamp(i), odom_from_base(i)) for i in (1, 2)]))
    pipeline.on_image(image(2))
    assert pipeline.process_next(timeout=0) is not None
    pipeline.on_image(image(3))
    assert pipeline.process_next(timeout=0) is not None
    assert pipeline.diagnostics.counts["no_transform"] == 2
    assert pipeline.diagnostics.counts["no_map_odom"] == 1
    assert [stamp_to_ns(p.header.stamp) for p in outputs(sent, "pose")] == [stamp(2), stamp(3)]
    assert [stamp_to_ns(t.header.stamp) - 1_000_000_000 for msg in outputs(sent, "tf")
            for t in msg.transforms] == [stamp(2)]
    (map_odom_warning,) = [line for level, line in log.lines if level == "warning" and "map -> odom" in line]
    assert "odom -> base_link" in map_odom_warning and "stale" in map_odom_warning
    figures = pipeline.diagnostics.snapshot()
    assert figures["dropped_in_period"] == 2
    # A bad transform is rejected and counted; the buffer keeps working.
    bad = tf("odom", "base_link", stamp(4), odom_from_base(4))
    bad.transform.rotation.w = 0.0
    bad.transform.rotation.x = bad.transform.rotation.y = bad.transform.rotation.z = 0.0
    pipeline.on_tf(tf_message(TYPES, [bad]))
    assert pipeline.diagnostics.counts["rejected"] == 1


def test_without_a_base_frame_the_camera_pose_is_published_and_map_camera_needs_no_tf(model_path):
    pipeline, sent, _ = make_pipeline(model_path, base_frame="", publish_tf=True, tf_mode="map_camera",
                                      camera_frame="cam")
    assert set(input_topics(pipeline.settings)) == {"image", "reset", "relocalize"}
    pipeline.on_image(image(0))
    estimate = pipeline.process_next(timeout=0)
    assert estimate is not None
    (pose,) = outputs(sent, "pose")
    np.testing.assert_allclose(pose_from_msg(pose)[0], estimate.position_3, atol=1e-12)
    np.testing.assert_allclose(covariance_from_msg(pose), estimate.covariance_66, atol=1e-15)
    ((transform,),) = [msg.transforms for msg in outputs(sent, "tf")]
    assert (transform.header.frame_id, transform.child_frame_id) == ("map", "cam")
    assert stamp_to_ns(transform.header.stamp) == stamp(0)


def test_tf_topics_are_subscribed_when_needed_and_map_odom_needs_a_base_frame():
    settings = NodeSettings.from_values({"model": "m"})
    topics = input_topics(settings)
    assert (topics["tf"].name, topics["tf"].qos) == ("/tf", "default")
    assert (topics["tf_static"].name, topics["tf_static"].qos) == ("/tf_static", "transient_local")
    with pytest.raises(ValueError, match="tf_mode 'map_odom' needs base_frame and odom_frame"):
        NodeSettings.from_values({"model": "m", "publish_tf": True, "base_frame": ""})
    with pytest.raises(ValueError, match=r"tf_mode 'map_camera' would give the camera frame a second parent "
                                         r"\(map, besides base_link\)"):
        NodeSettings.from_values({"model": "m", "publish_tf": True, "tf_mode": "map_camera"})
    with pytest.raises(ValueError, match="'tf_mode' must be one of map_odom, map_camera"):
        NodeSettings.from_values({"model": "m", "tf_mode": "odom"})
