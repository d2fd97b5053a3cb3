"""Writing rosbag2 files: the topics and message types posenet_ros records, and `write_messages`,
which writes (topic, type, stamp, message) tuples atomically as a rosbag2 folder (metadata version 8,
which ROS 2 Humble and later read; each topic records the offered QoS profile `posenet-ros play`
publishes it with, `dds.qos_for_topic`). `tools/make_bag.py` writes datasets with it and
`evaluation/replay.py` the node's outputs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer

from posenet_ros.ros.dds import QOS_PROFILES, qos_for_topic
from posenet_ros.ros.dds_types import typestore

__all__ = [
    "BAG_VERSION",
    "CAMERA_INFO_TOPIC",
    "COMPRESSED_FORMATS",
    "COMPRESSED_IMAGE_TOPIC",
    "DEPTH_TOPIC",
    "IMAGE_TOPIC",
    "POSE_TOPIC",
    "STORAGES",
    "TF_STATIC_TOPIC",
    "TF_TOPIC",
    "TOPIC_TYPES",
]

IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_IMAGE_TOPIC = "/camera/image_raw/compressed"  # image_transport's name for the compressed image
DEPTH_TOPIC = "/camera/depth/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
POSE_TOPIC = "/ground_truth/pose"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"

TOPIC_TYPES: dict[str, str] = {
    TF_STATIC_TOPIC: "tf2_msgs/msg/TFMessage",
    TF_TOPIC: "tf2_msgs/msg/TFMessage",
    CAMERA_INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
    IMAGE_TOPIC: "sensor_msgs/msg/Image",
    COMPRESSED_IMAGE_TOPIC: "sensor_msgs/msg/CompressedImage",
    DEPTH_TOPIC: "sensor_msgs/msg/Image",
    POSE_TOPIC: "geometry_msgs/msg/PoseStamped",
}
"""ROS 2 type of every topic a bag may hold, in the order in which each frame's messages are written:
transforms first, so that a node replayed in lock-step has a frame's transforms before its image."""

STORAGES: dict[str, StoragePlugin] = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
"""Storage identifier (as in metadata.yaml) -> rosbags storage plugin."""
COMPRESSED_FORMATS = ("jpeg", "png")
BAG_VERSION = 8
"""rosbag2 metadata version: 8 stores offered QoS profiles as a YAML string, which Humble reads
(version 9 stores a list, which Humble's reader cannot parse); Iron and Jazzy read both."""


def _offered_qos(topic: str, type_name: str) -> Qos:
    """The QoS profile `play` publishes `topic` with, as a rosbag2 offered QoS profile.

    Durations (deadline, lifespan, liveliness lease) are 0 s, i.e. the RMW default: none.
    """
    reliable, depth, transient_local = QOS_PROFILES[qos_for_topic(topic, type_name)]
    zero = QosTime(sec=0, nsec=0)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=zero,
        lifespan=zero,
        liveliness=QosLiveliness.SYSTEM_DEFAULT,
        liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )


def write_messages(out: str | Path, messages: Iterable[tuple[str, str, int, Any]], *, storage: str = "mcap",
                   replace: bool = False) -> dict[str, int]:
    """Write (topic, ROS 2 type, log time ns, rosbags message) tuples, in order, as the rosbag2
    folder `out` (storage "mcap" or "sqlite3"); returns the message count per topic.

    The bag is written in a temporary folder next to `out` and renamed into place at the end, so
    `out` is either complete or untouched (the temporary folder is removed on any error, Ctrl-C
    included). An existing `out` is a FileExistsError unless `replace`, which swaps it for the new
    bag. Offered QoS profiles are those `play` publishes with (`qos_for_topic`).
    """
    out = Path(out)
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    if (out.exists() or out.is_symlink()) and not replace:
        raise FileExistsError(f"{out} exists; choose a new bag folder")
    store = typestore()
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    counts: dict[str, int] = {}
    try:
        bag_path = temporary / out.name  # the storage file is named after the folder, as rosbag2 does
        with Writer(bag_path, version=BAG_VERSION, storage_plugin=STORAGES[storage]) as writer:
            connections: dict[tuple[str, str], Any] = {}
            for topic, type_name, stamp_ns, message in messages:
                if (topic, type_name) not in connections:
                    connections[topic, type_name] = writer.add_connection(
                        topic, type_name, typestore=store, serialization_format="cdr",
                        offered_qos_profiles=[_offered_qos(topic, type_name)])
                writer.write(connections[topic, type_name], stamp_ns, store.serialize_cdr(message, type_name))
                counts[topic] = counts.get(topic, 0) + 1
        if out.exists() or out.is_symlink():
            if not replace:
                raise FileExistsError(f"{out} appeared while the bag was written; the bag was not kept")
            os.rename(out, temporary / "previous")  # removed with the temporary folder
        os.rename(bag_path, out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return counts


