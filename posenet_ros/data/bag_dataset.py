"""Training and evaluation frames read straight from a rosbag2 (`posenet-ros train --data BAG`).

`load_bag_frames(bag, split, options)` indexes the bag in one pass and returns FrameRecords whose
`image_path` (and `depth_path`) are `BagMessage`s: where the message is, not its pixels. The torch
dataset reads each image from the bag when it needs it (`read_bag_rgb`, `read_bag_depth`).

Which messages (`BagDataConfig`, the training config's `data.bag`, stored in the checkpoint), as
`posenet-ros replay` chooses them (`ros/bag_reading.py`):

- images: `image_topic`, or /camera/image_raw, else /camera/image_raw/compressed, else the only
  Image or CompressedImage topic; intrinsics (K and lens distortion, ros/camera_info.py) from the
  first CameraInfo of the `camera_info` topic beside it (none without one), so distorted images are
  undistorted as a dataset folder's are;
- ground truth: the PoseStamped / PoseWithCovarianceStamped / TransformStamped / Odometry topic
  `gt_topic` (default /ground_truth/pose), or the /tf transform `gt_tf` = "PARENT CHILD"; each image
  gets the pose at its header stamp, exact or interpolated between poses at most `max_gap_s` apart;
  images without one are dropped (counted in one warning per bag and options);
- depth (`use_depth`): `depth_topic` (default /camera/depth/image_raw), the message of nearest header
  stamp within `DEPTH_SLOP_S` (the node's default `max_depth_stamp_diff`); images without one are
  dropped too.

Frames are ordered by header stamp. Sequences: the frames with ground truth, cut where consecutive
stamps are more than `SEQUENCE_GAP_S` apart, named "seg-000", "seg-001", ... over the whole bag (so
a frame has the same sequence and `frame_index`, its position in the sequence, in every split).

Splits (`split_times`): "train=0:120,test=120:180" selects by header stamp, in seconds since the
bag's first image, START inclusive and END exclusive; an empty START is 0 and an empty END the end
of the bag; a split named twice gets both ranges. Without `split_times` every split is the whole
bag (a train / test split by bag: train on one bag, evaluate on another).

Random access: each process keeps one open reader per bag (opened on first use, so DataLoader
workers open their own after the fork) and reads a message with
`reader.messages(connections, start=log_time, stop=log_time + 1)`, which uses the chunk index of an
mcap file and the timestamp index of a sqlite3 one rather than scanning the bag.

`posenet_ros.ros` is imported inside the functions: it loads rosbags and Cyclone DDS (about a
second), which the folder datasets never need.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import math
import os
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from posenet_ros.core.config import config_from_dict, config_to_dict
from posenet_ros.core.geometry import pose_from_position_quat
from posenet_ros.data.frames import BagMessage, DatasetError, FrameRecord
from posenet_ros.runtime.train_config import BagDataConfig, TrainConfig

logger = logging.getLogger(__name__)

DEPTH_SLOP_S = 0.02  # largest image-depth stamp difference of a pair (the node's max_depth_stamp_diff)
SEQUENCE_GAP_S = 1.0  # a longer gap between consecutive frames starts a new sequence


def bag_config_for_checkpoint(config: TrainConfig, needs_depth: bool,
                              overrides: Mapping[str, Any] | None = None) -> BagDataConfig:
    """The bag options a checkpoint was trained with (its config's `data.bag`; the defaults where it
    has none) with `overrides` (field name -> value) applied and `use_depth` on exactly when the
    model needs depth (`LoadedModel.needs_depth`): evaluation and calibration read what the model
    needs."""
    stored = config_to_dict(config.data.bag)
    stored.update(overrides or {})
    stored["use_depth"] = needs_depth
    return config_from_dict(BagDataConfig, stored, prefix="data.bag.")


@dataclass(frozen=True)
class _BagIndex:
    """Every frame of a bag with ground truth, in stamp order, and the bag's time origin."""

    records: tuple[FrameRecord, ...]
    stamps_ns: np.ndarray  # (N,) int64 header stamps of `records`
    first_image_ns: int  # header stamp of the bag's first image: the origin of split_times
    last_image_ns: int
    images: int  # image messages in the bag, with or without ground truth


def _modified_ns(bag: Path) -> int:
    """When the bag was last written (its metadata.yaml for a folder): part of the index cache key."""
    return (bag / "metadata.yaml" if bag.is_dir() else bag).stat().st_mtime_ns


def _sequences(stamps_ns: np.ndarray) -> tuple[list[str], list[int]]:
    """(sequence name, frame index) of sorted stamps, a new sequence after each gap > SEQUENCE_GAP_S."""
    names, indices = [], []
    sequence, index = 0, 0
    for i in range(len(stamps_ns)):
        if i > 0 and stamps_ns[i] - stamps_ns[i - 1] > round(SEQUENCE_GAP_S * 1e9):
            sequence, index = sequence + 1, 0
        names.append(f"seg-{sequence:03d}")
        indices.append(index)
        index += 1
    return names, indices


