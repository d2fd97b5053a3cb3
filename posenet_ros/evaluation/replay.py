"""Bag replay evaluation: `posenet-ros replay BAG --model M --out DIR`.

Every camera frame of a rosbag2 goes through exactly the node's pipeline (`ros/pipeline.py`: the same
message conversions, Relocalizer, stream resets and loop-closure hysteresis, and the bag's CameraInfo
on the node's `camera_info_topic` as the query camera's calibration), stepped frame by frame
so that nothing is dropped, as fast as the machine allows. With `live=True` the bag is instead played
over DDS, in lock-step, to a node that is already running (`posenet-ros node` or
`ros2 launch posenet_ros relocalize.launch.py`), and its answers are recorded: an end-to-end check of
a deployment. Either way the camera estimates (the node's relocalization/camera_pose) are associated
with the bag's ground truth of the camera by stamp (`ros/bag_reading.py`) and DIR receives:

    metrics.json     median errors, threshold accuracies, NEES and σ coverage, loop-closure precision
                     and recall, latency, frames dropped / rejected / failed, throughput, and the pose
                     policy's figures ("policy": frames published and withheld per reason, error
                     percentiles 50/90/99 of the published and of the withheld frames)
    frames.csv       one row per answered frame, with the policy's reason and whether it was published
    output_bag/      a rosbag2 of the node's outputs (/relocalized_pose, ...; with a scene-coordinate
                     model also /relocalization/scene_points) for other tools
    report/          index.html with the plots of `report.py`

Frames (REP-105): in-process, every /tf and /tf_static transform of the bag is loaded first
(`read_transforms`) and the pipeline looks the robot's links up in it at each image's stamp, so
/relocalized_pose in the output bag is the pose of base_frame (and /tf, with publish_tf, map -> odom).
A bag without transforms of base_frame (made before make-bag wrote a robot, or of a hand-held camera)
is replayed with base_frame '' (the camera's pose), with a warning. Live, the bag's /tf and /tf_static
are played to the node along with the images when `settings` (the running node's parameters) need
transforms.

Odometry (`settings.odometry`, node/odometry.py): in-process, "tf" looks the odometry up in the bag's
transforms, and a topic name reads that topic's nav_msgs/Odometry messages first (`read_odometry`), so
the smoothing sees the odometry the node would; a bag without it (no odom_frame in its TF, or no such
topic) is replayed with odometry none, with a warning. Live, the odometry topic is played to the node
too.

The pose policy: in-process, every frame has a pose and the figures cover them all, withheld or not;
live, a withheld frame's pose never leaves the node, so only the published frames have errors (the
withheld ones are counted from relocalization/status, which the live replay also steps on).

Frames count as "in the map" (for the loop-closure precision / recall) when their ground-truth pose
is within `in_map_radius_m` and `in_map_angle_deg` of a training camera pose of the checkpoint.
Ctrl-C stops the replay; everything above is still written for the frames processed so far.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posenet_ros.core.atomic_io import atomic_write_text
from posenet_ros.core.covariance_transport import transport_covariance
from posenet_ros.core.geometry import angular_error_deg, pose_from_position_quat, position_quat_from_pose
from posenet_ros.core.progress import progress_bar
from posenet_ros.evaluation.report import ReportFrames, write_report
from posenet_ros.inference.calibration import pose_error_vectors, uncertainty_metrics
from posenet_ros.inference.metrics import (
    DEFAULT_THRESHOLDS,
    pose_errors,
    pose_metrics,
    threshold_key,
    threshold_label,
)
from posenet_ros.inference.temporal import smooth_sequence, temporal_jitter
from posenet_ros.node.odometry import ODOMETRY_TYPE, add_odometry_message, odometry_topic
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.node.pipeline import OUTPUTS, NodeDiagnostics, RelocalizationPipeline, build_relocalizer
from posenet_ros.node.query_camera import subscribed_camera_info_topic
from posenet_ros.node.robot_frames import needs_transforms
from posenet_ros.ros.bag_reading import (
    CAMERA_INFO,
    DEFAULT_MAX_GAP_S,
    BagStreams,
    Trajectory,
    bag_topics,
    check_overlap,
    open_bag,
    read_messages,
    read_trajectory,
    read_transforms,
    select_streams,
    stream_messages,
)
from posenet_ros.ros.bag_writing import write_messages
from posenet_ros.ros.conversions import (
    RosbagsTypes,
    covariance_from_msg,
    float64_msg,
    pose_from_msg,
    pose_with_covariance_stamped,
    stamp_to_ns,
    tf_message,
    transform_stamped,
)
from posenet_ros.ros.dds import DdsNode
from posenet_ros.ros.dds_types import from_dds
from posenet_ros.ros.tf_buffer import TransformBuffer
from posenet_ros.runtime.checkpoint import load_model
from posenet_ros.tools.play import play

logger = logging.getLogger(__name__)

RECORDED_OUTPUTS = ("pose", "camera_pose", "loop_closure", "uncertainty", "scene_points", "tf", "map_poses",
                    "status", "initial_pose")
ERROR_PERCENTILES = (50, 90, 99)


@dataclass
class Answer:
    """One answered frame, from either runtime: the pose (metres, unit wxyz quaternion, map frame),
    its 6x6 covariance, the loop-closure flag and score (NaN where the runtime does not publish it),
    √trace of the position covariance (metres), the processing latency (ms; NaN when unknown), and
    the pose policy's reason (`pose_policy.REASONS`) and whether the node published the pose."""

    stamp_ns: int
    position_3: np.ndarray
    quat_wxyz_4: np.ndarray
    covariance_66: np.ndarray
    known_place: bool
    score: float
    uncertainty_m: float
    latency_ms: float
    reason: str
    published: bool


