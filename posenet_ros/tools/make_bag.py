"""``posenet-ros make-bag DATA OUT``: dataset frames as a rosbag2, as a camera driver records them.

Each frame of the chosen splits (``load_frames``, in split order, then record order) becomes one
message per topic, all with the same ``header.stamp``, which is also the bag's log time:

- ``/camera/camera_info`` (sensor_msgs/msg/CameraInfo): K of the record's intrinsics in pixels and
  its lens distortion (plumb_bob, or rational_polynomial for 8 coefficients; zero for a pinhole
  camera), which describe the images as written (a dataset rendered by ``synth --distortion`` with
  another ``hfov_deg`` or size gives a camera other than the map's); only when the records have
  intrinsics and ``with_camera_info`` is not False.
- ``/camera/image_raw`` (sensor_msgs/msg/Image): rgb8, exactly the pixels ``read_frame_rgb`` returns; or,
  with ``compressed=True``, ``/camera/image_raw/compressed`` (sensor_msgs/msg/CompressedImage, jpeg or
  png, image_transport's topic name and format string) instead.
- ``/camera/depth/image_raw`` (sensor_msgs/msg/Image): 16UC1 millimetres, 0 invalid; only when the
  records have depth (and ``with_depth`` is not False).
- ``/ground_truth/pose`` (geometry_msgs/msg/PoseStamped): the record's world_from_cam in ``map_frame``.
- ``/tf`` (tf2_msgs/msg/TFMessage): a robot's odometry ``odom_frame`` -> ``base_frame`` and, as a motion
  capture system would publish it, the ground truth ``map_frame`` -> ``<camera_frame>_ground_truth``
  (the record's world_from_cam).
- ``/tf_static`` (tf2_msgs/msg/TFMessage), once, at the first stamp: ``base_frame`` -> ``camera_frame``,
  `BASE_FROM_CAMERA` (an optical frame: z forward, x right, y down; 0.2 m ahead of and 0.5 m above the
  base).

The robot: the camera is mounted on a base, world_from_base = world_from_cam · BASE_FROM_CAMERA⁻¹; its
odometry follows the base but drifts (`map_from_odom`: an initial offset, then 2 cm/s and 0.5°/s about
the map's z axis), so odom_from_base = map_from_odom(t)⁻¹ · world_from_base and a localizer's
map -> odom is not the identity. With ``odometry_noise`` (an `OdometryNoise`) the odometry is instead
a simulated one that drifts as a random walk in distance travelled: from the same initial offset, each
base increment Δ (between consecutive frames) is recorded as Δ · (ρ, exp(φ)) with (ρ, φ) drawn from
`OdometryNoise.base_covariance(Δ)` (``odometry_seed``), so its drift is what the odometry-aided
filter's model (inference/odometry_fusion.py) assumes. ``odometry_outages``: (start, end) seconds since
the first frame during which no odometry transform is written (an odometry that stopped).

With the map -> odom a relocalizer publishes, the TF tree is map -> odom -> base -> camera (REP-105).

``header.frame_id`` is ``camera_frame`` for the images and camera info and ``map_frame`` for the
pose. Poses are metres, quaternions normalised with w >= 0 (the sign is a choice; q and -q are the
same rotation).

Timing (integer nanoseconds): frame k of a sequence is stamped ``sequence start + round(k * 1e9 /
rate_hz)``; the first sequence starts at ``start_ns`` and every later sequence (of the same split or
the next one) ``round(sequence_gap_s * 1e9)`` after the last frame of the previous sequence, so that
a node replaying the bag sees a gap and resets its stream between sequences.

The bag is a rosbag2 folder (``metadata.yaml`` and one ``.mcap`` or ``.db3`` file), metadata
version 8, whose QoS strings ROS 2 Humble and later read; each topic records the offered QoS profile
``posenet-ros play`` publishes it with (``qos_for_topic``). Message definitions come from rosbags'
ROS 2 Humble typestore. Writing is atomic: the bag is written into a temporary folder next to
``out`` and renamed at the end; on any error or interruption the temporary folder is removed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posenet_ros.core.geometry import pose_from_position_quat, position_quat_from_pose, quat_exp
from posenet_ros.core.progress import progress_bar
from posenet_ros.data.dataset import pose_vector
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.data.images import read_frame_depth, read_frame_rgb
from posenet_ros.data.loading import load_frames
from posenet_ros.inference.odometry_fusion import OdometryNoise
from posenet_ros.ros.bag_writing import (
    CAMERA_INFO_TOPIC,
    COMPRESSED_FORMATS,
    COMPRESSED_IMAGE_TOPIC,
    DEPTH_TOPIC,
    IMAGE_TOPIC,
    POSE_TOPIC,
    STORAGES,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    TOPIC_TYPES,
    write_messages,
)
from posenet_ros.ros.conversions import (
    RosbagsTypes,
    camera_info_msg,
    compressed_image_msg,
    depth_msg,
    image_msg,
    pose_stamped,
    tf_message,
    transform_stamped,
)

BASE_FROM_CAMERA = np.array([[0.0, 0.0, 1.0, 0.2],   # the camera's optical axis (z) is the base's x,
                             [-1.0, 0.0, 0.0, 0.0],  # its x (right) the base's -y,
                             [0.0, -1.0, 0.0, 0.5],  # its y (down) the base's -z
                             [0.0, 0.0, 0.0, 1.0]])
"""base_from_camera of the bag's robot (4x4, metres)."""


