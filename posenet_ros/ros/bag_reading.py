"""Reading a rosbag2 for replay and training: the camera stream, its ground-truth trajectory, and the
timestamp association between them. No ROS installation needed (the `rosbags` library).

    with open_bag(path) as reader:
        streams = select_streams(reader, path)                   # image / depth / camera_info topics
        trajectory = read_trajectory(reader, path, gt_topic=None)  # /ground_truth/pose by default
        for kind, msg in stream_messages(reader, streams): ...   # ("image" | "depth", message)
        transforms = read_transforms(reader, path)               # /tf and /tf_static: a TransformBuffer
        position_N3, quat_N4, valid_N = trajectory.at(stamps_ns, max_gap_s=0.1)

Ground truth comes from a topic of geometry_msgs PoseStamped, PoseWithCovarianceStamped,
TransformStamped or nav_msgs Odometry (`gt_topic`), or from the transform PARENT -> CHILD in /tf and
/tf_static (`gt_tf`; stored directly or as its inverse). Poses are world_from_cam in the map frame:
position in metres, quaternion (w, x, y, z). A frame is associated with the ground truth at its
header stamp: the pose stamped exactly then, or the interpolation (linear in position, slerp in
rotation) between the neighbouring ground-truth poses when they are at most `max_gap_s` apart;
otherwise the frame has no ground truth.

Every problem with a bag (missing or truncated file, missing topic, unexpected type, no ground truth,
no overlap between the images and the ground truth) is a ValueError (FileNotFoundError for a missing
path) whose message lists the bag's topics and types where that helps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from rosbags.highlevel import AnyReader, AnyReaderError

from posenet_ros.core.camera import Intrinsics
from posenet_ros.core.geometry import quat_conjugate, quat_exp, quat_log, quat_multiply, quat_normalize
from posenet_ros.ros.camera_info import camera_from_camera_info, camera_info_topic
from posenet_ros.ros.conversions import pose_from_msg, stamp_to_ns
from posenet_ros.ros.dds_types import typestore
from posenet_ros.ros.tf_buffer import TransformBuffer

__all__ = ["BagStreams", "Trajectory", "bag_topics", "describe_topics", "ground_truth_topics", "open_bag",
           "read_camera_info", "read_messages", "read_trajectory", "read_transforms", "select_streams",
           "stream_messages",
           "trajectory_from_messages"]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF = "tf2_msgs/msg/TFMessage"
TF_TOPIC, TF_STATIC_TOPIC = "/tf", "/tf_static"
GROUND_TRUTH_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped",
                      "geometry_msgs/msg/TransformStamped", "nav_msgs/msg/Odometry")
DEFAULT_IMAGE_TOPICS = ("/camera/image_raw", "/camera/image_raw/compressed")
DEFAULT_DEPTH_TOPIC = "/camera/depth/image_raw"
DEFAULT_GT_TOPIC = "/ground_truth/pose"
DEFAULT_MAX_GAP_S = 0.1


def _check_bag_path(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    if path.is_dir():
        if not (path / "metadata.yaml").is_file():
            raise ValueError(f"{path} is not a rosbag2 (no metadata.yaml in the folder)")
    elif path.suffix == ".bag":
        raise ValueError(f"{path} is a ROS 1 bag; convert it to rosbag2 first (e.g. with rosbags-convert)")
    elif path.suffix not in (".mcap", ".db3"):
        raise ValueError(
            f"{path} is not a rosbag2 (expected a bag folder with metadata.yaml, or a .mcap or .db3 file)"
        )


@contextmanager
def open_bag(bag: str | Path) -> Iterator[AnyReader]:
    """Open rosbag2 ``bag`` (folder, ``.mcap`` or ``.db3``) with AnyReader; closes it on exit.

    Raises FileNotFoundError for a missing path and ValueError for anything that is not a readable
    rosbag2 (one line naming the problem). Messages of bags without stored type definitions are
    deserialised with the ROS 2 Humble typestore.
    """
    path = Path(bag)
    _check_bag_path(path)
    try:
        reader = AnyReader([path], default_typestore=typestore())
        reader.open()
    except AnyReaderError as err:
        raise ValueError(f"cannot read bag {path}: {err}") from None
    try:
        yield reader
    finally:
        reader.close()


def bag_topics(reader: Any) -> dict[str, str]:
    """topic -> message type of every connection (the first type where a topic has several)."""
    topics: dict[str, str] = {}
    for connection in reader.connections:
        topics.setdefault(connection.topic, connection.msgtype)
    return topics


def describe_topics(topics: dict[str, str]) -> str:
    """'/a [pkg/msg/A], /b [pkg/msg/B]' or 'none'."""
    return ", ".join(f"{topic} [{type_name}]" for topic, type_name in sorted(topics.items())) or "none"


def _require(topics: dict[str, str], path: Path, topic: str, types: Sequence[str], what: str) -> str:
    if topic not in topics:
        raise ValueError(f"bag {path} has no {what} topic {topic}; it has: {describe_topics(topics)}")
    if topics[topic] not in types:
        raise ValueError(f"{what} topic {topic} in bag {path} has type {topics[topic]}; expected "
                         f"{' or '.join(types)}")
    return topics[topic]


@dataclass(frozen=True)
class BagStreams:
    """The camera topics of a bag: image (Image or CompressedImage), optional depth and camera info."""

    image_topic: str
    image_type: str
    depth_topic: str | None
    camera_info_topic: str | None
    image_count: int


def select_streams(reader: Any, path: str | Path, image_topic: str | None = None,
                   depth_topic: str | None = None, use_depth: bool = False) -> BagStreams:
    """Pick and check the camera topics. `image_topic` None: /camera/image_raw, else its /compressed
    sibling, else the only Image or CompressedImage topic. Depth is read only when `use_depth`
    (`depth_topic` None: /camera/depth/image_raw). Camera info: the `camera_info` topic next to the
    image topic when present."""
    path = Path(path)
    topics = bag_topics(reader)
    if image_topic is None:
        candidates = [t for t in DEFAULT_IMAGE_TOPICS if t in topics]
        if not candidates:
            candidates = [t for t, kind in topics.items() if kind in (IMAGE, COMPRESSED)]
        if len(candidates) != 1 and not (candidates and candidates[0] in DEFAULT_IMAGE_TOPICS):
            found = "none" if not candidates else "several: " + ", ".join(sorted(candidates))
            raise ValueError(f"cannot choose the image topic of bag {path} ({found}); pass it "
                             f"(--image-topic). The bag has: {describe_topics(topics)}")
        image_topic = candidates[0]
    image_type = _require(topics, path, image_topic, (IMAGE, COMPRESSED), "image")
    depth = None
    if use_depth:
        depth = depth_topic or DEFAULT_DEPTH_TOPIC
        _require(topics, path, depth, (IMAGE,), "depth")
    info: str | None = camera_info_topic(image_topic)
    if topics.get(info) != CAMERA_INFO:
        info = None
    count = sum(c.msgcount for c in reader.connections if c.topic == image_topic)
    if count == 0:
        raise ValueError(f"image topic {image_topic} of bag {path} has no messages")
    return BagStreams(image_topic, image_type, depth, info, count)


def read_messages(reader: Any, path: str | Path, topics: Sequence[str]) -> Iterator[tuple[Any, int, Any]]:
    """(connection, log time ns, deserialised message) of `topics` in log-time order; read errors ->
    ValueError."""
    connections = [c for c in reader.connections if c.topic in topics]
    try:
        for connection, log_time, raw in reader.messages(connections=connections):
            yield connection, log_time, reader.deserialize(raw, connection.msgtype)
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except Exception as error:  # rosbags raises several kinds for a damaged file
        raise ValueError(f"cannot read bag {path} (truncated or damaged?): {type(error).__name__}: "
                         f"{error}") from None


def stream_messages(reader: Any, path: str | Path, streams: BagStreams,
                    with_camera_info: bool = False) -> Iterator[tuple[str, Any]]:
    """("image" | "depth", message) in the bag's order, as a node subscribed to both receives them;
    with `with_camera_info` also ("camera_info", message) of `streams.camera_info_topic`."""
    kinds = {streams.image_topic: "image"}
    if streams.depth_topic:
        kinds[streams.depth_topic] = "depth"
    if with_camera_info and streams.camera_info_topic:
        kinds[streams.camera_info_topic] = "camera_info"
    types = {"image": streams.image_type, "depth": IMAGE, "camera_info": CAMERA_INFO}
    for connection, _, msg in read_messages(reader, path, list(kinds)):
        if connection.msgtype == types[kinds[connection.topic]]:
            yield kinds[connection.topic], msg


def read_transforms(reader: Any, path: str | Path) -> TransformBuffer:
    """Every transform on /tf and /tf_static (of type tf2_msgs/TFMessage) of the bag in a
    TransformBuffer that keeps them all, so that a replay can look transforms up at any frame's stamp
    (an empty buffer when the bag has neither topic). A transform that cannot be used (zero quaternion,
    empty frame name) is a ValueError naming the bag."""
    topics = bag_topics(reader)
    buffer = TransformBuffer(cache_time_s=None)
    tf_topics = [t for t in (TF_TOPIC, TF_STATIC_TOPIC) if topics.get(t) == TF]
    if not tf_topics:
        return buffer  # (read_messages of no topic would read every topic)
    for connection, _, msg in read_messages(reader, path, tf_topics):
        try:
            buffer.add_message(msg, static=connection.topic == TF_STATIC_TOPIC)
        except ValueError as error:
            raise ValueError(f"bag {path}, {connection.topic}: {error}") from None
    return buffer


def read_camera_info(reader: Any, path: str | Path, streams: BagStreams) -> Intrinsics | None:
    """The camera (K and distortion, ros/camera_info.py) of the first CameraInfo message, or None
    without one. Raises CameraInfoError (a ValueError) for a message that describes no usable camera."""
    if streams.camera_info_topic is None:
        return None
    for _, _, msg in read_messages(reader, path, [streams.camera_info_topic]):
        return camera_from_camera_info(msg)
    return None


@dataclass
class Trajectory:
    """Ground-truth poses sorted by stamp: stamp_ns (M,) int64, position_M3 (metres), quat_M4 (unit
    w, x, y, z, signs made continuous), of world_from_cam in the map frame; `source` says where
    they came from."""

    stamp_ns: np.ndarray
    position_M3: np.ndarray
    quat_M4: np.ndarray
    source: str

    def __post_init__(self) -> None:
        order = np.argsort(self.stamp_ns, kind="stable")
        self.stamp_ns = np.asarray(self.stamp_ns, np.int64)[order]
        self.position_M3 = np.asarray(self.position_M3, np.float64).reshape(-1, 3)[order]
        quat = quat_normalize(np.asarray(self.quat_M4, np.float64).reshape(-1, 4)[order])
        for i in range(1, len(quat)):  # the same rotation, on the side of the previous sample
            if quat[i] @ quat[i - 1] < 0:
                quat[i] = -quat[i]
        self.quat_M4 = quat

    def __len__(self) -> int:
        return len(self.stamp_ns)

    def at(self, stamps_ns: ArrayLike, max_gap_s: float = DEFAULT_MAX_GAP_S
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position_N3, quat_N4 with w >= 0, valid_N) at each stamp: the exact pose, or the
        interpolation between neighbours at most `max_gap_s` apart; NaN rows where not valid."""
        stamps = np.asarray(stamps_ns, np.int64).reshape(-1)
        position = np.full((len(stamps), 3), np.nan)
        quat = np.full((len(stamps), 4), np.nan)
        if len(self) == 0:
            return position, quat, np.zeros(len(stamps), bool)
        right = np.clip(np.searchsorted(self.stamp_ns, stamps, side="left"), 0, len(self) - 1)
        exact = self.stamp_ns[right] == stamps
        left = np.clip(right - 1, 0, len(self) - 1)
        inside = (self.stamp_ns[left] < stamps) & (stamps < self.stamp_ns[right])
        inside &= (self.stamp_ns[right] - self.stamp_ns[left]) <= round(max_gap_s * 1e9)
        position[exact], quat[exact] = self.position_M3[right[exact]], self.quat_M4[right[exact]]
        if inside.any():
            i0, i1 = left[inside], right[inside]
            t = ((stamps[inside] - self.stamp_ns[i0]) / (self.stamp_ns[i1] - self.stamp_ns[i0]))[:, None]
            position[inside] = (1 - t) * self.position_M3[i0] + t * self.position_M3[i1]
            q0 = self.quat_M4[i0]
            relative = quat_log(quat_multiply(self.quat_M4[i1], quat_conjugate(q0)))
            quat[inside] = quat_multiply(quat_exp(t * relative), q0)
        valid = exact | inside
        quat[valid] = quat_normalize(quat[valid])
        quat[valid & (quat[:, 0] < 0)] *= -1
        return position, quat, valid


