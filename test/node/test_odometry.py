"""node/odometry.py through the pipeline, in one process with a real Relocalizer whose temporal model has
fusion parameters: the odometry odom -> base at each frame's stamp (stale stamps and gaps refused), the
nav_msgs/Odometry subscription, bad odometry messages rejected and counted, frames without odometry
answered with the learned motion and counted, and the odometry buffer fed from /tf when the TF lookups
go elsewhere (the rclpy node's tf2)."""

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
    odometry_msg,
    stamp,
    store_fused_temporal,
    transform,
)

from posenet_ros.node.odometry import OdometryTracker, add_odometry_message
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.node.pipeline import RelocalizationPipeline, build_relocalizer, input_topics
from posenet_ros.ros.conversions import tf_message
from posenet_ros.ros.tf_buffer import TransformBuffer


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return store_fused_temporal(make_checkpoint(tmp_path_factory.mktemp("odometry") / "model.safetensors",
                                                mc_samples=0))


def make_pipeline(model_path, transforms=None, **values):
    sent: list[tuple[str, object]] = []
    log = ListLog()
    settings = NodeSettings.from_values({"model": str(model_path), "device": "cpu", "transform_timeout": 0.0,
                                         "publish_unknown": True, "camera_info_topic": "",
                                         "smoothing_reset_unknown": 0, **values})
    pipeline = RelocalizationPipeline(settings, build_relocalizer(settings), TYPES,
                                      lambda name, msg: sent.append((name, msg)), log, clock=lambda: 100.0,
                                      transforms=transforms)
    return pipeline, sent, log


def test_the_tracker_gives_the_odometry_at_a_frame_and_refuses_stale_stamps_and_gaps():
    buffer = TransformBuffer()
    for i in range(3):
        buffer.add(transform("odom", "base_link", stamp(i), odom_from_base(i)))
    tracker = OdometryTracker(buffer, "odom", "base_link", max_gap_s=0.5)
    step = tracker.lookup(stamp(1), BASE_FROM_CAMERA)
    assert step.problem == ""
    np.testing.assert_allclose(step.odometry.odom_from_base, odom_from_base(1), atol=1e-12)
    np.testing.assert_allclose(step.odometry.base_from_cam, BASE_FROM_CAMERA)
    stale = tracker.lookup(stamp(3), BASE_FROM_CAMERA)  # newer than the odometry
    assert stale.odometry is None and "stale" in stale.problem
    buffer.add(transform("odom", "base_link", stamp(20), odom_from_base(20)))
    in_gap = tracker.lookup(stamp(10), BASE_FROM_CAMERA)
    assert in_gap.odometry is None and "gap" in in_gap.problem
    assert tracker.lookup(stamp(20), BASE_FROM_CAMERA).odometry is not None


def test_odometry_messages_are_checked_before_they_are_used():
    buffer = TransformBuffer()
    unnamed = odometry_msg(stamp(0), odom_from_base(0), child_frame_id="")  # as many drivers leave it
    add_odometry_message(buffer, unnamed, "odom", "base_link")
    np.testing.assert_allclose(buffer.lookup("odom", "base_link", stamp(0)), odom_from_base(0), atol=1e-12)
    with pytest.raises(ValueError, match="child_frame_id is 'base_footprint', not 'base_link'"):
        add_odometry_message(buffer, odometry_msg(stamp(1), odom_from_base(1),
                                                  child_frame_id="base_footprint"), "odom", "base_link")
    nan = odometry_msg(stamp(1), odom_from_base(1))
    nan.pose.pose.position.x = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        add_odometry_message(buffer, nan, "odom", "base_link")


def test_the_odometry_topic_is_subscribed_and_a_bad_message_costs_only_the_odometry(model_path):
    pipeline, sent, log = make_pipeline(model_path, odometry="/odom")
    topic = input_topics(pipeline.settings)["odometry"]
    assert (topic.name, topic.type_name, topic.qos) == ("/odom", "nav_msgs/msg/Odometry", "sensor_data")
    assert ("info", "smoothing with odometry from /odom") in log.lines
    pipeline.on_tf_static(tf_message(TYPES, [transform("base_link", "camera_optical", 0, BASE_FROM_CAMERA)]))
    for i in range(4):
        msg = odometry_msg(stamp(i), odom_from_base(i))
        if i == 2:
            msg.pose.pose.orientation.w = float("nan")
        pipeline.on_odometry(msg)
        pipeline.on_image(image(i))
        estimate = pipeline.process_next(timeout=0)
        # frame 3's odometry moves the filter on from frame 1, the last frame that had odometry
        assert estimate is not None and estimate.odometry_fallback == (i == 2)
    counts = pipeline.diagnostics.counts
    assert counts["odometry_rejected"] == 1 and counts["odometry_missing"] == 1 and counts["processed"] == 4
    assert len([msg for name, msg in sent if name == "pose"]) == 4
    warnings = [line for level, line in log.lines if level == "warning"]
    assert any("ignored a message on /odom" in line and "not finite" in line for line in warnings)
    assert any("no odometry for frame" in line and "smoothed with the learned motion" in line
               for line in warnings)