def map_from_odom(elapsed_s: float) -> np.ndarray:
    """The bag's odometry drift: map_from_odom (4x4, metres) `elapsed_s` seconds after the first
    frame: (0.5, -0.3, 0) m and 0.2 rad about z at first, then 0.02 m/s along x and 0.5°/s about z."""
    return pose_from_position_quat([0.5 + 0.02 * elapsed_s, -0.3, 0.0],
                                   quat_exp([0.0, 0.0, 0.2 + math.radians(0.5) * elapsed_s]))


@dataclass
class BagSummary:
    """What `make_bag` wrote.

    `topics`: topic -> message count, in the order of `TOPIC_TYPES`. Stamps are integer nanoseconds
    since the epoch (header stamps, equal to the bag's log times). `frame_stamps` has one entry per
    frame in writing order: (stamp_ns, split, sequence, frame_index), so a stamp maps back to the
    dataset frame it came from.
    """

    path: Path
    storage: str
    frames: int
    topics: dict[str, int]
    first_stamp_ns: int
    last_stamp_ns: int
    frame_stamps: list[tuple[int, str, str, int]] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last frame."""
        return (self.last_stamp_ns - self.first_stamp_ns) / 1e9


def _check_arguments(splits: Sequence[str], storage: str, compressed_format: str, rate_hz: float,
                     start_ns: int, sequence_gap_s: float, frames: dict[str, str]) -> None:
    if isinstance(splits, str) or not splits:
        raise ValueError(f"splits must be a non-empty list of split names, got {splits!r}")
    repeated = sorted({split for split in splits if list(splits).count(split) > 1})
    if repeated:
        raise ValueError(f"split(s) {', '.join(repeated)} given more than once")
    if storage not in STORAGES:
        raise ValueError(f"unsupported bag storage {storage!r}; choose from {', '.join(STORAGES)}")
    if compressed_format not in COMPRESSED_FORMATS:
        raise ValueError(f"unsupported compressed image format {compressed_format!r}; "
                         f"choose from {', '.join(COMPRESSED_FORMATS)}")
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"rate_hz must be a positive number of frames per second, got {rate_hz}")
    if not (math.isfinite(sequence_gap_s) and sequence_gap_s > 0):
        raise ValueError(f"sequence_gap_s must be a positive number of seconds, got {sequence_gap_s}")
    if isinstance(start_ns, bool) or not isinstance(start_ns, int) or start_ns < 0:
        raise ValueError(f"start_ns must be a non-negative integer (nanoseconds), got {start_ns!r}")
    for name, frame in frames.items():
        if not frame:
            raise ValueError(f"{name} must not be empty")
    if len(set(frames.values())) < len(frames):
        raise ValueError(f"the frames must differ, got {frames}")


def _frame_stamps(records_by_split: list[tuple[str, list[FrameRecord]]], rate_hz: float, start_ns: int,
                  sequence_gap_s: float) -> list[tuple[int, str, str, int]]:
    """(stamp_ns, split, sequence, frame_index) of every frame; see the module docstring for the timing."""
    gap_ns = round(sequence_gap_s * 1e9)
    stamps: list[tuple[int, str, str, int]] = []
    current: tuple[str, str] | None = None
    sequence_start = start_ns
    k = 0
    for split, records in records_by_split:
        for record in records:
            if (split, record.sequence) != current:
                if current is not None:
                    sequence_start = stamps[-1][0] + gap_ns
                current, k = (split, record.sequence), 0
            stamps.append((sequence_start + round(k * 1e9 / rate_hz), split, record.sequence,
                           record.frame_index))
            k += 1
    return stamps


def _topics_to_write(records: list[FrameRecord], compressed: bool, with_depth: bool | None,
                     with_camera_info: bool) -> list[str]:
    """The topics of the bag, in `TOPIC_TYPES` order; ValueError if depth is asked for but missing."""
    lacking_depth = sum(record.depth_path is None for record in records)
    if with_depth is None:
        with_depth = lacking_depth == 0
    elif with_depth and lacking_depth:
        raise ValueError(f"with_depth=True but {lacking_depth} of {len(records)} frames have no depth image")
    lacking_intrinsics = sum(record.intrinsics is None for record in records)
    if with_camera_info and 0 < lacking_intrinsics < len(records):
        raise DatasetError(f"{lacking_intrinsics} of {len(records)} frames have no intrinsics; the bag "
                           "needs intrinsics for all frames (one camera_info topic) or none")
    wanted = {
        CAMERA_INFO_TOPIC: with_camera_info and lacking_intrinsics == 0,
        IMAGE_TOPIC: not compressed,
        COMPRESSED_IMAGE_TOPIC: compressed,
        DEPTH_TOPIC: bool(with_depth),
        POSE_TOPIC: True,
        TF_TOPIC: True,
        TF_STATIC_TOPIC: True,
    }
    return [topic for topic in TOPIC_TYPES if wanted[topic]]


def simulated_odometry(records: Sequence[FrameRecord], elapsed_s: Sequence[float],
                       noise: OdometryNoise | None, seed: int = 0) -> list[np.ndarray]:
    """odom_from_base (4x4) at each record (in order; `elapsed_s` since the first frame): the fixed
    drift `map_from_odom` without `noise`, else a random walk (see the module docstring)."""
    world_from_base = [record.world_from_cam @ np.linalg.inv(BASE_FROM_CAMERA) for record in records]
    if noise is None:
        return [np.linalg.inv(map_from_odom(t)) @ pose
                for t, pose in zip(elapsed_s, world_from_base, strict=True)]
    rng = np.random.default_rng(seed)
    odometry = [np.linalg.inv(map_from_odom(0.0)) @ world_from_base[0]]
    for previous, current in itertools.pairwise(world_from_base):
        increment = np.linalg.inv(previous) @ current
        rho_phi = rng.multivariate_normal(np.zeros(6), noise.base_covariance(increment))
        perturbation = pose_from_position_quat(rho_phi[:3], quat_exp(rho_phi[3:]))
        odometry.append(odometry[-1] @ increment @ perturbation)
    return odometry


def _frame_messages(types: RosbagsTypes, record: FrameRecord, stamp_ns: int,
                    odom_from_base: np.ndarray | None, topics: list[str], compressed_format: str,
                    frames: dict[str, str]) -> dict[str, object]:
    """topic -> message (rosbags class) of one frame, for the topics in `topics` (not /tf_static);
    `odom_from_base`: the odometry at this frame (None: none written)."""
    map_frame, camera_frame = frames["map_frame"], frames["camera_frame"]
    rgb = read_frame_rgb(record.image_path)
    height, width = rgb.shape[:2]
    pose = pose_vector(record.world_from_cam)
    ground_truth = transform_stamped(types, stamp_ns, map_frame, f"{camera_frame}_ground_truth",
                                     pose[:3], pose[3:])
    transforms = [ground_truth]
    if odom_from_base is not None:
        transforms.insert(0, transform_stamped(types, stamp_ns, frames["odom_frame"], frames["base_frame"],
                                               *position_quat_from_pose(odom_from_base)))
    messages: dict[str, object] = {TF_TOPIC: tf_message(types, transforms)}
    if CAMERA_INFO_TOPIC in topics:
        intrinsics = record.intrinsics
        assert intrinsics is not None  # _topics_to_write checked it
        if (intrinsics.width, intrinsics.height) != (width, height):
            raise DatasetError(f"{record.image_path}: image is {width}x{height} but its intrinsics are for "
                               f"{intrinsics.width}x{intrinsics.height}")
        messages[CAMERA_INFO_TOPIC] = camera_info_msg(types, stamp_ns, camera_frame, width, height,
                                                      intrinsics.matrix(), intrinsics.distortion)
    if IMAGE_TOPIC in topics:
        messages[IMAGE_TOPIC] = image_msg(types, rgb, stamp_ns, camera_frame, "rgb8")
    if COMPRESSED_IMAGE_TOPIC in topics:
        messages[COMPRESSED_IMAGE_TOPIC] = compressed_image_msg(types, rgb, stamp_ns, camera_frame,
                                                                format=compressed_format)
    if DEPTH_TOPIC in topics:
        assert record.depth_path is not None  # _topics_to_write checked it
        depth = read_frame_depth(record.depth_path, record.depth_unit_m)
        messages[DEPTH_TOPIC] = depth_msg(types, depth, stamp_ns, camera_frame, encoding="16UC1")
    messages[POSE_TOPIC] = pose_stamped(types, stamp_ns, map_frame, pose[:3], pose[3:])
    return messages


def make_bag(
    data_root: str | Path,
    out: str | Path,
    *,
    splits: Sequence[str] = ("test",),
    storage: str = "mcap",
    compressed: bool = False,
    compressed_format: str = "jpeg",
    with_depth: bool | None = None,
    with_camera_info: bool = True,
    rate_hz: float = 30.0,
    start_ns: int = 1_700_000_000 * 10**9,
    sequence_gap_s: float = 5.0,
    map_frame: str = "map",
    camera_frame: str = "camera",
    base_frame: str = "base_link",
    odom_frame: str = "odom",
    odometry_noise: OdometryNoise | None = None,
    odometry_seed: int = 0,
    odometry_outages: Sequence[tuple[float, float]] = (),
    progress: bool = True,
) -> BagSummary:
    """Write the frames of `splits` of the dataset in `data_root` as a rosbag2 folder `out`.

    `storage`: "mcap" or "sqlite3". `compressed`: send the colour image as a CompressedImage
    (`compressed_format` "jpeg" or "png") on `COMPRESSED_IMAGE_TOPIC` instead of rgb8 on `IMAGE_TOPIC`.
    `with_depth`: None writes depth when every frame has a depth image, False never, True requires
    it. `with_camera_info`: False leaves out the camera info. `rate_hz` (frames per second),
    `start_ns` (first stamp, ns since the epoch) and `sequence_gap_s` (seconds between sequences) set
    the stamps; `map_frame`, `camera_frame`, `base_frame` and `odom_frame` the frame ids (all
    different). `odometry_noise`, `odometry_seed` and `odometry_outages`: the simulated odometry. See
    the module docstring for the topics, the robot and the timing.

    Raises FileExistsError if `out` exists; ValueError for a bad argument (before anything is read
    or written); DatasetError (a ValueError) for a split without frames or an unreadable frame.
    On any error the partly written bag is removed and `out` is left as it was.
    """
    out = Path(out)
    frames = {"map_frame": map_frame, "camera_frame": camera_frame, "base_frame": base_frame,
              "odom_frame": odom_frame}
    _check_arguments(splits, storage, compressed_format, rate_hz, start_ns, sequence_gap_s, frames)
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"{out} exists; choose a new bag folder")
    records_by_split: list[tuple[str, list[FrameRecord]]] = []
    for split in splits:
        try:
            records = load_frames(data_root, split)
        except DatasetError as err:
            raise DatasetError(f"split {split!r}: {err}") from err
        if not records:
            raise DatasetError(f"{data_root}: split {split!r} has no frames")
        records_by_split.append((split, records))
    all_records = [record for _, records in records_by_split for record in records]
    topics = _topics_to_write(all_records, compressed, with_depth, with_camera_info)
    frame_stamps = _frame_stamps(records_by_split, rate_hz, start_ns, sequence_gap_s)
    # Every frame must fit builtin_interfaces/Time (int32 seconds) before anything is written.
    if frame_stamps[-1][0] >= 2**31 * 10**9:
        raise ValueError(f"the last frame's stamp {frame_stamps[-1][0]} ns does not fit "
                         "builtin_interfaces/Time (int32 seconds); lower start_ns")

    types = RosbagsTypes()
    elapsed_s = [(stamp_ns - frame_stamps[0][0]) / 1e9 for stamp_ns, *_ in frame_stamps]
    odometry = simulated_odometry(all_records, elapsed_s, odometry_noise, odometry_seed)

    def messages() -> Iterator[tuple[str, str, int, Any]]:
        first_ns = frame_stamps[0][0]
        extrinsic = transform_stamped(types, first_ns, base_frame, camera_frame,
                                      *position_quat_from_pose(BASE_FROM_CAMERA))
        yield TF_STATIC_TOPIC, TOPIC_TYPES[TF_STATIC_TOPIC], first_ns, tf_message(types, [extrinsic])
        with progress_bar(total=len(all_records), desc="make-bag", unit="frame", disable=not progress) as bar:
            for record, (stamp_ns, _, _, _), odom_from_base, elapsed in zip(
                    all_records, frame_stamps, odometry, elapsed_s, strict=True):
                if any(start <= elapsed < end for start, end in odometry_outages):
                    odom_from_base = None
                frame = _frame_messages(types, record, stamp_ns, odom_from_base, topics, compressed_format,
                                        frames)
                for topic, message in frame.items():
                    yield topic, TOPIC_TYPES[topic], stamp_ns, message
                bar.update(1)

    counts = write_messages(out, messages(), storage=storage)
    counts = {topic: counts.get(topic, 0) for topic in topics}
    return BagSummary(path=out, storage=storage, frames=len(all_records), topics=counts,
                      first_stamp_ns=frame_stamps[0][0], last_stamp_ns=frame_stamps[-1][0],
                      frame_stamps=frame_stamps)
