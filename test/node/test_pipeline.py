"""node/pipeline.py: the node logic both runtimes share, in one process with a real Relocalizer and
real message objects: outputs, bad messages, the drop-oldest queue, RGB-depth pairing, stream resets
(of the temporal smoother's state too), diagnostics, and replay's batched step."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
from node_support import TYPES, ListLog, image, make_checkpoint, random_temporal, rgb_frame, stamp

from posenet_ros.evaluation.replay import RECORDED_OUTPUTS
from posenet_ros.inference.temporal import TemporalCalibration
from posenet_ros.node.dds_node import load_settings
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.node.pipeline import (
    OUTPUTS,
    LatestSlot,
    RelocalizationPipeline,
    StampPairer,
    ThrottledWarnings,
    build_relocalizer,
    input_topics,
)
from posenet_ros.ros.bag_reading import open_bag
from posenet_ros.ros.bag_writing import write_messages
from posenet_ros.ros.conversions import (
    bool_msg,
    covariance_from_msg,
    depth_msg,
    points_from_point_cloud2,
    pose_from_msg,
    stamp_to_ns,
)
from posenet_ros.runtime.checkpoint import load_model, store_temporal
from posenet_ros.runtime.relocalizer import Relocalizer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("node") / "model.safetensors")


def make_pipeline(model_path, **settings):
    """A pipeline publishing into a list; base_frame "" (the camera's pose, no TF) and every pose
    published (publish_unknown) unless the settings say otherwise: frames and the pose policy have
    tests of their own (test_robot_frames.py, test_pose_policy.py)."""
    settings.setdefault("publish_unknown", True)
    sent: list[tuple[str, object]] = []
    log = ListLog()
    node_settings = NodeSettings(model=str(model_path), device="cpu", **{"base_frame": "", **settings})
    pipeline = RelocalizationPipeline(node_settings, build_relocalizer(node_settings), TYPES,
                                      lambda name, msg: sent.append((name, msg)), log, Clock())
    return pipeline, sent, log


def outputs(sent, name):
    return [msg for key, msg in sent if key == name]


def test_each_frame_gives_the_relocalizers_estimate_with_the_image_stamp(model_path):
    pipeline, sent, _ = make_pipeline(model_path, publish_tf=True, tf_mode="map_camera", map_frame="world")
    reference = Relocalizer(model_path, device="cpu")
    for i in range(3):
        pipeline.on_image(image(i))
        assert pipeline.process_next(timeout=0) is not None
    poses = outputs(sent, "pose")
    assert [stamp_to_ns(p.header.stamp) for p in poses] == [stamp(i) for i in range(3)]
    for i, msg in enumerate(poses):
        expected = reference.process(rgb_frame(i), stamp_ns=stamp(i))
        position, quat = pose_from_msg(msg)
        np.testing.assert_allclose(position, expected.position_3, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(quat, expected.quat_wxyz_4, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(covariance_from_msg(msg), expected.covariance_66, rtol=1e-6, atol=1e-12)
        assert msg.header.frame_id == "world"
    assert len(outputs(sent, "loop_closure")) == len(outputs(sent, "uncertainty")) == 3
    assert [m.data for m in outputs(sent, "loop_closure")] == [False, True, True]  # min_frames 2
    transforms = outputs(sent, "tf")
    assert len(transforms) == 3 and transforms[0].transforms[0].child_frame_id == "camera_optical"
    assert transforms[0].transforms[0].header.frame_id == "world"
    assert pipeline.diagnostics.counts["processed"] == 3


def with_scene_points(pipeline, points_N3):
    """Make the pipeline's real Relocalizer return its estimates with these scene coordinates, as a
    scene-coordinate model does (the estimate itself is the Relocalizer's, via dataclasses.replace)."""
    process = pipeline.relocalizer.process

    def process_with_points(*args, **kwargs):
        return dataclasses.replace(process(*args, **kwargs), scene_points_N3=points_N3)

    pipeline.relocalizer.process = process_with_points


def test_scene_points_are_published_only_for_estimates_that_have_them(model_path):
    assert OUTPUTS["scene_points"].name == "relocalization/scene_points"
    assert OUTPUTS["scene_points"].type_name == "sensor_msgs/msg/PointCloud2"
    assert OUTPUTS["scene_points"].qos == "default"
    pipeline, sent, _ = make_pipeline(model_path, map_frame="world", publish_tf=True, tf_mode="map_camera")
    pipeline.on_image(image(0))
    estimate = pipeline.process_next(timeout=0)
    assert estimate is not None and estimate.scene_points_N3 is None  # pose regression
    assert not outputs(sent, "scene_points") and len(outputs(sent, "pose")) == 1

    points = np.random.default_rng(3).normal(scale=2.0, size=(25, 3))
    points[[4, 17]] = [[np.nan, 0.0, 0.0], [0.0, np.inf, 1.0]]
    with_scene_points(pipeline, points)
    pipeline.on_image(image(1))
    estimate = pipeline.process_next(timeout=0)
    assert estimate is not None and estimate.scene_points_N3 is points
    (cloud,) = outputs(sent, "scene_points")
    assert stamp_to_ns(cloud.header.stamp) == stamp(1) and cloud.header.frame_id == "world"
    assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [("x", 0, 7), ("y", 4, 7), ("z", 8, 7)]
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (1, 23, 12, 276)
    assert cloud.is_dense is True and cloud.is_bigendian is False
    finite = np.delete(points, [4, 17], axis=0).astype(np.float32)
    np.testing.assert_array_equal(points_from_point_cloud2(cloud), finite)
    assert [name for name, _ in sent[-7:]] == ["status", "pose", "camera_pose", "loop_closure", "uncertainty",
                                               "scene_points", "tf"]


def test_scene_points_go_into_the_replay_output_bag_unchanged(model_path, tmp_path):
    """What in-process replay does with the node's outputs: record them (RECORDED_OUTPUTS) and write
    them with bag_writing.write_messages; the PointCloud2 reads back equal."""
    assert "scene_points" in RECORDED_OUTPUTS
    pipeline, sent, _ = make_pipeline(model_path)
    points = np.random.default_rng(4).uniform(-5.0, 5.0, size=(300, 3))
    with_scene_points(pipeline, points)
    for i in range(2):
        pipeline.on_image(image(i))
        assert pipeline.process_next(timeout=0) is not None
    topic = OUTPUTS["scene_points"]
    clouds = outputs(sent, "scene_points")
    records = [("/" + topic.name, topic.type_name, stamp_to_ns(c.header.stamp), c) for c in clouds]
    for storage in ("mcap", "sqlite3"):
        bag = tmp_path / f"out_{storage}"
        assert write_messages(bag, records, storage=storage) == {"/relocalization/scene_points": 2}
        with open_bag(bag) as reader:
            read = [(timestamp, reader.deserialize(raw, connection.msgtype))
                    for connection, timestamp, raw in reader.messages()]
            (connection,) = reader.connections
        assert connection.msgtype == "sensor_msgs/msg/PointCloud2"
        assert [timestamp for timestamp, _ in read] == [stamp(0), stamp(1)]
        for (_, back), cloud in zip(read, clouds, strict=True):
            # AnyReader's classes come from the definitions stored in the bag: compare values
            assert stamp_to_ns(back.header.stamp) == stamp_to_ns(cloud.header.stamp)
            assert back.header.frame_id == cloud.header.frame_id == "map"
            assert [(f.name, f.offset, f.datatype, f.count) for f in back.fields] == [
                (f.name, f.offset, f.datatype, f.count) for f in cloud.fields]
            assert (back.height, back.width, back.point_step, back.row_step) == (1, 300, 12, 3600)
            assert back.is_dense is True and back.is_bigendian is False
            np.testing.assert_array_equal(back.data, cloud.data)
            np.testing.assert_array_equal(points_from_point_cloud2(back), points.astype(np.float32))


def test_bad_messages_are_dropped_counted_and_warned_once_per_kind_of_problem(model_path):
    pipeline, sent, log = make_pipeline(model_path)
    unknown = [dataclasses.replace(image(i), encoding="xyz8") for i in (0, 4)]
    truncated = image(1)
    truncated = dataclasses.replace(truncated, data=truncated.data[: truncated.step * truncated.height - 1])
    zero_size = dataclasses.replace(image(2), width=0, height=0, step=0, data=np.zeros(0, np.uint8))
    one_pixel = image(5, width=1, height=1)  # decodes, but the network reads no less than 2x2 px
    for bad in (*unknown, truncated, zero_size, one_pixel, truncated):
        pipeline.on_image(bad)
        assert pipeline.process_next(timeout=0) is None
    assert pipeline.diagnostics.counts["rejected"] == 6 and pipeline.diagnostics.counts["failed"] == 0
    warnings = [text for level, text in log.lines if level == "warning"]
    # One warning per kind of problem within the period: the truncated frame right after the second
    # unknown encoding is logged, the second truncated frame only counted.
    assert len(warnings) == 4
    assert ["xyz8" in warnings[0], "fewer than step x height" in warnings[1], "zero size" in warnings[2],
            "too small" in warnings[3]] == [True] * 4
    assert all(text.startswith("dropped frame") and ": image: " in text for text in warnings)
    pipeline.clock.now += 10.0  # after the period the next problem is logged with the suppressed count
    pipeline.on_image(dataclasses.replace(truncated, header=image(6).header))
    pipeline.process_next(timeout=0)
    assert log.lines[-1][1].endswith("(1 more since the last warning)")
    pipeline.on_image(image(3))  # the next good frame is answered
    estimate = pipeline.process_next(timeout=0)
    assert estimate is not None and estimate.stamp_ns == stamp(3)
    assert [stamp_to_ns(p.header.stamp) for p in outputs(sent, "pose")] == [stamp(3)]


def test_a_message_with_the_stamp_of_the_one_before_is_ignored_and_counted(model_path):
    pipeline, sent, log = make_pipeline(model_path, use_depth=True)
    depth = depth_msg(TYPES, np.full((30, 40), 2.0), stamp(0), "camera")
    for _ in range(2):  # a sender re-sending its frame: the node answers it once
        pipeline.on_depth(depth)
        pipeline.on_image(image(0))
    assert pipeline.process_next(timeout=0).stamp_ns == stamp(0)
    assert pipeline.process_next(timeout=0) is None
    counts = pipeline.diagnostics.counts
    assert (counts["received"], counts["duplicate"], counts["processed"], counts["unpaired"]) == (2, 2, 1, 0)
    assert any(line.startswith("ignored an image message with the stamp of the one before")
               for _, line in log.lines)
    pipeline.on_image(image(1))  # duplicates are per stream: an image and its depth share a stamp
    pipeline.on_depth(dataclasses.replace(depth, header=image(1).header))
    assert pipeline.process_next(timeout=0).stamp_ns == stamp(1)
    assert [stamp_to_ns(p.header.stamp) for p in outputs(sent, "pose")] == [stamp(0), stamp(1)]


def test_depth_of_another_size_is_rejected_and_pairs_by_stamp(model_path):
    pipeline, sent, _ = make_pipeline(model_path, use_depth=True, max_depth_stamp_diff=0.01)
    assert set(input_topics(pipeline.settings)) == {"image", "camera_info", "depth", "reset", "relocalize"}
    depth = np.full((30, 40), 2.0)
    # Depth arriving 5 ms after the image: paired.
    pipeline.on_image(image(0))
    assert pipeline.process_next(timeout=0) is None  # waiting for its depth
    pipeline.on_depth(depth_msg(TYPES, depth, stamp(0) + 5_000_000, "camera"))
    assert pipeline.process_next(timeout=0).stamp_ns == stamp(0)
    # Depth of another size: rejected with a message naming both sizes.
    pipeline.on_image(image(1))
    pipeline.on_depth(depth_msg(TYPES, np.full((15, 20), 2.0), stamp(1), "camera"))
    assert pipeline.process_next(timeout=0) is None
    assert pipeline.diagnostics.counts["rejected"] == 1
    assert "20x15" in pipeline.warnings._log.lines[-1][1]
    # An image whose depth never comes is given up once a later depth is beyond the slop.
    pipeline.on_image(image(2))
    pipeline.on_image(image(3))
    pipeline.on_depth(depth_msg(TYPES, depth, stamp(3), "camera"))
    assert pipeline.process_next(timeout=0).stamp_ns == stamp(3)
    assert pipeline.diagnostics.counts["unpaired"] == 1
    assert len(outputs(sent, "pose")) == 2


def test_the_worker_takes_the_newest_frame_and_counts_the_dropped(model_path):
    pipeline, sent, _ = make_pipeline(model_path)
    for i in range(4):
        pipeline.on_image(image(i))
    assert pipeline.process_next(timeout=0).stamp_ns == stamp(3)
    assert pipeline.process_next(timeout=0) is None
    counts = pipeline.diagnostics.counts
    assert (counts["received"], counts["dropped"], counts["processed"]) == (4, 3, 1)
    pipeline.clock.now += 2.0
    figures = pipeline.publish_diagnostics()
    status = outputs(sent, "diagnostics")[-1].status[0]
    assert status.level == status.WARN and "3 frames dropped" in status.message
    values = {kv.key: kv.value for kv in status.values}
    assert values["dropped"] == "3" and values["device"] == "cpu" and figures["rate_hz"] == 0.5
    assert values["runtime"] == "torch"
    assert not math.isnan(figures["latency_p50_ms"])
    pipeline.publish_diagnostics()  # nothing new in this period: OK again
    assert outputs(sent, "diagnostics")[-1].status[0].level == status.OK


def test_worker_thread_start_publishes_map_poses_and_stop_ends_it(model_path):
    pipeline, sent, _ = make_pipeline(model_path)
    pipeline.start()
    try:
        (map_poses,) = outputs(sent, "map_poses")
        assert len(map_poses.poses) == 5 and map_poses.poses[4].position.x == 4.0
        pipeline.on_image(image(0))
        for _ in range(200):
            if outputs(sent, "pose"):
                break
            time.sleep(0.05)
    finally:
        pipeline.stop()
    assert len(outputs(sent, "pose")) == 1


def test_a_stamp_gap_or_a_stamp_going_back_resets_the_stream(model_path):
    pipeline, sent, log = make_pipeline(model_path, reset_gap=0.5)
    flags = []
    for i in (0, 1, 2, 20, 21, 5):  # gap of 1.8 s after frame 2, then back in time
        pipeline.on_image(image(i))
        pipeline.process_next(timeout=0)
        flags.append(outputs(sent, "loop_closure")[-1].data)
    assert flags == [False, True, True, False, True, False]
    assert sum("stream reset" in text for _, text in log.lines) == 2


def test_latest_slot_and_stamp_pairer_and_throttle():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is None and slot.put(2) == 1
    assert slot.take(0) == 2 and slot.take(0) is None
    pairer: StampPairer[str] = StampPairer(slop_ns=10)
    assert pairer.add_depth(95, "d95") == ([], 0)
    assert pairer.add_image(100, "i100") == ([("i100", "d95")], 0)  # depth first, within slop
    assert pairer.add_image(200, "i200") == ([], 0)
    assert pairer.add_image(300, "i300") == ([], 0)
    assert pairer.add_depth(305, "d305") == ([("i300", "d305")], 1)  # i200 given up
    log, clock = ListLog(), Clock()
    throttle = ThrottledWarnings(log, period_s=1.0, clock=clock)
    assert throttle.warn("a", "x") and not throttle.warn("a", "x") and throttle.warn("b", "y")
    clock.now += 1.0
    assert throttle.warn("a", "x") and log.lines[-1][1] == "x (1 more since the last warning)"


def test_unpublishable_map_poses_are_a_warning_not_a_crash(tmp_path):
    path = make_checkpoint(tmp_path / "model.safetensors")
    pipeline, sent, log = make_pipeline(path)
    pipeline.relocalizer.map_poses_N7 = np.zeros((2, 7))  # zero quaternions
    pipeline.publish_map_poses()
    assert not outputs(sent, "map_poses") and "map poses cannot be published" in log.lines[-1][1]


def test_process_batch_gives_the_frame_by_frame_poses_resets_and_rejections(model_path):
    """Replay's batched step: one network call for the frames of one size, then each frame in stream
    order (stream reset after a gap, loop-closure hysteresis), bad and odd-sized frames handled."""
    truncated = image(2)
    truncated.data = truncated.data[:100]
    odd_size = image(3, width=48, height=36)
    messages = [image(0), image(1), truncated, odd_size, image(4), image(100), image(101)]
    results = {}
    for mode in ("batch", "one by one"):
        sent: list = []
        log = ListLog()
        settings = NodeSettings(model=str(model_path), device="cpu", base_frame="")
        relocalizer = build_relocalizer(settings)
        pipeline = RelocalizationPipeline(settings, relocalizer, TYPES,
                                          lambda name, msg, sent=sent: sent.append((name, msg)), log, Clock(),
                                          queue_size=None)
        batch_sizes: list[int] = []
        infer_batch = relocalizer.infer_batch

        def counted(frames, *args, infer_batch=infer_batch, batch_sizes=batch_sizes):
            batch_sizes.append(len(frames.keys))
            return infer_batch(frames, *args)

        relocalizer.infer_batch = counted
        for msg in messages:
            pipeline.on_image(msg)
        if mode == "batch":
            estimates = pipeline.process_batch(16)
        else:
            estimates = [e for e in (pipeline.process_next(timeout=0) for _ in messages) if e is not None]
        assert pipeline.queued() == 0
        results[mode] = (estimates, len(sent), dict(pipeline.diagnostics.counts),
                         [line for _, line in log.lines if "stream reset" in line])
        # One network call for the five 40x30 frames, one for the 48x36 frame; or one call per frame.
        assert batch_sizes == ([5, 1] if mode == "batch" else [1] * 6)
    batch, single = results["batch"], results["one by one"]
    assert [e.stamp_ns for e in batch[0]] == [e.stamp_ns for e in single[0]] == [
        stamp(i) for i in (0, 1, 3, 4, 100, 101)]
    for a, b in zip(batch[0], single[0], strict=True):
        np.testing.assert_allclose(a.position_3, b.position_3, atol=1e-5)
        np.testing.assert_allclose(a.covariance_66, b.covariance_66, rtol=1e-3, atol=1e-9)
        assert a.known_place == b.known_place and a.score == pytest.approx(b.score, rel=1e-5)
    assert batch[1:] == single[1:]  # published messages, counts (one rejected), the reset log line
    assert batch[2]["rejected"] == 1 and len(batch[3]) == 1


def test_a_stamp_gap_or_a_reset_request_resets_the_smoothing_state(tmp_path):
    path = make_checkpoint(tmp_path / "model.safetensors")
    model = load_model(path).model
    store_temporal(path, random_temporal(0, model.head_dim), {
        "config": {"hidden": 16, "feature_dim": 0}, "calibration": vars(TemporalCalibration())})
    settings = load_settings(None, str(path), ["reset_gap:=1.0", "base_frame:="])

    def run(indices: list[int | str]) -> list:
        pipeline = RelocalizationPipeline(settings, build_relocalizer(settings), TYPES,
                                          lambda name, msg: None, queue_size=None)
        estimates = []
        for index in indices:
            if index == "reset":  # a std_msgs/Bool true on relocalization/reset
                pipeline.on_reset(bool_msg(TYPES, True))
                continue
            pipeline.on_image(image(index))
            estimates.append(pipeline.process_next(timeout=0))
        return estimates

    assert build_relocalizer(settings).smoother is not None
    # Frames 0, 1, 2 then frame 40 (4 s later, past reset_gap): frame 40 is answered as by a fresh node.
    with_gap = run([0, 1, 2, 40])
    fresh = run([40])
    np.testing.assert_allclose(with_gap[3].position_3, fresh[0].position_3, rtol=0, atol=1e-12)
    # Without a gap the history changes the answer.
    continuous = run([37, 38, 39, 40])
    assert np.abs(continuous[3].position_3 - fresh[0].position_3).max() > 1e-6
    # A reset requested on relocalization/reset (true) acts like a gap; false changes nothing.
    requested = run([37, 38, 39, "reset", 40])
    np.testing.assert_allclose(requested[3].position_3, fresh[0].position_3, rtol=0, atol=1e-12)