@functools.lru_cache(maxsize=8)
def _bag_index(bag: Path, modified_ns: int, options: BagDataConfig) -> _BagIndex:
    """Index `bag` in one pass over its image, depth, camera-info and ground-truth topics, keeping only
    stamps, the ground-truth poses and the first CameraInfo; cached per bag, modification time and
    options (without split_times)."""
    from posenet_ros.ros.bag_reading import (
        IMAGE,
        check_overlap,
        ground_truth_topics,
        open_bag,
        read_messages,
        select_streams,
        trajectory_from_messages,
    )
    from posenet_ros.ros.camera_info import CameraInfoError, camera_from_camera_info
    from posenet_ros.ros.conversions import stamp_to_ns

    del modified_ns  # only part of the cache key
    images: list[tuple[int, int]] = []  # (log time, header stamp) ns
    depths: list[tuple[int, int]] = []
    truth: list[Any] = []
    camera = None
    with open_bag(bag) as reader:
        streams = select_streams(reader, bag, options.image_topic or None, options.depth_topic or None,
                                 options.use_depth)
        truth_topics = ground_truth_topics(reader, bag, options.gt_topic or None, options.tf_pair())
        topics = [streams.image_topic, streams.depth_topic, streams.camera_info_topic, *truth_topics]
        for connection, log_time, msg in read_messages(reader, bag, [t for t in topics if t]):
            if connection.topic in truth_topics:
                truth.append(msg)
            elif connection.topic == streams.image_topic and connection.msgtype == streams.image_type:
                images.append((log_time, stamp_to_ns(msg.header.stamp)))
            elif connection.topic == streams.depth_topic and connection.msgtype == IMAGE:
                depths.append((log_time, stamp_to_ns(msg.header.stamp)))
            elif connection.topic == streams.camera_info_topic and camera is None:
                try:
                    camera = camera_from_camera_info(msg)
                except CameraInfoError as error:
                    raise DatasetError(f"bag {bag}: {streams.camera_info_topic}: {error}") from None
    trajectory = trajectory_from_messages(bag, truth, truth_topics, options.tf_pair())
    if not images:
        raise DatasetError(f"bag {bag}: no {streams.image_type} message on {streams.image_topic}")
    images.sort(key=lambda pair: pair[1])
    log_times, stamps = (np.array(column, np.int64) for column in zip(*images, strict=True))
    position, quat, keep = trajectory.at(stamps, options.max_gap_s)
    check_overlap(trajectory, stamps, keep, bag, streams.image_topic)
    without_truth = int((~keep).sum())
    depth_index = np.zeros(len(stamps), np.int64)
    without_depth = 0
    if streams.depth_topic:
        if not depths:
            raise DatasetError(f"bag {bag}: no depth image on {streams.depth_topic}")
        depths.sort(key=lambda pair: pair[1])
        depth_log_times, depth_stamps = (np.array(column, np.int64) for column in zip(*depths, strict=True))
        right = np.clip(np.searchsorted(depth_stamps, stamps), 0, len(depth_stamps) - 1)
        left = np.clip(right - 1, 0, len(depth_stamps) - 1)
        depth_index = np.where(np.abs(depth_stamps[left] - stamps) <= np.abs(depth_stamps[right] - stamps),
                               left, right)
        paired = np.abs(depth_stamps[depth_index] - stamps) <= round(DEPTH_SLOP_S * 1e9)
        without_depth = int((keep & ~paired).sum())
        keep &= paired
        if not keep.any():
            raise DatasetError(f"bag {bag}: no image of {streams.image_topic} with ground truth has a depth "
                               f"image on {streams.depth_topic} within {DEPTH_SLOP_S} s of its stamp")
    if without_truth or without_depth:
        logger.warning("bag %s: dropped %d of %d images of %s: %d without ground truth (%s, max gap %g s)%s",
                       bag, without_truth + without_depth, len(stamps), streams.image_topic, without_truth,
                       trajectory.source, options.max_gap_s,
                       f", {without_depth} without depth on {streams.depth_topic}" if without_depth else "")
    kept = np.flatnonzero(keep)
    names, indices = _sequences(stamps[kept])
    records = []
    for i, name, index in zip(kept, names, indices, strict=True):
        depth = None
        if streams.depth_topic:
            j = depth_index[i]
            depth = BagMessage(bag, streams.depth_topic, int(depth_log_times[j]), int(depth_stamps[j]))
        records.append(FrameRecord(
            image_path=BagMessage(bag, streams.image_topic, int(log_times[i]), int(stamps[i])),
            depth_path=depth, world_from_cam=pose_from_position_quat(position[i], quat[i]),
            intrinsics=camera, sequence=name, frame_index=index))
    return _BagIndex(tuple(records), stamps[kept], int(stamps[0]), int(stamps[-1]), len(stamps))