def _pose_arrays(samples: list[tuple[int, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stamps = np.array([stamp for stamp, _ in samples], np.int64)
    poses = [pose_from_msg(msg) for _, msg in samples]
    position = np.array([p for p, _ in poses]).reshape(-1, 3)
    return stamps, position, np.array([q for _, q in poses]).reshape(-1, 4)


def _invert(position_N3: np.ndarray, quat_N4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inverse = quat_conjugate(quat_normalize(quat_N4))
    rotated = quat_multiply(quat_multiply(inverse, np.concatenate([np.zeros((len(position_N3), 1)),
                                                                   position_N3], 1)), quat_normalize(quat_N4))
    return -rotated[:, 1:], inverse


def ground_truth_topics(reader: Any, path: str | Path, gt_topic: str | None = None,
                        gt_tf: tuple[str, str] | None = None) -> list[str]:
    """The topics `read_trajectory` reads: `gt_topic` (default /ground_truth/pose, of a ground-truth
    type) or, for the /tf transform `gt_tf` = (parent, child), /tf and /tf_static. ValueError listing
    the bag's topics when they are missing."""
    path = Path(path)
    topics = bag_topics(reader)
    if gt_tf is None:
        topic = gt_topic or DEFAULT_GT_TOPIC
        _require(topics, path, topic, GROUND_TRUTH_TYPES, "ground-truth")
        return [topic]
    parent, child = (name.lstrip("/") for name in gt_tf)
    tf_topics = [t for t in ("/tf", "/tf_static") if topics.get(t) == TF]
    if not tf_topics:
        raise ValueError(f"bag {path} has no /tf topic for --gt-tf {parent} {child}; it has: "
                         f"{describe_topics(topics)}")
    return tf_topics


def trajectory_from_messages(path: str | Path, messages: Iterable[Any], topics: Sequence[str],
                             gt_tf: tuple[str, str] | None = None) -> Trajectory:
    """The Trajectory in `messages`, the deserialised messages of `topics` (`ground_truth_topics`
    with the same `gt_tf`) in the bag's order; ValueError when they hold none."""
    path = Path(path)
    if gt_tf is None:
        samples = [(stamp_to_ns(msg.header.stamp), msg) for msg in messages]
        if not samples:
            raise ValueError(f"ground-truth topic {topics[0]} of bag {path} has no messages")
        stamps, position, quat = _pose_arrays(samples)
        return Trajectory(stamps, position, quat, topics[0])
    parent, child = (name.lstrip("/") for name in gt_tf)
    forward: list[tuple[int, Any]] = []
    backward: list[tuple[int, Any]] = []
    seen: set[tuple[str, str]] = set()
    for msg in messages:
        for transform in msg.transforms:
            pair = (transform.header.frame_id.lstrip("/"), transform.child_frame_id.lstrip("/"))
            seen.add(pair)
            if pair == (parent, child):
                forward.append((stamp_to_ns(transform.header.stamp), transform))
            elif pair == (child, parent):
                backward.append((stamp_to_ns(transform.header.stamp), transform))
    if not forward and not backward:
        pairs = ", ".join(f"{a} -> {b}" for a, b in sorted(seen)) or "none"
        raise ValueError(f"bag {path} has no transform {parent} -> {child} in {' and '.join(topics)}; "
                         f"transforms found: {pairs}")
    if forward:
        stamps, position, quat = _pose_arrays(forward)
    else:
        stamps, position, quat = _pose_arrays(backward)
        position, quat = _invert(position, quat)
    return Trajectory(stamps, position, quat, f"/tf {parent} -> {child}")


def read_trajectory(reader: Any, path: str | Path, gt_topic: str | None = None,
                    gt_tf: tuple[str, str] | None = None) -> Trajectory:
    """The ground truth of a bag from `gt_topic` (default /ground_truth/pose) or the /tf transform
    `gt_tf` = (parent, child); the stamps are the messages' header stamps."""
    topics = ground_truth_topics(reader, path, gt_topic, gt_tf)
    messages = (msg for _, _, msg in read_messages(reader, path, topics))
    return trajectory_from_messages(path, messages, topics, gt_tf)


def check_overlap(trajectory: Trajectory, image_stamps_ns: ArrayLike, valid_N: ArrayLike, path: str | Path,
                  image_topic: str) -> None:
    """ValueError when no image has ground truth, naming both time ranges."""
    stamps = np.asarray(image_stamps_ns, np.int64)
    if len(stamps) and np.asarray(valid_N, bool).any():
        return
    def span(values: np.ndarray) -> str:
        return f"{values.min() / 1e9:.3f}..{values.max() / 1e9:.3f} s" if len(values) else "empty"
    raise ValueError(f"no image of {image_topic} in bag {path} overlaps the ground truth "
                     f"({trajectory.source}): images {span(stamps)}, "
                     f"ground truth {span(trajectory.stamp_ns)} "
                     "(or no neighbouring ground-truth poses within the maximum gap)")
