"""A TF buffer for the runtimes without tf2: the transform tree of /tf and /tf_static, looked up at a
stamp with tf2's semantics.

Each child frame has one parent. A static link (/tf_static) holds for all times; a dynamic link (/tf)
keeps its transforms of the last `cache_time_s` seconds (of message stamps, as tf2's 10 s cache) and
is interpolated between the two stamps around the query (linear in translation, slerp in rotation,
as tf2 does); a query before the first or after the last transform of a link fails (tf2's
extrapolation error), naming that link. `lookup(target, source, stamp)` walks both frames up to their
common ancestor and returns target_from_source as a 4x4 (maps points in `source` to `target`).
`max_gap_s` (not a tf2 rule; the node's odometry uses it, node/odometry.py) also refuses a stamp
between two transforms of a dynamic link that are more than that many seconds apart: a gap in the
stream, across which interpolating would invent the motion.

(pytransform3d's TemporalTransformManager, the PyPI library nearest to this, interpolates by screw
motion rather than tf2's lerp + slerp, has no rolling cache and does not say which link is missing, so
the tree is kept here: small, and tested against tf2's rules in test/ros/test_tf_buffer.py.)
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posenet_ros.core.geometry import (
    pose_from_position_quat,
    quat_conjugate,
    quat_exp,
    quat_log,
    quat_multiply,
)
from posenet_ros.ros.conversions import pose_from_msg, stamp_to_ns

DEFAULT_CACHE_TIME_S = 10.0


class TransformUnavailable(LookupError):
    """No transform between two frames at a stamp; the message names the missing or stale link."""


@dataclass
class _Link:
    """parent_from_child samples of one child frame: stamps (ns, sorted), positions (metres), unit
    quaternions (w, x, y, z). A static link has one sample, valid at every stamp."""

    parent: str
    static: bool
    stamps_ns: list[int] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    quats: list[np.ndarray] = field(default_factory=list)

    def at(self, child: str, stamp_ns: int, max_gap_ns: int | None = None) -> np.ndarray:
        """parent_from_child (4x4) at `stamp_ns`; TransformUnavailable outside the samples' span, or
        between two samples more than `max_gap_ns` apart (None: any gap is interpolated)."""
        if self.static:
            return pose_from_position_quat(self.positions[0], self.quats[0])
        right = bisect.bisect_left(self.stamps_ns, stamp_ns)
        if right < len(self.stamps_ns) and self.stamps_ns[right] == stamp_ns:
            return pose_from_position_quat(self.positions[right], self.quats[right])
        if right == 0 or right == len(self.stamps_ns):
            raise TransformUnavailable(
                f"transform {self.parent} -> {child} is not available at {_seconds(stamp_ns)}: it is known "
                f"from {_seconds(self.stamps_ns[0])} to {_seconds(self.stamps_ns[-1])}"
                + (" (stale: no newer transform yet)" if right else ""))
        left = right - 1
        if max_gap_ns is not None and self.stamps_ns[right] - self.stamps_ns[left] > max_gap_ns:
            raise TransformUnavailable(
                f"transform {self.parent} -> {child} is not available at {_seconds(stamp_ns)}: it falls in "
                f"a gap from {_seconds(self.stamps_ns[left])} to {_seconds(self.stamps_ns[right])} (longer "
                f"than {max_gap_ns / 1e9:g} s)")
        t = (stamp_ns - self.stamps_ns[left]) / (self.stamps_ns[right] - self.stamps_ns[left])
        position = (1.0 - t) * self.positions[left] + t * self.positions[right]
        q0 = self.quats[left]
        quat = quat_multiply(quat_exp(t * quat_log(quat_multiply(self.quats[right], quat_conjugate(q0)))), q0)
        return pose_from_position_quat(position, quat)


class TransformBuffer:
    """The TF tree from TransformStamped messages (rosbags, DDS or rclpy objects alike); thread-safe.

    `cache_time_s`: seconds of dynamic transforms kept per link, counted back from the newest stamp of
    that link (None: keep everything, for bag replay). Frame names are used without a leading '/'.
    """

    def __init__(self, cache_time_s: float | None = DEFAULT_CACHE_TIME_S) -> None:
        self._cache_ns = None if cache_time_s is None else round(cache_time_s * 1e9)
        self._links: dict[str, _Link] = {}
        self._changed = threading.Condition()

    def add_message(self, msg: Any, static: bool = False) -> None:
        """Every transform of a tf2_msgs/TFMessage (`static`: from /tf_static)."""
        for transform in msg.transforms:
            self.add(transform, static)

    def add(self, transform: Any, static: bool = False) -> None:
        """One geometry_msgs/TransformStamped, header.frame_id -> child_frame_id at header.stamp. A
        link whose parent changes is started anew (the tree is the latest one). ValueError for empty or
        equal frame names, a pose that is not finite or a zero quaternion."""
        position, quat = pose_from_msg(transform)
        self.add_pose(transform.header.frame_id, transform.child_frame_id,
                      stamp_to_ns(transform.header.stamp), position, quat, static)

    def add_pose(self, parent_frame: str, child_frame: str, stamp_ns: int, position_3: np.ndarray,
                 quat_wxyz_4: np.ndarray, static: bool = False) -> None:
        """parent_from_child at `stamp_ns` (position metres, quaternion w, x, y, z, normalised here), as
        `add` takes it from a message (nav_msgs/Odometry's pose goes in this way too)."""
        parent, child = _name(parent_frame), _name(child_frame)
        if not parent or not child or parent == child:
            raise ValueError(f"invalid transform {parent!r} -> {child!r}")
        position = np.asarray(position_3, dtype=np.float64)
        quat = np.asarray(quat_wxyz_4, dtype=np.float64)
        norm = np.linalg.norm(quat)
        if not (np.all(np.isfinite(position)) and np.isfinite(norm) and norm > 0):
            raise ValueError(f"transform {parent} -> {child} is not finite or has a zero quaternion")
        quat = quat / norm
        stamp_ns = int(stamp_ns)
        with self._changed:
            link = self._links.get(child)
            if link is None or link.parent != parent or link.static != static or static:
                link = self._links[child] = _Link(parent, static)
            index = bisect.bisect_left(link.stamps_ns, stamp_ns)
            if index < len(link.stamps_ns) and link.stamps_ns[index] == stamp_ns:  # the same stamp: replace
                link.positions[index], link.quats[index] = position, quat
            else:
                link.stamps_ns.insert(index, stamp_ns)
                link.positions.insert(index, position)
                link.quats.insert(index, quat)
            if self._cache_ns is not None and not static:
                first = bisect.bisect_left(link.stamps_ns, link.stamps_ns[-1] - self._cache_ns)
                del link.stamps_ns[:first], link.positions[:first], link.quats[:first]
            self._changed.notify_all()

    def frames(self) -> set[str]:
        """Every frame named by a transform so far (parents and children)."""
        with self._changed:
            return set(self._links) | {link.parent for link in self._links.values()}

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int,
               timeout_s: float = 0.0, max_gap_s: float | None = None) -> np.ndarray:
        """target_from_source (4x4 float64, metres) at `stamp_ns`, waiting up to `timeout_s` seconds for
        the transforms to arrive. `max_gap_s`: refuse a stamp in a longer gap of a dynamic link (module
        docstring; None: tf2's rules). Raises TransformUnavailable naming the missing or stale link."""
        deadline = time.monotonic() + timeout_s
        max_gap_ns = None if max_gap_s is None else round(max_gap_s * 1e9)
        with self._changed:
            while True:
                try:
                    return self._lookup(_name(target_frame), _name(source_frame), stamp_ns, max_gap_ns)
                except TransformUnavailable:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                    self._changed.wait(remaining)

    def _lookup(self, target: str, source: str, stamp_ns: int, max_gap_ns: int | None) -> np.ndarray:
        if target == source:
            return np.eye(4)
        source_chain, target_chain = self._chain(source), self._chain(target)
        common = next((frame for frame in source_chain if frame in target_chain), None)
        if common is None:
            raise TransformUnavailable(
                f"no transform from {source} to {target}: " + " and ".join(
                    f"{frame}'s tree ends at {chain[-1]}" if len(chain) > 1 else f"{frame} has no parent"
                    for frame, chain in ((source, source_chain), (target, target_chain)))
                + " (is the link between them published?)")
        common_from_source = self._up(source_chain, common, stamp_ns, max_gap_ns)
        common_from_target = self._up(target_chain, common, stamp_ns, max_gap_ns)
        return np.linalg.inv(common_from_target) @ common_from_source

    def _chain(self, frame: str) -> list[str]:
        """`frame`, its parent, its parent's parent, ... up to a frame without a parent."""
        chain = [frame]
        while chain[-1] in self._links and len(chain) <= len(self._links):
            chain.append(self._links[chain[-1]].parent)
        return chain

    def _up(self, chain: list[str], ancestor: str, stamp_ns: int, max_gap_ns: int | None) -> np.ndarray:
        """ancestor_from_chain[0] at `stamp_ns`."""
        ancestor_from_frame = np.eye(4)
        for frame in chain[:chain.index(ancestor)][::-1]:
            ancestor_from_frame = ancestor_from_frame @ self._links[frame].at(frame, stamp_ns, max_gap_ns)
        return ancestor_from_frame


def _name(frame: str) -> str:
    return str(frame).lstrip("/")


def _seconds(stamp_ns: int) -> str:
    return f"{stamp_ns / 1e9:.3f} s"