def load_bag_frames(bag: str | Path, split: str, options: BagDataConfig | None = None) -> list[FrameRecord]:
    """The frames of `split` of rosbag2 `bag` (folder, .mcap or .db3) with ground truth, in stamp order.

    Bag problems (missing topic, no ground truth, no overlap) are ValueErrors naming them and listing
    the bag's topics where that helps; a split missing from `options.split_times`, or whose time
    ranges hold no frame, is a DatasetError naming the split and the bag's time span.
    """
    bag = Path(bag)
    options = options or BagDataConfig()
    if not bag.exists():
        raise FileNotFoundError(f"bag {bag} does not exist")
    index = _bag_index(bag, _modified_ns(bag), dataclasses.replace(options, split_times=""))
    ranges = options.ranges()
    if not ranges:
        logger.info("bag %s: no split_times, so split %r is the whole bag (%d frames)", bag, split,
                    len(index.records))
        return list(index.records)
    if split not in ranges:
        raise DatasetError(f"bag {bag}: split_times {options.split_times!r} has no time range for split "
                           f"{split!r} (it has {', '.join(sorted(ranges))})")
    offsets = index.stamps_ns - index.first_image_ns
    selected = np.zeros(len(offsets), bool)
    for start, end in ranges[split]:
        end_ns = np.iinfo(np.int64).max if math.isinf(end) else round(end * 1e9)
        selected |= (offsets >= round(start * 1e9)) & (offsets < end_ns)
    if not selected.any():
        wanted = ", ".join(f"{start:g}:{'' if math.isinf(end) else f'{end:g}'}"
                           for start, end in ranges[split])
        span = (index.last_image_ns - index.first_image_ns) / 1e9
        raise DatasetError(f"bag {bag}: split {split!r} ({wanted} s) holds no frame with ground truth; the "
                           f"bag's {index.images} images span 0..{span:.3f} s since its first image "
                           f"({len(index.records)} with ground truth)")
    return [record for record, chosen in zip(index.records, selected, strict=True) if chosen]


# --- random access ----------------------------------------------------------------------------------

# (process id, bag) -> (open reader, what closes it, the bag's modification time when it was opened)
_READERS: dict[tuple[int, Path], tuple[Any, ExitStack, int]] = {}


def _reader(bag: Path) -> Any:
    """This process's open reader of `bag`: opened on first use (so a forked DataLoader worker opens
    its own instead of sharing its parent's file position) and again if the bag was rewritten."""
    from posenet_ros.ros.bag_reading import open_bag

    key, modified_ns = (os.getpid(), bag), _modified_ns(bag)
    if key in _READERS and _READERS[key][2] != modified_ns:
        _READERS.pop(key)[1].close()
    if key not in _READERS:
        stack = ExitStack()
        _READERS[key] = (stack.enter_context(open_bag(bag)), stack, modified_ns)
    return _READERS[key][0]


@atexit.register
def close_bag_readers() -> None:
    """Close the readers this process opened (those inherited from a parent process are left alone)."""
    for key in [key for key in _READERS if key[0] == os.getpid()]:
        _READERS.pop(key)[1].close()


def read_bag_message(source: BagMessage) -> Any:
    """The deserialised message at `source`; DatasetError naming it if the bag no longer holds it."""
    from posenet_ros.ros.conversions import stamp_to_ns

    reader = _reader(source.bag)
    connections = [c for c in reader.connections if c.topic == source.topic]
    try:
        for connection, _, raw in reader.messages(connections=connections, start=source.log_time_ns,
                                                  stop=source.log_time_ns + 1):
            msg = reader.deserialize(raw, connection.msgtype)
            if stamp_to_ns(msg.header.stamp) == source.stamp_ns:
                return msg
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except Exception as error:  # rosbags raises several kinds for a damaged file
        raise DatasetError(f"{source}: cannot read the message ({type(error).__name__}: {error})") from None
    raise DatasetError(f"{source}: no such message at log time {source.log_time_ns} ns (was the bag "
                       "rewritten after it was indexed?)")


def read_bag_rgb(source: BagMessage) -> np.ndarray:
    """uint8 RGB (H, W, 3) of the Image or CompressedImage at `source`."""
    from posenet_ros.ros.conversions import message_to_rgb

    try:
        return message_to_rgb(read_bag_message(source))
    except DatasetError:
        raise
    except ValueError as error:  # ImageConversionError: unsupported encoding, undecodable data
        raise DatasetError(f"{source}: {error}") from None


def read_bag_depth(source: BagMessage) -> np.ndarray:
    """float32 depth in metres (H, W), 0 = invalid, of the depth Image at `source`."""
    from posenet_ros.ros.conversions import depth_to_metres

    try:
        return depth_to_metres(read_bag_message(source))
    except DatasetError:
        raise
    except ValueError as error:
        raise DatasetError(f"{source}: {error}") from None
