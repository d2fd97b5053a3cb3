"""Play a rosbag2 over DDS at the recorded rate, like ``ros2 bag play`` (``posenet-ros play BAG``).

The bag (a rosbag2 folder with ``metadata.yaml``, or a single ``.mcap`` / ``.db3`` file) is read
with ``rosbags.highlevel.AnyReader``; each message is deserialised with the reader's typestore (the
bag's own definitions where it stores them, else ROS 2 Humble's) and converted to the DDS sample of
:func:`posenet_ros.ros.dds_types.dds_type` before it is published by a :class:`~posenet_ros.ros.dds.DdsNode`.
A topic whose type the DDS layer cannot map (not in the Humble typestore, or its messages do not
convert) is skipped with a warning naming it.

Timing: message ``i`` goes out ``(t_i - t_0) / rate`` seconds after the first one of the pass,
where ``t`` is the time the message was recorded (the bag's log time, not ``header.stamp``);
``rate=0`` publishes as fast as possible. With ``loop`` every pass starts the clock anew.

QoS per topic, as the usual publishers of those types use (see :data:`posenet_ros.ros.dds.QOS_PROFILES`):
Image, CompressedImage, CameraInfo and PointCloud2 -> ``sensor_data`` (best effort, keep last 5);
``/tf_static`` -> ``transient_local`` (latched); everything else -> ``default`` (reliable, keep last 10).

Lock-step mode (``step_topic``), for end-to-end tests and deployment checks: after each
sensor_msgs/Image or CompressedImage, wait until a message of ``step_type`` arrives on
``step_topic`` whose ``header.stamp`` equals the image's (i.e. the node under test answered that
frame), or ``step_timeout`` seconds pass (then a warning, and playback goes on). The bag's timing is
ignored in this mode: the next message goes out as soon as the answer is in.

Best-effort delivery and discovery: ``wait_subscribers`` waits until this process's writers have
matched the readers, but a remote reader accepts samples only once it has discovered the writer
itself, which may happen a few milliseconds later; best-effort samples sent in between are lost.
``delay`` (seconds, slept once after the wait) covers that gap, like ``ros2 bag play --delay``.
In lock-step mode the wait also covers the answering side: a publisher on ``step_topic`` must be
matched before playback starts, and until the first answer arrives the messages of the frame waiting
for it (the image and those since the previous image) are re-sent every ``RESEND_S`` seconds, so the
first frame is not lost to discovery; the node ignores a message with the stamp of the one before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rosbags.highlevel import AnyReader

from posenet_ros.ros.bag_reading import bag_topics, describe_topics, open_bag
from posenet_ros.ros.conversions import stamp_to_ns
from posenet_ros.ros.dds import DdsNode, Publisher, Subscription, qos_for_topic, resolve_topic_name
from posenet_ros.ros.dds_types import dds_type, to_dds

__all__ = [
    "DEFAULT_STEP_TYPE",
    "STEP_IMAGE_TYPES",
    "open_bag",
    "play",
]

logger = logging.getLogger(__name__)

# Published with the ``sensor_data`` profile (best effort), as camera and lidar drivers do.
# Messages that lock-step mode waits on an answer for.
STEP_IMAGE_TYPES = frozenset({"sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"})
DEFAULT_STEP_TYPE = "geometry_msgs/msg/PoseWithCovarianceStamped"
_MAX_PENDING_ANSWERS = 1000  # answer stamps remembered in lock-step mode (oldest forgotten first)
RESEND_S = 1.0  # lock-step: seconds between re-sends of a frame until the node first answers


def _select_topics(reader: AnyReader, path: Path, topics: Sequence[str] | None) -> dict[str, str]:
    """The topics to play (topic -> type), checked against the bag."""
    available = bag_topics(reader)
    if topics is None:
        selected = dict(available)
    else:
        wanted = [resolve_topic_name(topic) for topic in topics]
        missing = [topic for topic in wanted if topic not in available]
        if missing:
            raise ValueError(
                f"topic {', '.join(missing)} not in bag {path}; it has: {describe_topics(available)}"
            )
        selected = {topic: available[topic] for topic in dict.fromkeys(wanted)}
    conflicting = {c.topic for c in reader.connections if selected.get(c.topic, c.msgtype) != c.msgtype}
    for topic in sorted(conflicting):
        logger.warning(
            "topic %s has several types in the bag; playing only its %s messages", topic, selected[topic]
        )
    counted = sum(c.msgcount for c in reader.connections if selected.get(c.topic) == c.msgtype)
    if counted == 0:
        if not available or sum(c.msgcount for c in reader.connections) == 0:
            raise ValueError(f"bag {path} is empty (no messages)")
        raise ValueError(f"the selected topics of bag {path} have no messages")
    return selected


def _make_publishers(node: DdsNode, selected: dict[str, str]) -> dict[str, Publisher]:
    """One publisher per playable topic; topics whose type has no DDS mapping are skipped."""
    publishers: dict[str, Publisher] = {}
    for topic, type_name in selected.items():
        try:
            dds_type(type_name)
        except (KeyError, TypeError) as err:
            logger.warning(
                "skipping topic %s: type %s cannot be sent over DDS (%s)",
                topic,
                type_name,
                err.args[0] if err.args else err,
            )
            continue
        publishers[topic] = node.publisher(topic, type_name, qos_for_topic(topic, type_name))
    return publishers


class _StepWaiter:
    """Lock-step answers: stamps (ns) of the messages received on the answer topic."""

    def __init__(self, node: DdsNode, topic: str, type_name: str) -> None:
        try:
            answer_type = dds_type(type_name)
        except (KeyError, TypeError) as err:
            reason = err.args[0] if err.args else err
            raise ValueError(
                f"lock-step answer type {type_name!r} cannot be received over DDS: {reason}"
            ) from None
        if "header" not in getattr(answer_type, "__annotations__", {}):
            raise ValueError(f"lock-step answer type {type_name} has no header to match stamps by")
        self._condition = threading.Condition()
        self._answered: OrderedDict[int, None] = OrderedDict()
        self.heard = False  # any answer arrived
        self.subscription: Subscription = node.subscription(topic, type_name, "default", self._on_answer)

    def _on_answer(self, sample: Any) -> None:
        stamp = stamp_to_ns(sample.header.stamp)
        with self._condition:
            self.heard = True
            self._answered[stamp] = None
            while len(self._answered) > _MAX_PENDING_ANSWERS:
                self._answered.popitem(last=False)
            self._condition.notify_all()

    def forget(self, stamp_ns: int) -> None:
        """Drop an earlier answer with this stamp (call before publishing the image)."""
        with self._condition:
            self._answered.pop(stamp_ns, None)

    def wait(self, stamp_ns: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for an answer stamped ``stamp_ns``; consumes it."""
        with self._condition:
            answered = self._condition.wait_for(lambda: stamp_ns in self._answered, timeout)
            self._answered.pop(stamp_ns, None)
            return answered


