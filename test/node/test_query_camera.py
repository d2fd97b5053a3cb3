"""node/query_camera.py in the pipeline, with a real Relocalizer and real CameraInfo messages: the
camera_info topic beside the image topic is subscribed; a frame is relocalized with the latest
CameraInfo (as `Relocalizer.process(camera=...)` does); invalid CameraInfos and ones of another size
are dropped, counted and warned about while the last good calibration goes on; without any, the
checkpoint's camera is used with a one-time warning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from node_support import TYPES, ListLog, image, make_checkpoint, rgb_frame, stamp

from posenet_ros.core.camera import Intrinsics
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.node.pipeline import RelocalizationPipeline, build_relocalizer, input_topics
from posenet_ros.ros.conversions import camera_info_msg
from posenet_ros.runtime.relocalizer import Relocalizer

TRAINING_CAMERA = Intrinsics(40, 30, 20.0, 20.0, 19.5, 14.5)
QUERY_CAMERA = Intrinsics(40, 30, 16.0, 16.5, 20.0, 14.0, (-0.2, 0.03, 0.0, 0.0))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("query_camera") / "model.safetensors",
                           camera=TRAINING_CAMERA)


def make_pipeline(model_path, **values):
    """A pipeline of the camera's pose (no TF), every pose published."""
    settings = NodeSettings(model=str(model_path), device="cpu",
                            **{"base_frame": "", "publish_unknown": True, **values})
    log = ListLog()
    pipeline = RelocalizationPipeline(settings, build_relocalizer(settings), TYPES, lambda *_: None, log)
    return pipeline, log


def info(camera: Intrinsics, **fields) -> object:
    msg = camera_info_msg(TYPES, stamp(0), "camera_optical", camera.width, camera.height, camera.matrix(),
                          camera.distortion)
    return dataclasses.replace(msg, **fields)


def answer(pipeline, index: int):
    pipeline.on_image(image(index))
    estimate = pipeline.process_next(timeout=0)
    assert estimate is not None and estimate.stamp_ns == stamp(index)
    return estimate.position_3


def warnings(log: ListLog) -> list[str]:
    return [line for level, line in log.lines if level == "warning"]


def test_the_camera_info_topic_beside_the_image_topic_is_subscribed(model_path):
    topics = input_topics(NodeSettings(model="m", image_topic="/front/image_raw/compressed"))
    assert (topics["camera_info"].name, topics["camera_info"].type_name, topics["camera_info"].qos) == (
        "/front/camera_info", "sensor_msgs/msg/CameraInfo", "sensor_data")
    assert input_topics(NodeSettings(model="m", camera_info_topic="/calib"))["camera_info"].name == "/calib"
    assert "camera_info" not in input_topics(NodeSettings(model="m", camera_info_topic=""))


def test_frames_use_the_latest_camera_info_and_keep_the_last_good_one(model_path):
    pipeline, log = make_pipeline(model_path)
    reference = Relocalizer(model_path, device="cpu")
    pipeline.on_camera_info(info(QUERY_CAMERA))
    with_camera = answer(pipeline, 0)
    np.testing.assert_allclose(with_camera, reference.process(rgb_frame(0), stamp_ns=stamp(0),
                                                              camera=QUERY_CAMERA).position_3, atol=1e-6)
    without = reference.process(rgb_frame(0), stamp_ns=stamp(0)).position_3
    assert np.abs(with_camera - without).max() > 1e-4  # the calibration is used
    assert any("camera calibration on /camera/camera_info" in line for _, line in log.lines)
    assert pipeline.publish_diagnostics()["camera_info_rejected"] == 0
    assert pipeline.query_camera.source == "camera_info"  # /diagnostics value "camera"

    # Invalid messages (zero K, a D of the wrong length, an unknown model) are dropped and counted when
    # they arrive; one of another size when a frame needs it, once. The last good calibration goes on.
    pipeline.on_camera_info(info(QUERY_CAMERA, k=np.zeros(9)))
    pipeline.on_camera_info(info(QUERY_CAMERA, d=np.zeros(3) + 0.1))
    pipeline.on_camera_info(info(QUERY_CAMERA, distortion_model="fisheye"))
    assert pipeline.diagnostics.counts["camera_info_rejected"] == 3
    assert len(warnings(log)) == 1 and "not a pinhole matrix" in warnings(log)[0]  # throttled
    np.testing.assert_allclose(answer(pipeline, 1), reference.process(
        rgb_frame(1), stamp_ns=stamp(1), camera=QUERY_CAMERA).position_3, atol=1e-6)
    pipeline.on_camera_info(info(QUERY_CAMERA.resized(80, 60)))
    for index in (2, 3):
        np.testing.assert_allclose(answer(pipeline, index), reference.process(
            rgb_frame(index), stamp_ns=stamp(index), camera=QUERY_CAMERA).position_3, atol=1e-6)
    assert pipeline.diagnostics.counts["camera_info_rejected"] == 4
    assert "for 80x60 px images, the image is 40x30 px" in warnings(log)[-1]
    assert pipeline.diagnostics.counts["processed"] == 4


@pytest.mark.parametrize("topic", ["auto", ""])
def test_without_camera_info_the_checkpoints_camera_is_used_with_one_warning(model_path, topic):
    pipeline, log = make_pipeline(model_path, camera_info_topic=topic)
    reference = Relocalizer(model_path, device="cpu")
    for index in (0, 1):
        np.testing.assert_allclose(answer(pipeline, index), reference.process(
            rgb_frame(index), stamp_ns=stamp(index)).position_3, atol=1e-6)
    assert len(warnings(log)) == 1 and "pinhole images of the checkpoint's camera" in warnings(log)[0]
    assert pipeline.publish_diagnostics()["camera_info_rejected"] == 0
    assert pipeline.query_camera.source == "checkpoint"
