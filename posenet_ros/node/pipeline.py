"""The relocalization node's logic, shared by the rclpy node (`node.py`) and the Cyclone DDS runtime
(`dds_node.py`): everything except creating publishers and subscriptions is decided here.

Data flow (one stream of camera frames):

    image / depth callbacks --(stamps only; RGB-depth pairing)--> LatestSlot (depth 1, drop-oldest)
        --> worker thread: decode, check, Relocalizer.process --> publish(output name, message)
    camera_info callback --> QueryCamera (the latest calibration, which the worker gives each frame)

Callbacks never block: they read the header stamp, pair RGB with depth by stamp (`StampPairer`)
and put the frame into a slot that holds only the newest frame; a frame still waiting when a newer
one arrives is dropped and counted. The worker decodes the messages (`conversions.py`), so a bad
message costs the callback nothing; a frame that cannot be used (unknown encoding, truncated data,
zero size, depth of another size than the image: `conversions.ImageProblem`) is rejected, counted,
and logged at most once per `WARNING_PERIOD_S` per stream and kind of problem (a truncated frame
right after one of an unknown encoding is logged too); the next good frame is answered as usual.

Frames (REP-105, `robot_frames.py`): the transforms a frame needs (base <- camera, odom <- base) are
looked up at its stamp before the network runs, in a `TransformLookup` (by default a `TransformBuffer`
fed by `on_tf` / `on_tf_static`; the rclpy node hands in tf2_ros's); a frame whose base <- camera is
missing or stale is dropped, counted ("no_transform") and warned about, naming the link; a frame
whose odom <- base is missing is answered without its map -> odom transform ("no_map_odom").

Odometry (`odometry.py`, parameter `odometry`): with a checkpoint whose temporal model has fusion
parameters and smoothing on, each frame is smoothed with the odometry (TF, or a nav_msgs/Odometry topic
through `on_odometry`) looked up at its stamp; where it is missing the temporal model's learned motion
stands in ("odometry_missing", warned about at most once per WARNING_PERIOD_S).

Outputs (`OUTPUTS`: name -> topic, type, QoS profile of `dds.QOS_PROFILES`), all stamped with the
image's stamp: the pose with covariance of base_frame (or, without one, of the camera) in the map
frame and the camera's own pose, both only for a confident frame unless publish_unknown
(`pose_policy.py`); the policy's verdict on every frame (relocalization/status, first); the same pose
message once on `initialpose` when asked to (`initial_pose.py`); the loop-closure flag; the scalar
uncertainty (√trace of the camera position covariance, metres); with publish_tf and the pose, the
map -> odom (post-dated by transform_tolerance) or map -> camera transform; for scene coordinate
regression the frame's inlier scene coordinates (a PointCloud2 in the map frame, metres; nothing for
pose regression); `/diagnostics`; and once at start (transient local) the training camera poses as a
PoseArray.
Relative names resolve in the node's namespace.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from posenet_ros.core.geometry import position_quat_from_pose
from posenet_ros.node.initial_pose import InitialPoseTrigger
from posenet_ros.node.odometry import (
    ODOMETRY_TYPE,
    OdometryStep,
    OdometryTracker,
    add_odometry_message,
    odometry_noise,
    odometry_source,
    odometry_topic,
)
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.node.pose_policy import CONFIDENT, REASONS, PolicyDecision, PosePolicy, policy_limits
from posenet_ros.node.query_camera import QueryCamera, subscribed_camera_info_topic
from posenet_ros.node.robot_frames import (
    FrameLinks,
    TransformLookup,
    camera_frame_of,
    look_up_links,
    needs_transforms,
    publishes_map_odom,
    robot_pose,
)
from posenet_ros.ros.conversions import (
    ImageConversionError,
    ImageProblem,
    MessageTypes,
    bool_msg,
    depth_to_metres,
    diagnostic_array,
    float64_msg,
    message_to_rgb,
    point_cloud2,
    pose_array,
    pose_with_covariance_stamped,
    stamp_to_ns,
    tf_message,
    transform_stamped,
)
from posenet_ros.ros.tf_buffer import TransformBuffer, TransformUnavailable
from posenet_ros.runtime.checkpoint import calibration_report
from posenet_ros.runtime.relocalizer import PoseEstimate, Relocalizer

T = TypeVar("T")
WARNING_PERIOD_S = 5.0  # at most one warning per kind of rejected input in this time
LATENCY_WINDOW = 1000  # frames over which latency percentiles are reported
STATUS_NAME = "posenet_ros: pose policy"  # the DiagnosticStatus name on relocalization/status
INITIAL_POSE_CAUSES = {"start": "initial_pose_at_start", "request": "requested",
                       "lost": "re-initialisation after initial_pose_lost_frames unconfident frames"}


@dataclass(frozen=True)
class Topic:
    """A topic of the node: name (relative names resolve in the node's namespace), ROS 2 type, QoS
    profile name (`dds.QOS_PROFILES`; the rclpy node maps the same names to rclpy profiles)."""

    name: str
    type_name: str
    qos: str


OUTPUTS: dict[str, Topic] = {
    "pose": Topic("relocalized_pose", "geometry_msgs/msg/PoseWithCovarianceStamped", "default"),
    "camera_pose": Topic("relocalization/camera_pose", "geometry_msgs/msg/PoseWithCovarianceStamped",
                         "default"),
    "loop_closure": Topic("relocalization/loop_closure", "std_msgs/msg/Bool", "default"),
    "uncertainty": Topic("relocalization/uncertainty", "std_msgs/msg/Float64", "default"),
    "status": Topic("relocalization/status", "diagnostic_msgs/msg/DiagnosticArray", "default"),
    "initial_pose": Topic("initialpose", "geometry_msgs/msg/PoseWithCovarianceStamped", "default"),
    "map_poses": Topic("relocalization/map_poses", "geometry_msgs/msg/PoseArray", "transient_local"),
    "scene_points": Topic("relocalization/scene_points", "sensor_msgs/msg/PointCloud2", "default"),
    "tf": Topic("/tf", "tf2_msgs/msg/TFMessage", "default"),
    "diagnostics": Topic("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", "default"),
}


def input_topics(settings: NodeSettings) -> dict[str, Topic]:
    """The subscriptions: "image" (CompressedImage when the name ends in /compressed, as
    image_transport names it), "camera_info" (unless camera_info_topic is empty; query_camera.py) and,
    with use_depth, "depth", all with sensor-data QoS; and "reset"
    (std_msgs/Bool: true drops the stream's state - temporal smoothing, loop-closure history - before
    the next frame, e.g. after the robot was carried elsewhere); "relocalize" (std_msgs/Empty: send the
    next confident pose to initialpose, as the rclpy node's `relocalize` service does); and when TF is
    needed (`robot_frames.needs_transforms`) "tf" and "tf_static" (the latter transient local, as tf2
    does); with `odometry` naming a topic, "odometry" (nav_msgs/Odometry, sensor-data QoS, which
    matches reliable and best-effort publishers alike)."""
    image_type = ("sensor_msgs/msg/CompressedImage" if settings.image_topic.endswith("/compressed")
                  else "sensor_msgs/msg/Image")
    topics = {"image": Topic(settings.image_topic, image_type, "sensor_data")}
    info_topic = subscribed_camera_info_topic(settings)
    if info_topic is not None:
        topics["camera_info"] = Topic(info_topic, "sensor_msgs/msg/CameraInfo", "sensor_data")
    if settings.use_depth:
        topics["depth"] = Topic(settings.depth_topic, "sensor_msgs/msg/Image", "sensor_data")
    topics["reset"] = Topic("relocalization/reset", "std_msgs/msg/Bool", "default")
    topics["relocalize"] = Topic("relocalization/relocalize", "std_msgs/msg/Empty", "default")
    if needs_transforms(settings):
        topics["tf"] = Topic("/tf", "tf2_msgs/msg/TFMessage", "default")
        topics["tf_static"] = Topic("/tf_static", "tf2_msgs/msg/TFMessage", "transient_local")
    topic = odometry_topic(settings)
    if topic is not None:
        topics["odometry"] = Topic(topic, ODOMETRY_TYPE, "sensor_data")
    return topics


class NodeLog(Protocol):
    """What the pipeline logs through: rclpy's node logger or a `logging.Logger`."""

    def info(self, message: str) -> Any: ...

    def warning(self, message: str) -> Any: ...


def build_policy(settings: NodeSettings, relocalizer: Relocalizer, log: NodeLog) -> PosePolicy:
    """The pose policy of the parameters, with the checkpoint's calibrated σ limits where the
    parameters leave them NaN; logs what it is."""
    position, rotation, source = policy_limits(settings.max_position_sigma, settings.max_rotation_sigma,
                                               calibration_report(relocalizer.model_path))
    policy = PosePolicy(position, rotation, settings.publish_unknown)
    log.info(f"{policy.describe()}; σ limits: {source}")
    return policy


def build_relocalizer(settings: NodeSettings) -> Relocalizer:
    """The Relocalizer the parameters describe (checkpoint, device, precision, runtime, MC samples,
    smoothing with or without odometry, and loop-closure overrides). Raises ValueError when the model
    needs depth and use_depth is off, and when odometry is configured for a temporal model without fusion
    parameters (`Relocalizer`'s odometry_noise)."""
    relocalizer = Relocalizer(settings.model, device=settings.device, precision=settings.precision,  # type: ignore[arg-type]
                              mc_samples=None if settings.mc_samples < 0 else settings.mc_samples,
                              smoothing=settings.smoothing,
                              smoothing_reset_unknown=settings.smoothing_reset_unknown,
                              runtime=settings.runtime,  # type: ignore[arg-type]
                              exported_model=settings.exported_model or None, fast_path=settings.fast_path,
                              odometry_noise=odometry_noise(settings) if odometry_source(settings) else None)
    overrides = {name: value for name, value in (("enter_score", settings.loop_closure_enter_score),
                                                 ("leave_score", settings.loop_closure_leave_score),
                                                 ("min_frames", settings.loop_closure_min_frames or math.nan))
                 if not math.isnan(value)}
    if overrides:
        relocalizer.set_loop_closure(dataclasses.replace(relocalizer.loop_closure, **overrides))
    if relocalizer.needs_depth and not settings.use_depth:
        raise ValueError(f"{relocalizer.model_path} needs a depth image with every frame: set use_depth "
                         "to true and depth_topic to the depth image topic")
    return relocalizer


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class LatestSlot(Generic[T]):
    """A drop-oldest FIFO queue, by default of depth 1 (it keeps the newest item): `put` on a full
    queue displaces (and returns) the oldest waiting item. `capacity=None`: unbounded (bag replay,
    where every frame is processed)."""

    def __init__(self, capacity: int | None = 1) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"queue capacity must be >= 1 or None, got {capacity}")
        self._items: deque[T] = deque()
        self._capacity = capacity
        self._closed = False
        self._condition = threading.Condition()

    def put(self, item: T) -> T | None:
        """Store `item`; returns the item it displaced (dropped unprocessed), if any."""
        with self._condition:
            displaced = None
            if self._capacity is not None and len(self._items) >= self._capacity:
                displaced = self._items.popleft()
            self._items.append(item)
            self._condition.notify()
            return displaced

    def take(self, timeout: float | None = None) -> T | None:
        """The oldest waiting item, waiting up to `timeout` seconds (None: forever); None if there
        is none or the queue is closed."""
        with self._condition:
            self._condition.wait_for(lambda: bool(self._items) or self._closed, timeout)
            return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        with self._condition:
            return len(self._items)

    def close(self) -> None:
        """Wake every waiting `take` (which then returns what is left, or None)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class StampPairer(Generic[T]):
    """Approximate-time pairing of two streams (image, depth) by stamp.

    An image is paired with the buffered depth of nearest stamp within `slop_ns`, as soon as one is
    there (depth usually arrives after the image, or just before). Pairing consumes both and
    discards everything older on both sides. An image that can no longer be paired (a depth newer
    than its stamp + slop has arrived, so assuming in-order depth, no closer one will) and items
    pushed out of the buffers (`capacity` each) are returned by `add_*` as unpaired.
    """

    def __init__(self, slop_ns: int, capacity: int = 8) -> None:
        self.slop_ns = int(slop_ns)
        self._images: deque[tuple[int, T]] = deque(maxlen=capacity)
        self._depths: deque[tuple[int, T]] = deque(maxlen=capacity)

    def add_image(self, stamp_ns: int, item: T) -> tuple[list[tuple[T, T]], int]:
        """Buffer an image; returns (pairs (image, depth) now complete, images given up)."""
        lost = int(len(self._images) == self._images.maxlen)
        self._images.append((stamp_ns, item))
        return self._match(lost)

    def add_depth(self, stamp_ns: int, item: T) -> tuple[list[tuple[T, T]], int]:
        """Buffer a depth image; returns (pairs (image, depth) now complete, images given up)."""
        self._depths.append((stamp_ns, item))
        return self._match(0)

    def _match(self, lost: int) -> tuple[list[tuple[T, T]], int]:
        pairs: list[tuple[T, T]] = []
        while self._images and self._depths:
            stamp, image = self._images[0]
            j = min(range(len(self._depths)), key=lambda k: abs(self._depths[k][0] - stamp))
            if abs(self._depths[j][0] - stamp) <= self.slop_ns:
                pairs.append((image, self._depths[j][1]))
                self._images.popleft()
                for _ in range(j + 1):
                    self._depths.popleft()
            elif self._depths[-1][0] > stamp + self.slop_ns:
                self._images.popleft()  # every later depth is further away
                lost += 1
            else:
                break
        return pairs, lost


class ThrottledWarnings:
    """At most one warning per `key` every `period_s` seconds, saying how many were suppressed."""

    def __init__(self, log: NodeLog, period_s: float = WARNING_PERIOD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log, self._period, self._clock = log, period_s, clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, key: str, message: str) -> bool:
        """Log `message` unless `key` was logged less than `period_s` ago; True if logged."""
        now = self._clock()
        if now - self._last.get(key, -math.inf) < self._period:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        suppressed = self._suppressed.pop(key, 0)
        self._last[key] = now
        self._log.warning(message + (f" ({suppressed} more since the last warning)" if suppressed else ""))
        return True


class RejectedFrame(ValueError):
    """A frame the node cannot use: which stream ("image" or "depth") and which kind of problem."""

    def __init__(self, stream: str, problem: ImageProblem, message: str) -> None:
        super().__init__(f"{stream}: {message}")
        self.stream, self.problem = stream, problem


@dataclass
class Frame:
    """One input frame waiting for the worker: the raw messages, the image's stamp (ns) and when
    the callback received it (`time.monotonic()` seconds)."""

    image_msg: Any
    depth_msg: Any | None
    stamp_ns: int
    received_s: float


class NodeDiagnostics:
    """Thread-safe counters and latencies of the node, reported on /diagnostics.

    received: image messages received; processed: frames answered (their verdict on
    relocalization/status, their pose unless withheld); withheld_<reason>: poses withheld by the
    policy, per reason; initial_poses: poses sent to initialpose; dropped: frames replaced in the
    queue by a newer one before the worker took them; rejected: frames that could not be used;
    unpaired: images without a depth within the slop; failed: frames whose processing raised an
    unexpected error; duplicate: images (or depth images) with the stamp of the one before, ignored
    (a sender re-sending a frame, e.g. `play` in lock-step mode until the node has discovered it);
    no_transform: frames dropped because base <- camera at their stamp was missing or stale;
    no_map_odom: frames answered without their map -> odom transform (odom <- base missing at their stamp);
    odometry_missing: frames smoothed with the learned motion because the odometry at their stamp was
    missing; odometry_rejected: nav_msgs/Odometry messages that could not be used;
    withheld_<reason>: frames answered without a pose by the no-fix policy; initial_poses: poses sent
    to initialpose; camera_info_rejected (not a frame count): CameraInfo messages dropped
    (query_camera.py). latency: callback receipt -> the frame's outputs published (ms).
    """

    COUNTERS = ("received", "processed", "dropped", "rejected", "unpaired", "failed", "duplicate",
                "no_transform", "no_map_odom", "odometry_missing", "odometry_rejected",
                *(f"withheld_{reason}" for reason in REASONS if reason != CONFIDENT),
                "initial_poses", "camera_info_rejected")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self._latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._period_start = clock()
        self._period_counts = dict(self.counts)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def processed(self, latency_ms: float) -> None:
        with self._lock:
            self.counts["processed"] += 1
            self._latencies_ms.append(latency_ms)

    def snapshot(self) -> dict[str, float]:
        """Counts, processing rate (poses/s) since the previous snapshot, latency p50/p99 (ms)."""
        with self._lock:
            now = self._clock()
            elapsed = now - self._period_start
            delta = {k: self.counts[k] - self._period_counts[k] for k in self.COUNTERS}
            self._period_start, self._period_counts = now, dict(self.counts)
            latencies = np.asarray(self._latencies_ms, np.float64)
            result: dict[str, float] = dict(self.counts)
            result["rate_hz"] = delta["processed"] / elapsed if elapsed > 0 else 0.0
            result["input_rate_hz"] = delta["received"] / elapsed if elapsed > 0 else 0.0
            result["latency_p50_ms"] = float(np.percentile(latencies, 50)) if latencies.size else math.nan
            result["latency_p99_ms"] = float(np.percentile(latencies, 99)) if latencies.size else math.nan
            result["dropped_in_period"] = delta["dropped"] + delta["unpaired"] + delta["no_transform"]
            result["rejected_in_period"] = delta["rejected"] + delta["failed"]
            result["withheld_in_period"] = sum(delta[k] for k in self.COUNTERS if k.startswith("withheld_"))
            return result


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------


class RelocalizationPipeline:
    """Callbacks, worker and outputs of the node over one Relocalizer.

    `publish(output_name, message)` sends a message built with `types` on `OUTPUTS[output_name]`;
    the runtime supplies it (rclpy publishers, DDS publishers, or a list in tests). Call `start()`
    to run the worker thread (or `process_next()` to step it yourself), `stop()` to end it.
    `queue_size`: frames waiting for the worker (1 in the node: a newer frame displaces a waiting
    one; None in bag replay, which steps the pipeline itself and drops nothing).
    `transforms`: where TF lookups go; None: the pipeline's own `tf_buffer`, fed by `on_tf` and
    `on_tf_static`. `odometry`: where the odometry is looked up (odometry.py; bag replay hands in the
    bag's); None: for "tf" the pipeline's `tf_buffer` (or, when `transforms` is tf2's, an own buffer
    also fed by `on_tf` / `on_tf_static`: `takes_tf`), for a topic an own buffer fed by `on_odometry`.
    """

    def __init__(self, settings: NodeSettings, relocalizer: Relocalizer, types: MessageTypes,
                 publish: Callable[[str, Any], None], log: NodeLog | None = None,
                 clock: Callable[[], float] = time.monotonic, queue_size: int | None = 1,
                 transforms: TransformLookup | None = None, odometry: TransformBuffer | None = None) -> None:
        self.settings = settings
        self.relocalizer = relocalizer
        self.types = types
        self.publish = publish
        self.log: NodeLog = log or logging.getLogger("posenet_ros.node")
        self.clock = clock
        self.diagnostics = NodeDiagnostics(clock)
        self.warnings = ThrottledWarnings(self.log, clock=clock)
        self.tf_buffer = TransformBuffer() if transforms is None else None
        self.transforms: TransformLookup = transforms or self.tf_buffer  # type: ignore[assignment]
        source = odometry_source(settings)
        self._tf_feeds = [buffer for buffer in (self.tf_buffer,) if buffer is not None]
        if odometry is None and source == "tf":
            odometry = self.tf_buffer or TransformBuffer()
            if odometry is not self.tf_buffer:
                self._tf_feeds.append(odometry)
        elif odometry is None and source is not None:
            odometry = TransformBuffer()
        self.odometry_buffer = odometry
        self.odometry: OdometryTracker | None = None
        if relocalizer.odometry_aided and odometry is not None:
            self.odometry = OdometryTracker.for_settings(settings, odometry)
            self.log.info(f"smoothing with odometry from {source}")
        elif source is not None:
            self.log.warning(f"odometry {source} is not used: "
                             + ("smoothing is off" if not settings.smoothing else
                                f"{relocalizer.model_path} has no temporal model"))
        self.query_camera = QueryCamera(subscribed_camera_info_topic(settings), self.diagnostics.count,
                                        self.warnings.warn, self.log)
        self._slot: LatestSlot[Frame] = LatestSlot(queue_size)
        self._pairer: StampPairer[tuple[Any, int, float]] = StampPairer(
            round(settings.max_depth_stamp_diff * 1e9))
        self._pair_lock = threading.Lock()
        self._last_received_ns: dict[str, int] = {}  # per kind ("image", "depth"), for duplicates
        self._last_stamp_ns: int | None = None
        self._reset_requested = threading.Event()
        self.policy = build_policy(settings, relocalizer, self.log)
        self.initial_pose = InitialPoseTrigger(settings.initial_pose_at_start,
                                               settings.initial_pose_lost_frames)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- callbacks (never block) ---------------------------------------------------------------

    def on_image(self, msg: Any) -> None:
        """Image callback: queue the frame (paired with depth when use_depth is on)."""
        received = self.clock()
        self.diagnostics.count("received")
        stamp = self._stamp(msg, "image")
        if stamp is None:
            return
        if not self.settings.use_depth:
            self._queue(Frame(msg, None, stamp, received))
            return
        with self._pair_lock:
            pairs, lost = self._pairer.add_image(stamp, (msg, stamp, received))
        self._queue_pairs(pairs, lost)

    def on_depth(self, msg: Any) -> None:
        """Depth callback: complete the pairs this depth image belongs to."""
        stamp = self._stamp(msg, "depth")
        if stamp is None:
            return
        with self._pair_lock:
            pairs, lost = self._pairer.add_depth(stamp, msg)
        self._queue_pairs(pairs, lost)

    def on_camera_info(self, msg: Any) -> None:
        """CameraInfo callback: the calibration of the next frames (query_camera.py)."""
        self.query_camera.on_camera_info(msg)

    def on_reset(self, msg: Any) -> None:
        """Reset callback (std_msgs/Bool): true makes the worker reset the stream before the next frame."""
        if getattr(msg, "data", False):
            self._reset_requested.set()

    def on_tf(self, msg: Any) -> None:
        """/tf callback (tf2_msgs/TFMessage): into the pipeline's own TF buffer."""
        self._add_transforms(msg, static=False)

    def on_tf_static(self, msg: Any) -> None:
        """/tf_static callback (tf2_msgs/TFMessage): static links, valid at every stamp."""
        self._add_transforms(msg, static=True)

    @property
    def takes_tf(self) -> bool:
        """Whether `on_tf` / `on_tf_static` feed a buffer of this pipeline (its own TF buffer, or the
        odometry's when the TF lookups go to tf2)."""
        return bool(self._tf_feeds)

    def _add_transforms(self, msg: Any, static: bool) -> None:
        assert self._tf_feeds, "TF goes to the transforms handed to the pipeline"
        topic = "/tf_static" if static else "/tf"
        for transform in getattr(msg, "transforms", ()):
            try:
                for buffer in self._tf_feeds:
                    buffer.add(transform, static)
            except (AttributeError, TypeError, ValueError) as error:
                self.diagnostics.count("rejected")
                self.warnings.warn(f"{topic}-rejected", f"ignored a transform on {topic}: {error}")

    def on_odometry(self, msg: Any) -> None:
        """Odometry callback (nav_msgs/Odometry on the `odometry` topic): its pose into the odometry
        buffer; a message that cannot be used (a pose that is not finite, other frame ids, no stamp) is
        counted as odometry_rejected, so its stamp has no odometry."""
        if self.odometry_buffer is None:
            return
        try:
            add_odometry_message(self.odometry_buffer, msg, self.settings.odom_frame,
                                 self.settings.base_frame)
        except (AttributeError, TypeError, ValueError) as error:
            self.diagnostics.count("odometry_rejected")
            self.warnings.warn("odometry-rejected", f"ignored a message on {self.settings.odometry}: {error}")

    def on_relocalize(self, msg: Any) -> None:
        """Trigger callback (std_msgs/Empty): send the next confident pose to initialpose."""
        self.request_relocalization()

    def request_relocalization(self) -> str:
        """Send the next confident pose to initialpose (once); returns what happens, for a service's
        answer."""
        fresh = self.initial_pose.request()
        message = ("relocalization requested" if fresh else "relocalization already requested") + (
            f": the next confident pose goes to {OUTPUTS['initial_pose'].name}")
        self.log.info(message)
        return message

    def _stamp(self, msg: Any, kind: str) -> int | None:
        """The message's stamp (ns); None for a message to ignore: no valid stamp (none, or nanosec
        not below 1e9: rejected) or the stamp of the previous message of this kind (duplicate)."""
        try:
            stamp = stamp_to_ns(msg.header.stamp)
            # nanosec >= 1e9 is no time (and near the end of int32 sec the outputs' stamps overflow)
            if not 0 <= int(msg.header.stamp.nanosec) < 1_000_000_000:
                raise ValueError(f"nanosec {msg.header.stamp.nanosec} is not below 1e9")
        except (AttributeError, TypeError, ValueError) as error:
            self.diagnostics.count("rejected")
            self.warnings.warn(f"{kind}-stamp",
                               f"dropped {_A_MESSAGE_OF[kind]} message without a valid header stamp: {error}")
            return None
        with self._pair_lock:
            duplicate = self._last_received_ns.get(kind) == stamp
            self._last_received_ns[kind] = stamp
        if duplicate:
            self.diagnostics.count("duplicate")
            self.warnings.warn(f"{kind}-duplicate", f"ignored {_A_MESSAGE_OF[kind]} message with the "
                               f"stamp of the one before ({_seconds(stamp)})")
            return None
        return stamp

    def _queue_pairs(self, pairs: list[tuple[tuple[Any, int, float], Any]], lost: int) -> None:
        if lost:
            self.diagnostics.count("unpaired", lost)
            self.warnings.warn("unpaired", f"dropped {lost} image(s) without a depth image within "
                               f"{self.settings.max_depth_stamp_diff} s of their stamp")
        for (image, stamp, received), depth in pairs:
            self._queue(Frame(image, depth, stamp, received))

    def _queue(self, frame: Frame) -> None:
        if self._slot.put(frame) is not None:
            self.diagnostics.count("dropped")

    # -- worker --------------------------------------------------------------------------------

    def start(self) -> None:
        """Publish the map poses, then run the worker thread."""
        self.publish_map_poses()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="relocalization-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker after the frame it is processing."""
        self._stop.set()
        self._slot.close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.process_next(timeout=0.1)

    def queued(self) -> int:
        """Frames waiting for the worker."""
        return len(self._slot)

    def process_next(self, timeout: float | None = None) -> PoseEstimate | None:
        """Take the next queued frame (waiting up to `timeout` s) and publish its pose; None if
        there was no frame or it was rejected. Never raises for a bad frame."""
        frame = self._slot.take(timeout)
        if frame is None:
            return None
        decoded = self._decoded([frame])
        if not decoded:
            return None
        frame, rgb, depth = decoded[0]
        camera = self.query_camera.for_image(rgb.shape[1], rgb.shape[0])
        return self._finish(frame, functools.partial(self.relocalizer.process, rgb, depth,
                                                     stamp_ns=frame.stamp_ns, camera=camera))

    def process_batch(self, max_frames: int) -> list[PoseEstimate]:
        """Bag replay's batched step: up to `max_frames` queued frames through the network as one
        batch (`Relocalizer.infer_batch`), then each in stream order through the stream checks, the
        loop-closure hysteresis and smoothing, and published: the same poses as `process_next` frame by
        frame. Frames of another size than the first, and models that cannot batch, go one by one.
        Returns the estimates of the frames that were answered; never raises for a bad frame."""
        frames = [frame for frame in (self._slot.take(0) for _ in range(min(max_frames, len(self._slot))))
                  if frame is not None]
        decoded = self._decoded(frames)
        positions = [i for i, (_, rgb, _) in enumerate(decoded) if rgb.shape == decoded[0][1].shape]
        cameras = [self.query_camera.for_image(rgb.shape[1], rgb.shape[0]) for _, rgb, _ in decoded]
        batch, batched = None, {}  # batched: position in `decoded` -> index in the batch
        if len(positions) > 1 and self.relocalizer.batches:
            try:
                start = time.perf_counter()
                prepared = self.relocalizer.prepare_batch([decoded[i][1] for i in positions],
                                                          [decoded[i][2] for i in positions],
                                                          [decoded[i][0].stamp_ns for i in positions],
                                                          cameras[positions[0]])
                batch = self.relocalizer.infer_batch(prepared, start)
                batched = {position: index for index, position in enumerate(positions)}
            except Exception:  # a frame the batch cannot take: every frame goes on its own below
                batch = None
        estimates = []
        for position, (frame, rgb, depth) in enumerate(decoded):
            if position in batched:
                estimate_pose = functools.partial(self.relocalizer.finish, batch, batched[position])
            else:
                estimate_pose = functools.partial(self.relocalizer.process, rgb, depth,
                                                  stamp_ns=frame.stamp_ns, camera=cameras[position])
            estimate = self._finish(frame, estimate_pose)
            if estimate is not None:
                estimates.append(estimate)
        return estimates

    def _decoded(self, frames: list[Frame]) -> list[tuple[Frame, np.ndarray, np.ndarray | None]]:
        """The frames' images as arrays; the frames that cannot be decoded are counted and logged."""
        decoded = []
        for frame in frames:
            try:
                decoded.append((frame, *self._decode(frame)))
            except RejectedFrame as rejection:
                self.diagnostics.count("rejected")
                self.warnings.warn(f"rejected-{rejection.stream}-{rejection.problem.name}",
                                   f"dropped frame {_seconds(frame.stamp_ns)}: {rejection}")
        return decoded

    def _finish(self, frame: Frame,
                estimate_pose: Callable[..., PoseEstimate]) -> PoseEstimate | None:
        """The stream checks, `estimate_pose(odometry=...)` (the frame's odometry, None without) and
        publishing for one frame, in stream order; a failure is counted and logged and the node keeps
        running."""
        try:
            links = look_up_links(self.settings, self.transforms,
                                  camera_frame_of(self.settings, frame.image_msg), frame.stamp_ns)
        except TransformUnavailable as error:
            self.diagnostics.count("no_transform")
            self.warnings.warn("no_transform", f"dropped frame {_seconds(frame.stamp_ns)}: {error}"
                               + (" (a camera without a robot: base_frame '' publishes its pose, no TF)"
                                  if self.settings.base_frame else ""))
            return None
        try:
            self._check_stream(frame.stamp_ns)
            step = self._odometry_step(frame.stamp_ns, links)
            estimate = estimate_pose(odometry=None if step is None else step.odometry)
            if step is not None:
                if estimate.odometry_fallback:
                    self.diagnostics.count("odometry_missing")
                    self.warnings.warn("odometry_missing", f"no odometry for frame "
                                       f"{_seconds(frame.stamp_ns)} ({step.problem}): smoothed with the "
                                       "learned motion")
            self._publish_estimate(estimate, frame, links)
        except Exception as error:  # the node keeps running; the problem is counted and logged
            self.diagnostics.count("failed")
            self.warnings.warn(f"failed-{type(error).__name__}",
                               f"processing frame {_seconds(frame.stamp_ns)} failed: "
                               f"{type(error).__name__}: {error}")
            return None
        self.diagnostics.processed(1e3 * (self.clock() - frame.received_s))
        return estimate

    def _odometry_step(self, stamp_ns: int, links: FrameLinks) -> OdometryStep | None:
        """The frame's odometry; None without odometry-aided smoothing. With odometry tf, a frame whose
        odom -> base lookup for map -> odom (`look_up_links`) already waited transform_timeout in vain is
        not waited on a second time for the same link (the odometry's buffer is fed by the same /tf):
        in an odometry outage two waits per frame halved the frames the node answered at 10 Hz."""
        if self.odometry is None:
            return None
        assert links.base_from_camera is not None  # parameters.py: odometry needs base_frame
        waited = bool(links.odom_problem) and odometry_source(self.settings) == "tf"
        return self.odometry.lookup(stamp_ns, links.base_from_camera, timeout_s=0.0 if waited else None)

    def _decode(self, frame: Frame) -> tuple[np.ndarray, np.ndarray | None]:
        """The frame's RGB (H, W, 3) uint8 and depth (H, W) float32 metres (None without depth), as
        the model reads them; raises RejectedFrame naming the stream and the kind of problem."""
        try:
            rgb = message_to_rgb(frame.image_msg)
        except ImageConversionError as error:
            raise RejectedFrame("image", error.problem, str(error)) from None
        depth = None
        if frame.depth_msg is not None:
            try:
                depth = depth_to_metres(frame.depth_msg)
            except ImageConversionError as error:
                raise RejectedFrame("depth", error.problem, str(error)) from None
            if depth.shape != rgb.shape[:2]:
                raise RejectedFrame("depth", ImageProblem.SIZE_MISMATCH,
                                    f"depth image of {depth.shape[1]}x{depth.shape[0]} px does not match "
                                    f"the {rgb.shape[1]}x{rgb.shape[0]} px image it is paired with")
        try:
            self.relocalizer.check_frame(rgb, depth)
        except ValueError as error:
            raise RejectedFrame("image", ImageProblem.UNUSABLE, str(error)) from None
        return rgb, depth

    def _check_stream(self, stamp_ns: int) -> None:
        """Reset the stream state on request, or after a gap longer than reset_gap or a stamp going
        backwards."""
        if self._reset_requested.is_set():
            self._reset_requested.clear()
            self._reset_stream()
            self.log.info(f"stream reset on request before {_seconds(stamp_ns)}")
            self._last_stamp_ns = None
        last, self._last_stamp_ns = self._last_stamp_ns, stamp_ns
        if last is not None and not 0 <= stamp_ns - last <= self.settings.reset_gap * 1e9:
            self._reset_stream()
            self.log.info(f"stream reset: stamp {_seconds(stamp_ns)} after {_seconds(last)}")

    def _reset_stream(self) -> None:
        self.relocalizer.reset()

    # -- outputs -------------------------------------------------------------------------------

    def _publish_estimate(self, estimate: PoseEstimate, frame: Frame, links: FrameLinks) -> None:
        types, settings, stamp = self.types, self.settings, frame.stamp_ns
        decision = self.policy.decide(estimate.known_place, estimate.covariance_66)
        initial_pose = self.initial_pose.update(decision.confident)
        self.publish("status", self._status(decision, estimate.known_place, stamp, initial_pose is not None))
        published = robot_pose(settings, links, stamp, estimate.position_3, estimate.quat_wxyz_4,
                               estimate.covariance_66)
        if publishes_map_odom(settings) and links.odom_from_base is None:
            self.diagnostics.count("no_map_odom")
            self.warnings.warn("no_map_odom", f"no {settings.map_frame} -> {settings.odom_frame} for frame "
                               f"{_seconds(stamp)}: {links.odom_problem}")
        pose = pose_with_covariance_stamped(types, stamp, settings.map_frame, published.position_3,
                                            published.quat_wxyz_4, published.covariance_66)
        if decision.published:
            self.publish("pose", pose)
            self.publish("camera_pose", pose_with_covariance_stamped(
                types, stamp, settings.map_frame, estimate.position_3, estimate.quat_wxyz_4,
                estimate.covariance_66))
        else:
            self.diagnostics.count(f"withheld_{decision.reason}")
        if initial_pose is not None:
            self.publish("initial_pose", pose)
            self.diagnostics.count("initial_poses")
            self.log.info(f"sent the pose of {_seconds(stamp)} to {OUTPUTS['initial_pose'].name} "
                          f"({INITIAL_POSE_CAUSES[initial_pose]})")
        self.publish("loop_closure", bool_msg(types, estimate.known_place))
        self.publish("uncertainty", float64_msg(types, estimate.uncertainty_m))
        if estimate.scene_points_N3 is not None:  # scene coordinate regression: its inliers, map frame
            self.publish("scene_points", point_cloud2(types, stamp, settings.map_frame,
                                                      estimate.scene_points_N3))
        if published.transforms and decision.published:
            self.publish("tf", tf_message(types, [
                transform_stamped(types, t.stamp_ns, t.parent, t.child,
                                  *position_quat_from_pose(t.parent_from_child))
                for t in published.transforms]))

    def _status(self, decision: PolicyDecision, known_place: bool, stamp_ns: int, initial_pose: bool) -> Any:
        """relocalization/status: the policy's verdict on one frame (a DiagnosticArray stamped with the
        image's stamp; its status's message is the reason, level OK when confident, WARN otherwise)."""
        values = {"reason": decision.reason, "published": str(decision.published).lower(),
                  "known_place": str(bool(known_place)).lower(), "initial_pose": str(initial_pose).lower(),
                  "sigma_position_m": f"{decision.sigma_position_m:.6g}",
                  "sigma_rotation_deg": f"{decision.sigma_rotation_deg:.6g}",
                  "max_position_sigma_m": f"{self.policy.max_position_sigma_m:g}",
                  "max_rotation_sigma_deg": f"{self.policy.max_rotation_sigma_deg:g}"}
        return diagnostic_array(self.types, stamp_ns, STATUS_NAME, str(self.relocalizer.device),
                                "OK" if decision.confident else "WARN", decision.reason, values)

    def publish_map_poses(self, stamp_ns: int | None = None) -> None:
        """The training camera poses stored in the checkpoint, as a PoseArray in the map frame,
        stamped `stamp_ns` (None: now, the node at start; bag replay gives its first frame's stamp)."""
        poses = self.relocalizer.map_poses_N7
        if not len(poses):
            return
        stamp_ns = time.time_ns() if stamp_ns is None else stamp_ns
        try:
            message = pose_array(self.types, stamp_ns, self.settings.map_frame, poses)
        except ValueError as error:  # e.g. a zero quaternion: the node still relocalizes
            self.log.warning(f"the checkpoint's map poses cannot be published: {error}")
            return
        self.publish("map_poses", message)

    def publish_diagnostics(self) -> dict[str, float]:
        """Publish one DiagnosticArray (call every diagnostics_period); returns the figures."""
        figures = self.diagnostics.snapshot()
        device = str(self.relocalizer.device)
        level, message = "OK", f"{figures['rate_hz']:.1f} poses/s"
        if figures["withheld_in_period"]:
            message += f", {figures['withheld_in_period']:.0f} withheld"
        if figures["rejected_in_period"] or figures["dropped_in_period"]:
            level = "WARN"
            message += (f", {figures['dropped_in_period']:.0f} frames dropped, "
                        f"{figures['rejected_in_period']:.0f} rejected in the last period")
        values = {key: f"{value:.3f}" if isinstance(value, float) else str(value)
                  for key, value in figures.items()}
        values.update(device=device, runtime=self.relocalizer.runtime, model=str(self.relocalizer.model_path),
                      mc_samples=str(self.relocalizer.uncertainty.mc_samples),
                      camera=self.query_camera.source)
        self.publish("diagnostics", diagnostic_array(
            self.types, time.time_ns(), "posenet_ros: relocalization", device, level, message, values))
        return figures


_A_MESSAGE_OF = {"image": "an image", "depth": "a depth image"}  # "ignored an image message"


def _seconds(stamp_ns: int) -> str:
    return f"{stamp_ns / 1e9:.3f} s"