def _wait_for_matches(
    publishers: dict[str, Publisher], count: int, timeout: float, step: _StepWaiter | None
) -> None:
    deadline = time.monotonic() + timeout
    for publisher in publishers.values():
        publisher.wait_for_subscribers(count, max(0.0, deadline - time.monotonic()))
    missing = [
        f"{topic} ({publisher.matched_count}/{count})"
        for topic, publisher in publishers.items()
        if publisher.matched_count < count
    ]
    remaining = max(0.0, deadline - time.monotonic())
    if step is not None and not step.subscription.wait_for_publishers(1, remaining):
        missing.append(f"no publisher of the answers on {step.subscription.topic}")
    if missing:
        raise TimeoutError(
            f"not enough subscribers after {timeout:g} s (wanted {count} per topic): {', '.join(missing)}"
        )


def _wait_for_answer(
    step: _StepWaiter, stamp_ns: int, timeout: float, frame_messages: list[tuple[Publisher, Any]]
) -> bool:
    """Wait up to ``timeout`` s for the answer to the image stamped ``stamp_ns``; until any answer has
    arrived, re-send ``frame_messages`` every RESEND_S seconds."""
    deadline = time.monotonic() + timeout
    while not step.heard:
        remaining = deadline - time.monotonic()
        if step.wait(stamp_ns, min(RESEND_S, remaining)):
            return True
        if remaining <= RESEND_S:
            return False
        for publisher, sample in frame_messages:
            publisher.publish(sample)
    return step.wait(stamp_ns, max(0.0, deadline - time.monotonic()))