def test_with_tf_lookups_elsewhere_the_odometry_buffer_is_fed_from_tf(model_path):
    """The rclpy node hands its tf2 lookups in; the odometry is looked up in the pipeline's own buffer,
    which its /tf and /tf_static subscriptions feed (`takes_tf`)."""
    lookups = TransformBuffer()  # stands for tf2's Buffer here: fed separately
    pipeline, _, _ = make_pipeline(model_path, transforms=lookups, odometry="tf")
    assert pipeline.takes_tf and pipeline.odometry_buffer is not lookups
    extrinsic = tf_message(TYPES, [transform("base_link", "camera_optical", 0, BASE_FROM_CAMERA)])
    lookups.add_message(extrinsic, static=True)
    for i in range(3):
        pipeline.on_tf(tf_message(TYPES, [transform("odom", "base_link", stamp(i), odom_from_base(i))]))
        pipeline.on_image(image(i))
        assert pipeline.process_next(timeout=0) is not None
    assert pipeline.diagnostics.counts["odometry_missing"] == 0
    np.testing.assert_allclose(pipeline.odometry_buffer.lookup("odom", "base_link", stamp(1)),
                               odom_from_base(1), atol=1e-12)
    plain, _, _ = make_pipeline(model_path, transforms=lookups)
    assert not plain.takes_tf and plain.odometry is None


def test_odometry_without_a_temporal_model_is_unused_with_a_warning(tmp_path):
    pipeline, _, log = make_pipeline(make_checkpoint(tmp_path / "model.safetensors"), odometry="tf")
    assert pipeline.odometry is None
    assert any(level == "warning" and "odometry tf is not used" in line and "has no temporal model" in line
               for level, line in log.lines)


class RecordingBuffer:
    """A TransformBuffer that records the timeout of every lookup."""

    def __init__(self, buffer):
        self.buffer, self.timeouts = buffer, []

    def lookup(self, target, source, stamp_ns, timeout_s=0.0, **kwargs):
        self.timeouts.append(timeout_s)
        return self.buffer.lookup(target, source, stamp_ns, timeout_s, **kwargs)


def test_a_frame_in_an_odometry_outage_waits_for_odom_to_base_once(model_path):
    """With publish_tf (map -> odom), a frame's odom -> base is looked up in TF for map -> odom and, with
    odometry tf, in the odometry's buffer: after the first lookup waited transform_timeout in vain the
    second does not wait again (live, two waits per frame in an outage halved the frames answered)."""
    lookups = RecordingBuffer(TransformBuffer())  # stands for tf2's Buffer
    pipeline, _, _ = make_pipeline(model_path, transforms=lookups, odometry="tf", publish_tf=True,
                                   transform_timeout=0.05)
    odometry = pipeline.odometry.buffer = RecordingBuffer(pipeline.odometry.buffer)
    extrinsic = tf_message(TYPES, [transform("base_link", "camera_optical", 0, BASE_FROM_CAMERA)])
    lookups.buffer.add_message(extrinsic, static=True)
    for i in range(4):
        if i < 2:  # the odometry stops after frame 1
            odom = tf_message(TYPES, [transform("odom", "base_link", stamp(i), odom_from_base(i))])
            lookups.buffer.add_message(odom)
            pipeline.on_tf(odom)
        pipeline.on_image(image(i))
        assert pipeline.process_next(timeout=0) is not None
    counts = pipeline.diagnostics.counts
    assert counts["processed"] == 4 and counts["no_map_odom"] == 2 and counts["odometry_missing"] == 2
    assert lookups.timeouts == [0.05] * 8  # base <- camera and odom <- base per frame
    assert odometry.timeouts == [0.05, 0.05, 0.0, 0.0]  # frames 2, 3: TF already waited for the link
    # with odometry from a topic the odometry is another stream: its buffer is waited on
    pipeline, _, _ = make_pipeline(model_path, transforms=lookups, odometry="/odom", publish_tf=True,
                                   transform_timeout=0.05)
    odometry = pipeline.odometry.buffer = RecordingBuffer(pipeline.odometry.buffer)
    pipeline.on_image(image(5))
    assert pipeline.process_next(timeout=0) is not None
    assert odometry.timeouts == [0.05] and pipeline.diagnostics.counts["odometry_missing"] == 0