@dataclass
class ReplayRun:
    """What a replay produced: answers in stream order, the output messages (topic, type, stamp ns,
    message) for the output bag, pipeline counts, and whether it was interrupted. `verdicts`: stamp ns
    -> (reason, published) of every frame the node answered (live: also those whose pose it withheld);
    `policy`: the limits in use."""

    answers: list[Answer] = field(default_factory=list)
    messages: list[tuple[str, str, int, Any]] = field(default_factory=list)
    counts: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    elapsed_s: float = 0.0
    runtime: str = "in-process"
    loop_closure: dict[str, float] = field(default_factory=dict)  # the thresholds in use
    verdicts: dict[int, tuple[str, bool]] = field(default_factory=dict)
    policy: dict[str, float] = field(default_factory=dict)


def _topic_name(name: str) -> str:
    return name if name.startswith("/") else "/" + name


def run_in_process(bag: str | Path, settings: NodeSettings, streams: BagStreams, *,
                   offline_smoothing: bool = False, progress: bool = True, batch_size: int = 1,
                   transforms: TransformBuffer | None = None,
                   odometry: TransformBuffer | None = None) -> ReplayRun:
    """Step the node's pipeline through every frame of `bag` (no frame dropped); Ctrl-C ends early.
    `offline_smoothing`: run per frame, then replace the poses of each stretch of the stream (split
    where the node would reset) by the checkpoint's bidirectional temporal model. `batch_size` > 1:
    the network takes that many frames at once (`RelocalizationPipeline.process_batch`: the same poses,
    more frames/s on a GPU); each frame's latency is then its share of its batch's time. `transforms`:
    the bag's TF (`read_transforms`), where the pipeline looks the robot's links up. `odometry`: where
    the odometry is looked up (settings.odometry "tf": None, the same `transforms`; a topic: the bag's
    messages, `read_odometry`)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if offline_smoothing:
        settings = dataclasses.replace(settings, smoothing=False)
    relocalizer = build_relocalizer(settings)
    if offline_smoothing:
        if relocalizer.temporal is None:
            raise ValueError(f"{relocalizer.model_path} has no temporal model for --smooth offline: run "
                             "`posenet-ros train-temporal` first")
        relocalizer.keep_temporal_inputs = True
    inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    run = ReplayRun(loop_closure=dataclasses.asdict(relocalizer.loop_closure))
    last_stamp = [0]

    def publish(name: str, msg: Any) -> None:
        if name in RECORDED_OUTPUTS:
            topic = OUTPUTS[name]
            if hasattr(msg, "header"):  # Bool and Float64 follow the status of their frame
                last_stamp[0] = stamp_to_ns(msg.header.stamp)
            run.messages.append((_topic_name(topic.name), topic.type_name, last_stamp[0], msg))

    if odometry is None and settings.odometry == "tf":
        odometry = transforms
    pipeline = RelocalizationPipeline(settings, relocalizer, RosbagsTypes(), publish, logger, queue_size=None,
                                      transforms=transforms, odometry=odometry)
    run.policy = dataclasses.asdict(pipeline.policy)
    bar = progress_bar(total=streams.image_count, unit="frame", desc="replay", disable=not progress)
    start = time.perf_counter()

    def step(frames: int) -> None:
        began = time.perf_counter()
        if batch_size == 1:
            estimates = [estimate for estimate in [pipeline.process_next(timeout=0)] if estimate is not None]
        else:
            estimates = pipeline.process_batch(frames)
        latency_ms = 1e3 * (time.perf_counter() - began) / max(frames, 1)
        for estimate in estimates:
            decision = pipeline.policy.decide(estimate.known_place, estimate.covariance_66)
            run.verdicts[estimate.stamp_ns] = decision.reason, decision.published
            run.answers.append(Answer(estimate.stamp_ns, estimate.position_3, estimate.quat_wxyz_4,
                                      estimate.covariance_66, estimate.known_place, estimate.score,
                                      estimate.uncertainty_m, latency_ms, decision.reason,
                                      decision.published))
            if estimate.temporal_inputs is not None:
                inputs.append(estimate.temporal_inputs)
        bar.update(frames)

    try:
        with open_bag(bag) as reader:
            handlers = {"image": pipeline.on_image, "depth": pipeline.on_depth,
                        "camera_info": pipeline.on_camera_info}
            for index, (kind, msg) in enumerate(stream_messages(reader, bag, streams, with_camera_info=True)):
                if index == 0:  # stamped in bag time, not wall time: the output bag spans the frames
                    pipeline.publish_map_poses(stamp_to_ns(msg.header.stamp))
                handlers[kind](msg)
                while pipeline.queued() >= batch_size:
                    step(batch_size)
        while pipeline.queued():
            step(min(pipeline.queued(), batch_size))
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        bar.close()
    if offline_smoothing:
        _smooth_offline(run, relocalizer, inputs, settings)
    run.elapsed_s = time.perf_counter() - start
    run.counts = {key: float(value) for key, value in pipeline.diagnostics.counts.items()}
    return run


def read_odometry(reader: Any, path: str | Path, topic: str, odom_frame: str,
                  base_frame: str) -> TransformBuffer:
    """The nav_msgs/Odometry messages of `topic` in the bag, as `odom_frame` <- `base_frame`, in a
    TransformBuffer that keeps them all (node/odometry.py's `add_odometry_message`). A message the node
    would reject (a pose that is not finite, other frame ids) is left out, as the node leaves it out, and
    logged."""
    buffer = TransformBuffer(cache_time_s=None)
    rejected = 0
    for _, _, msg in read_messages(reader, path, [topic]):
        try:
            add_odometry_message(buffer, msg, odom_frame, base_frame)
        except ValueError as error:
            rejected += 1
            if rejected == 1:
                logger.warning("bag %s, %s: left out an odometry message: %s", path, topic, error)
    if rejected > 1:
        logger.warning("bag %s, %s: left out %d odometry messages in all", path, topic, rejected)
    return buffer


def _smooth_offline(run: ReplayRun, relocalizer: Any, inputs: list[tuple[torch.Tensor, torch.Tensor,
                    torch.Tensor]], settings: NodeSettings) -> None:
    """Replace the answers' poses, covariances and uncertainties (and the published messages) by the
    bidirectional temporal model's, stretch by stretch (split at stamp gaps over reset_gap).

    A frame's published base pose and map -> odom transform were the camera pose times fixed factors
    (camera_from_base, odom links): they move with the camera, left-multiplied by new · old⁻¹, and the
    base covariance is the smoothed camera covariance carried to the base (as the node does)."""
    stamps = np.array([answer.stamp_ns for answer in run.answers], np.int64)
    breaks = np.flatnonzero((np.diff(stamps) > settings.reset_gap * 1e9) | (np.diff(stamps) < 0)) + 1
    types = RosbagsTypes()
    topics = {_topic_name(OUTPUTS[name].name): name for name in ("pose", "camera_pose", "uncertainty", "tf")}
    published = {(topics[topic], stamp): msg for topic, _, stamp, msg in run.messages if topic in topics}
    replaced: dict[tuple[str, int], Any] = {}
    for members in np.split(np.arange(len(stamps)), breaks):
        if not len(members):
            continue
        features, position_norm, quat = (torch.cat([inputs[i][k] for i in members]) for k in range(3))
        smoothed = smooth_sequence(relocalizer.temporal, relocalizer.model, relocalizer.temporal_calibration,
                                   features, position_norm, quat, "offline")
        for row, i in enumerate(members):
            answer, stamp = run.answers[i], run.answers[i].stamp_ns
            old_map_from_camera = pose_from_position_quat(answer.position_3, answer.quat_wxyz_4)
            answer.position_3, answer.quat_wxyz_4 = smoothed.position_T3[row], smoothed.quat_T4[row]
            answer.covariance_66 = smoothed.covariance_T66[row]
            answer.uncertainty_m = float(np.sqrt(max(np.trace(answer.covariance_66[:3, :3]), 0.0)))
            map_from_camera = pose_from_position_quat(answer.position_3, answer.quat_wxyz_4)
            correction = map_from_camera @ np.linalg.inv(old_map_from_camera)
            replaced["camera_pose", stamp] = pose_with_covariance_stamped(
                types, stamp, settings.map_frame, answer.position_3, answer.quat_wxyz_4, answer.covariance_66)
            if ("pose", stamp) in published:
                old_map_from_frame = pose_from_position_quat(*pose_from_msg(published["pose", stamp]))
                camera_from_frame = np.linalg.inv(old_map_from_camera) @ old_map_from_frame
                position, quat = position_quat_from_pose(correction @ old_map_from_frame)
                replaced["pose", stamp] = pose_with_covariance_stamped(
                    types, stamp, settings.map_frame, position, quat,
                    transport_covariance(answer.covariance_66, map_from_camera, camera_from_frame))
            if ("tf", stamp) in published:  # map -> odom or map -> camera: moves with the camera
                replaced["tf", stamp] = tf_message(types, [transform_stamped(
                    types, stamp_to_ns(t.header.stamp), t.header.frame_id, t.child_frame_id,
                    *position_quat_from_pose(correction @ pose_from_position_quat(*pose_from_msg(t))))
                    for t in published["tf", stamp].transforms])
            replaced["uncertainty", stamp] = float64_msg(types, answer.uncertainty_m)
    run.messages = [(topic, type_name, stamp, replaced.get((topics.get(topic, ""), stamp), msg))
                    for topic, type_name, stamp, msg in run.messages]


def run_live(bag: str | Path, streams: BagStreams, *, namespace: str = "/", domain_id: int | None = None,
             config: str | None = None, wait_timeout: float = 30.0, step_timeout: float = 30.0,
             progress: bool = True, transform_topics: Sequence[str] = ()) -> ReplayRun:
    """Play the camera topics of `bag` (and `transform_topics`, e.g. /tf and /tf_static) over DDS in
    lock-step with a running node's relocalization/status (published for every frame, its pose withheld
    or not) and record its outputs (camera and published pose, status, loop-closure flag, uncertainty,
    diagnostics); the answers are the camera poses."""

    run = ReplayRun(runtime="live")
    lock = threading.Lock()
    poses: list[tuple[float, Any]] = []
    flags: list[bool] = []
    sigmas: list[float] = []
    statuses: dict[int, dict[str, str]] = {}  # stamp ns -> the status's values
    diagnostics: dict[str, str] = {}

    def resolve(name: str) -> str:
        return _topic_name(name) if namespace in ("", "/") else f"{namespace.rstrip('/')}/{name.lstrip('/')}"

    def record(name: str, sink: Any) -> Any:
        topic = OUTPUTS[name]

        def callback(sample: Any) -> None:
            msg = from_dds(sample, topic.type_name)
            with lock:
                stamp = stamp_to_ns(msg.header.stamp) if hasattr(msg, "header") else max(statuses, default=0)
                run.messages.append((resolve(topic.name), topic.type_name, stamp, msg))
                sink(msg)
        return callback

    def on_diagnostics(msg: Any) -> None:
        for status in msg.status:
            diagnostics.update({kv.key: kv.value for kv in status.values})

    topics = [topic for topic in (streams.image_topic, streams.depth_topic, streams.camera_info_topic)
              if topic]
    bar = progress_bar(total=streams.image_count, unit="frame", desc="replay --live", disable=not progress)
    start = time.perf_counter()
    with DdsNode("posenet_ros_replay", domain_id=domain_id, config=config) as node:
        sinks = {"camera_pose": lambda msg: poses.append((time.perf_counter(), msg)),
                 "pose": lambda msg: None,  # recorded into the output bag only
                 "status": lambda msg: (statuses.update({stamp_to_ns(msg.header.stamp): {
                     kv.key: kv.value for kv in msg.status[0].values}}), bar.update(1)),
                 "loop_closure": lambda msg: flags.append(bool(msg.data)),
                 "uncertainty": lambda msg: sigmas.append(float(msg.data)),
                 "scene_points": lambda msg: None,  # recorded into the output bag only
                 "diagnostics": on_diagnostics}
        subscriptions = {}
        for name, sink in sinks.items():
            topic = OUTPUTS[name]
            subscriptions[name] = node.subscription(
                resolve(topic.name), topic.type_name, topic.qos,
                record(name, sink) if name != "diagnostics" else
                lambda sample, s=sink, t=topic: s(from_dds(sample, t.type_name)))
        # The recorder must hear the node's first answers: wait until the node's publishers match.
        for name in ("camera_pose", "status", "loop_closure", "uncertainty"):
            if not subscriptions[name].wait_for_publishers(1, wait_timeout):
                raise ValueError(f"no node publishes {subscriptions[name].topic} within {wait_timeout:g} s: "
                                 "start the relocalization node on the same DDS domain first")
        try:
            play(bag, rate=0.0, topics=[*topics, *transform_topics], domain_id=domain_id, wait_subscribers=1,
                 wait_timeout=wait_timeout, step_topic=resolve(OUTPUTS["status"].name),
                 step_type=OUTPUTS["status"].type_name, step_timeout=step_timeout, config=config)
            # The last frame's flag and uncertainty may trail its pose, and the node's counts come with
            # its next /diagnostics message (every diagnostics_period, 1 s by default).
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                with lock:
                    published = sum(values.get("published") == "true" for values in statuses.values())
                    if (min(len(flags), len(sigmas)) >= len(statuses) and len(poses) >= published
                            and float(diagnostics.get("processed", -1)) >= len(statuses)):
                        break
                time.sleep(0.01)
        except KeyboardInterrupt:
            run.interrupted = True
        finally:
            bar.close()
    run.elapsed_s = time.perf_counter() - start
    with lock:
        run.verdicts = {stamp: (values.get("reason", ""), values.get("published") == "true")
                        for stamp, values in sorted(statuses.items())}
        for _, msg in poses:
            stamp = stamp_to_ns(msg.header.stamp)
            values = statuses.get(stamp, {})
            position, quat = pose_from_msg(msg)
            run.answers.append(Answer(
                stamp, position, quat, covariance_from_msg(msg), values.get("known_place") == "true",
                math.nan, float(values.get("sigma_position_m", "nan")), math.nan,
                values.get("reason", ""), True))
        if statuses:
            last = statuses[max(statuses)]
            run.policy = {"max_position_sigma_m": float(last["max_position_sigma_m"]),
                          "max_rotation_sigma_deg": float(last["max_rotation_sigma_deg"])}
    for key in NodeDiagnostics.COUNTERS:
        if key in diagnostics:
            run.counts[key] = float(diagnostics[key])
    for key in ("latency_p50_ms", "latency_p99_ms"):
        if key in diagnostics:
            run.counts[key] = float(diagnostics[key])
    return run


def _in_map(position_N3: np.ndarray, quat_N4: np.ndarray, map_poses_M7: np.ndarray, radius_m: float,
            angle_deg: float) -> np.ndarray:
    """Whether each ground-truth pose is within radius and angle of some training camera pose."""
    result = np.zeros(len(position_N3), dtype=bool)
    if not len(map_poses_M7):
        return result
    for i, (position, quat) in enumerate(zip(position_N3, quat_N4, strict=True)):
        if not np.all(np.isfinite(position)):
            continue
        near = np.linalg.norm(map_poses_M7[:, :3] - position, axis=1) <= radius_m
        if near.any():
            result[i] = bool((angular_error_deg(map_poses_M7[near, 3:], quat) <= angle_deg).any())
    return result


def replay_results(run: ReplayRun, trajectory: Trajectory, map_poses_M7: np.ndarray, *,
                   max_gap_s: float = DEFAULT_MAX_GAP_S, thresholds: Sequence[tuple[float, float]] =
                   DEFAULT_THRESHOLDS, in_map_radius_m: float = 0.5,
                   in_map_angle_deg: float = 30.0) -> tuple[dict[str, Any], ReportFrames, np.ndarray]:
    """(metrics, per-frame report table, in_map_N) of the answers against the ground truth."""
    answers = run.answers
    if not answers:
        raise ValueError("no frame was answered: nothing to evaluate")
    stamps = np.array([a.stamp_ns for a in answers], np.int64)
    position = np.stack([a.position_3 for a in answers]).astype(np.float64)
    quat = np.stack([a.quat_wxyz_4 for a in answers]).astype(np.float64)
    covariance = np.stack([a.covariance_66 for a in answers]).astype(np.float64)
    true_position, true_quat, valid = trajectory.at(stamps, max_gap_s)
    position_error, orientation_error = pose_errors(position, quat, true_position, true_quat)
    position_error[~valid] = np.nan
    orientation_error[~valid] = np.nan
    sigma_position = np.sqrt(np.clip(np.trace(covariance[:, :3, :3], axis1=1, axis2=2), 0, None))
    sigma_rotation = np.degrees(np.sqrt(np.clip(np.trace(covariance[:, 3:, 3:], axis1=1, axis2=2), 0, None)))
    known = np.array([a.known_place for a in answers], bool)
    score = np.array([a.score for a in answers], np.float64)
    in_map = _in_map(true_position, true_quat, map_poses_M7, in_map_radius_m, in_map_angle_deg)

    metrics: dict[str, Any] = {"frames": len(answers), "frames_with_ground_truth": int(valid.sum())}
    if valid.any():
        summary = pose_metrics(position_error[valid], orientation_error[valid], thresholds)
        metrics.update({key: value for key, value in summary.items() if key != "frames"})
        metrics["accuracy"] = {threshold_label(m, d): summary[threshold_key(m, d)] for m, d in thresholds}
        stretch = np.cumsum(np.r_[0, np.abs(np.diff(stamps)) > 10**9])  # split where the node resets
        metrics.update(temporal_jitter(position[valid], quat[valid], true_position[valid], true_quat[valid],
                                       [str(label) for label in stretch[valid]]))
        errors = pose_error_vectors(position[valid], quat[valid], true_position[valid], true_quat[valid])
        if np.all(np.isfinite(covariance[valid])) and np.any(covariance[valid]):
            metrics["uncertainty"] = uncertainty_metrics(errors, covariance[valid])
    labelled = valid
    true_positive = int((known & in_map & labelled).sum())
    flagged = int((known & labelled).sum())
    metrics["loop_closure"] = {
        "in_map_frames": int((in_map & labelled).sum()),
        "out_of_map_frames": int((~in_map & labelled).sum()),
        "known_place_frames": int(known.sum()),
        "precision": true_positive / flagged if flagged else math.nan,
        "recall": true_positive / int((in_map & labelled).sum()) if (in_map & labelled).any() else math.nan,
        "in_map_radius_m": in_map_radius_m, "in_map_angle_deg": in_map_angle_deg, **run.loop_closure,
    }
    latency = np.array([a.latency_ms for a in answers], np.float64)
    latency = latency[np.isfinite(latency)]
    metrics["latency_ms"] = ({"p50": float(np.percentile(latency, 50)),
                              "p99": float(np.percentile(latency, 99)),
                              "mean": float(latency.mean())} if latency.size else
                             {"p50": run.counts.get("latency_p50_ms", math.nan),
                              "p99": run.counts.get("latency_p99_ms", math.nan), "mean": math.nan})
    for key in NodeDiagnostics.COUNTERS:
        metrics[key] = int(run.counts[key]) if key in run.counts else None
    published = np.array([a.published for a in answers], bool)
    metrics["policy"] = policy_metrics(run, published[valid], position_error[valid], orientation_error[valid])
    metrics["elapsed_s"] = run.elapsed_s
    metrics["throughput_fps"] = len(answers) / run.elapsed_s if run.elapsed_s > 0 else math.nan
    metrics["interrupted"] = run.interrupted
    metrics["runtime"] = run.runtime
    metrics["ground_truth"] = trajectory.source
    frames = ReportFrames(stamp_ns=stamps, position_est_N3=position, quat_est_N4=quat,
                          position_true_N3=true_position, quat_true_N4=true_quat,
                          position_error_N=position_error, orientation_error_N=orientation_error,
                          sigma_position_m_N=sigma_position, sigma_rotation_deg_N=sigma_rotation,
                          known_place_N=known, score_N=score)
    return metrics, frames, in_map


def policy_metrics(run: ReplayRun, published_N: np.ndarray, position_error_N: np.ndarray,
                   orientation_error_N: np.ndarray) -> dict[str, Any]:
    """The pose policy's figures: its limits, frames published and withheld (per reason, from every
    frame's verdict), and the error percentiles (`ERROR_PERCENTILES`; metres, degrees) of the published
    and the withheld frames among those with ground truth (`*_N`)."""
    withheld: dict[str, int] = {}
    for reason, was_published in run.verdicts.values():
        if not was_published:
            withheld[reason] = withheld.get(reason, 0) + 1

    def errors(mask: np.ndarray) -> dict[str, Any]:
        def percentiles(values: np.ndarray) -> dict[str, float]:
            return {f"p{p}": float(np.percentile(values, p)) if values.size else math.nan
                    for p in ERROR_PERCENTILES}
        return {"frames": int(mask.sum()), "position_m": percentiles(position_error_N[mask]),
                "orientation_deg": percentiles(orientation_error_N[mask])}

    return {**run.policy, "frames_published": sum(p for _, p in run.verdicts.values()),
            "frames_withheld": sum(withheld.values()), "withheld": withheld,
            "published_error": errors(published_N), "withheld_error": errors(~published_N)}


CSV_COLUMNS = ("stamp_ns", "x", "y", "z", "qw", "qx", "qy", "qz", "gt_x", "gt_y", "gt_z", "gt_qw", "gt_qx",
               "gt_qy", "gt_qz", "position_error_m", "orientation_error_deg", "sigma_position_m",
               "sigma_rotation_deg", "known_place", "in_map", "score", "latency_ms", "reason", "published")


def frames_csv(frames: ReportFrames, in_map_N: np.ndarray, answers: Sequence[Answer]) -> str:
    """The per-frame table as CSV text (full float precision, empty cells for NaN); latency, the
    policy's reason and the published flag come from `answers` (in the order of the frames)."""
    def cell(value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, np.bool_)):
            return str(int(value))
        if isinstance(value, (int, np.integer)):
            return str(int(value))
        return "" if not math.isfinite(float(value)) else repr(float(value))

    lines = [",".join(CSV_COLUMNS)]
    for i in range(len(frames.stamp_ns)):
        row = [frames.stamp_ns[i], *frames.position_est_N3[i], *frames.quat_est_N4[i],
               *frames.position_true_N3[i], *frames.quat_true_N4[i], frames.position_error_N[i],
               frames.orientation_error_N[i],
               frames.sigma_position_m_N[i], frames.sigma_rotation_deg_N[i], frames.known_place_N[i],
               in_map_N[i], frames.score_N[i], answers[i].latency_ms, answers[i].reason, answers[i].published]
        lines.append(",".join(cell(value) for value in row))
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def replay(bag: str | Path, out: str | Path, settings: NodeSettings, *, image_topic: str | None = None,
           depth_topic: str | None = None, gt_topic: str | None = None, gt_tf: tuple[str, str] | None = None,
           max_gap_s: float = DEFAULT_MAX_GAP_S, live: bool = False, namespace: str = "/",
           domain_id: int | None = None, dds_config: str | None = None, storage: str = "mcap",
           in_map_radius_m: float = 0.5, in_map_angle_deg: float = 30.0, smooth: str = "node",
           progress: bool = True, batch_size: int = 1) -> dict[str, Any]:
    """Replay `bag` (see the module docstring) and write the results into `out`; returns the metrics.

    `settings`: the node's parameters (model, mc_samples, loop-closure overrides, ...); the image and
    depth topics are those found in the bag unless given; depth is read when `settings.use_depth` is
    on or the model is an RGB-D one. `smooth`: "node" (as the node does: the
    causal temporal model when the checkpoint has one and `settings.smoothing` is on), "off", or
    "offline" (the bidirectional temporal model over each stretch of the stream; in-process only).
    `batch_size`: frames per network call in-process (run_in_process). Bag problems are ValueErrors
    naming them.
    """
    if smooth not in ("node", "off", "offline"):
        raise ValueError(f"smooth must be 'node', 'off' or 'offline', got {smooth!r}")
    if live and batch_size != 1:
        raise ValueError("--live records what the running node publishes: --batch applies in-process only")
    if live and smooth != "node":
        raise ValueError("--live records what the running node publishes: --smooth applies in-process only")
    if smooth == "off":
        settings = dataclasses.replace(settings, smoothing=False)
    if not max_gap_s > 0:
        raise ValueError(f"max_gap_s must be > 0, got {max_gap_s}")
    bag, out = Path(bag), Path(out)
    loaded = load_model(settings.model, "cpu")  # training camera poses ("in the map"), depth need
    if loaded.needs_depth:  # the depth images go with the colour ones
        settings = dataclasses.replace(settings, use_depth=True)
    with open_bag(bag) as reader:
        streams = select_streams(reader, bag, image_topic, depth_topic, settings.use_depth)
        settings = dataclasses.replace(settings, image_topic=streams.image_topic,
                                       depth_topic=streams.depth_topic or settings.depth_topic,
                                       transform_timeout=0.0)  # every transform of the bag is loaded first
        info_topic = subscribed_camera_info_topic(settings)  # what the node subscribes to, if recorded
        streams = dataclasses.replace(streams, camera_info_topic=(
            info_topic if bag_topics(reader).get(info_topic or "") == CAMERA_INFO else None))
        trajectory = read_trajectory(reader, bag, gt_topic, gt_tf)
        transforms = read_transforms(reader, bag)
        transform_topics = [t for t in ("/tf", "/tf_static") if t in bag_topics(reader)]
        topic = odometry_topic(settings)
        odometry = None
        if topic is not None and bag_topics(reader).get(topic) == ODOMETRY_TYPE:
            odometry = read_odometry(reader, bag, topic, settings.odom_frame, settings.base_frame)
            transform_topics.append(topic)
        image_stamps = np.array([stamp_to_ns(msg.header.stamp) for kind, msg in
                                 stream_messages(reader, bag, dataclasses.replace(streams, depth_topic=None))
                                 if kind == "image"], np.int64)
    _, _, with_truth = trajectory.at(image_stamps, max_gap_s)
    check_overlap(trajectory, image_stamps, with_truth, bag, streams.image_topic)
    if settings.base_frame and settings.base_frame not in transforms.frames():
        logger.warning("bag %s has no transform of base_frame %r: replaying with base_frame '' (the camera's "
                       "pose on /relocalized_pose)", bag, settings.base_frame)
        settings = dataclasses.replace(settings, base_frame="", odometry="none",
                                       publish_tf=settings.publish_tf and settings.tf_mode == "map_camera")
    if ((settings.odometry == "tf" and settings.odom_frame not in transforms.frames())
            or (odometry_topic(settings) is not None and odometry is None)):
        logger.warning("bag %s has no odometry %s: replaying with odometry none", bag,
                       f"transform of odom_frame {settings.odom_frame!r}" if settings.odometry == "tf"
                       else f"topic {settings.odometry} ({ODOMETRY_TYPE})")
        settings = dataclasses.replace(settings, odometry="none")
    if live:
        played_transforms = transform_topics if needs_transforms(settings) else []
        run = run_live(bag, streams, namespace=namespace, domain_id=domain_id, config=dds_config,
                       progress=progress, transform_topics=played_transforms)
    else:
        run = run_in_process(bag, settings, streams, offline_smoothing=smooth == "offline", progress=progress,
                             batch_size=batch_size, transforms=transforms, odometry=odometry)
    if not run.answers:
        raise ValueError(f"no frame of {streams.image_topic} in {bag} was answered"
                         + (" (interrupted)" if run.interrupted else ""))
    map_poses = loaded.map_poses_N7
    if not run.loop_closure:  # live: the checkpoint's thresholds (unless the node overrides them)
        run.loop_closure = dataclasses.asdict(loaded.loop_closure)
    metrics, frames, in_map = replay_results(run, trajectory, map_poses, max_gap_s=max_gap_s,
                                             in_map_radius_m=in_map_radius_m,
                                             in_map_angle_deg=in_map_angle_deg)
    if smooth == "node":
        smooth = "causal" if settings.smoothing and loaded.temporal is not None else "off"
        if smooth == "causal" and settings.odometry != "none":
            smooth = "causal with odometry"
    metrics.update(bag=str(bag), model=str(settings.model), smoothing=smooth, image_topic=streams.image_topic,
                   depth_topic=streams.depth_topic, camera_info_topic=streams.camera_info_topic,
                   image_messages=len(image_stamps))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(_json_safe(metrics), indent=2) + "\n")
    atomic_write_text(out / "frames.csv", frames_csv(frames, in_map, run.answers))
    write_messages(out / "output_bag", run.messages, storage=storage, replace=True)
    notes = [f"bag {bag}: {len(image_stamps)} images on {streams.image_topic}; "
             f"ground truth {trajectory.source}",
             f"runtime: {run.runtime}; model {settings.model}"]
    if run.interrupted:
        notes.append(f"interrupted after {len(run.answers)} frames: the figures cover those only")
    write_report(out / "report", frames, _json_safe(metrics), title=f"posenet_ros replay of {bag.name}",
                 map_poses_N7=map_poses, notes=notes)
    return metrics