def _play_pass(
    reader: AnyReader,
    publishers: dict[str, Publisher],
    counts: dict[str, int],
    rate: float,
    step: _StepWaiter | None,
    step_timeout: float,
) -> None:
    """Publish every selected message once, in recording order."""
    connections = [
        c for c in reader.connections if c.topic in publishers and c.msgtype == publishers[c.topic].type_name
    ]
    first_time: int | None = None
    start = 0.0
    frame_messages: list[tuple[Publisher, Any]] = []  # lock-step: published since the previous image
    for connection, recorded_ns, raw in reader.messages(connections=connections):
        publisher = publishers.get(connection.topic)
        if publisher is None:
            continue  # skipped earlier in this pass
        try:
            msg = reader.deserialize(raw, connection.msgtype)
            sample = to_dds(msg, connection.msgtype)
        except Exception as err:
            logger.warning(
                "skipping topic %s: a %s message does not convert to DDS (%s)",
                connection.topic,
                connection.msgtype,
                err,
            )
            del publishers[connection.topic]
            if not publishers:
                raise ValueError("no topic of the bag could be converted for DDS") from err
            continue
        if step is None and rate > 0:
            if first_time is None:
                first_time, start = recorded_ns, time.monotonic()
            pause = start + (recorded_ns - first_time) / 1e9 / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        stamp_ns = None
        if step is not None and connection.msgtype in STEP_IMAGE_TYPES:
            stamp_ns = stamp_to_ns(msg.header.stamp)
            step.forget(stamp_ns)
        publisher.publish(sample)
        counts[connection.topic] += 1
        if step is None:
            continue
        frame_messages.append((publisher, sample))
        if stamp_ns is None:
            continue
        answered = _wait_for_answer(step, stamp_ns, step_timeout, frame_messages)
        frame_messages = []
        if not answered:
            logger.warning(
                "no answer on %s for the %s message stamped %d.%09d within %g s; going on",
                step.subscription.topic,
                connection.topic,
                stamp_ns // 1_000_000_000,
                stamp_ns % 1_000_000_000,
                step_timeout,
            )


def play(
    bag: str | Path,
    *,
    rate: float = 1.0,
    topics: Sequence[str] | None = None,
    loop: bool = False,
    domain_id: int | None = None,
    wait_subscribers: int = 0,
    wait_timeout: float = 10.0,
    delay: float = 0.0,
    step_topic: str | None = None,
    step_type: str = DEFAULT_STEP_TYPE,
    step_timeout: float = 10.0,
    config: str | None = None,
) -> dict[str, int]:
    """Publish the messages of rosbag2 ``bag`` over DDS; returns the number published per topic.

    ``rate``: time scale (2.0 plays twice as fast; 0 as fast as possible). ``topics``: ROS topic
    names to play (default: all). ``loop``: start over at the end, until interrupted.
    ``domain_id``: DDS domain (default ``$ROS_DOMAIN_ID``, else 0). ``wait_subscribers``: before
    the first message, wait until every publisher has at least this many matched readers (and, in
    lock-step mode, the answer topic a publisher), up to ``wait_timeout`` seconds, else raise
    TimeoutError naming the topics short of readers. ``delay``: seconds to sleep after that wait.
    ``step_topic``/``step_type``/``step_timeout``: lock-step mode (see the module docstring).
    ``config``: Cyclone XML configuration for the node (e.g. ``loopback_config()``).

    Raises FileNotFoundError (no such path) or ValueError (not a rosbag2, a requested topic not in
    the bag, empty bag, bad arguments) with a one-line message. KeyboardInterrupt propagates after
    the node and the bag are closed.
    """
    if not rate >= 0:
        raise ValueError(f"rate must be >= 0 (0: as fast as possible), got {rate}")
    if wait_subscribers < 0:
        raise ValueError(f"wait_subscribers must be >= 0, got {wait_subscribers}")
    for name, value in (("wait_timeout", wait_timeout), ("step_timeout", step_timeout)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0 seconds, got {value}")
    if not delay >= 0:
        raise ValueError(f"delay must be >= 0 seconds, got {delay}")
    path = Path(bag)
    with open_bag(path) as reader:
        selected = _select_topics(reader, path, topics)
        with DdsNode("posenet_ros_play", domain_id=domain_id, config=config) as node:
            publishers = _make_publishers(node, selected)
            if not publishers:
                raise ValueError(
                    f"none of the topics of bag {path} can be sent over DDS: {describe_topics(selected)}"
                )
            step = _StepWaiter(node, step_topic, step_type) if step_topic is not None else None
            counts = dict.fromkeys(publishers, 0)
            if wait_subscribers:
                _wait_for_matches(publishers, wait_subscribers, wait_timeout, step)
            if delay:
                time.sleep(delay)
            logger.info(
                "playing %s on DDS domain %d%s",
                ", ".join(publishers),
                node.domain_id,
                " in lock-step with " + step.subscription.topic
                if step is not None
                else f" at rate {rate:g}"
                if rate > 0
                else " as fast as possible",
            )
            while True:
                _play_pass(reader, publishers, counts, rate, step, step_timeout)
                if not loop:
                    break
    return counts
