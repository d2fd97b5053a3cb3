"""ROS 2-compatible publish/subscribe on Cyclone DDS directly (pip ``cyclonedds``), without rclpy.

This module is the transport layer only; it knows nothing of relocalization. It speaks the
conventions of ROS 2's ``rmw_cyclonedds_cpp`` so that ROS 2 nodes on the same domain see these
topics and exchange messages with them:

- Topic names: the fully qualified ROS name prefixed with ``rt``: ``/relocalized_pose`` ->
  ``rt/relocalized_pose``, ``/ns/topic`` -> ``rt/ns/topic``. Relative names resolve against the
  node's namespace, ``~/x`` against ``<namespace>/<node name>``, as in ROS 2.
- Types: :func:`posenet_ros.ros.dds_types.dds_type`, i.e. ``pkg::msg::dds_::Type_`` structs whose
  samples are XCDR1 (plain CDR). Readers and writers set the data-representation QoS to XCDR1 only,
  which also makes cyclonedds-python's writer serialise with ``use_version_2=False``.
- QoS profiles (``QOS_PROFILES``), as ROS 2 defines them (rmw_qos_profile_sensor_data,
  rmw_qos_profile_default, and the usual "latched" profile):

  ===================  ===========  ==========  ===============
  profile              reliability  history     durability
  ===================  ===========  ==========  ===============
  ``sensor_data``      best effort  keep last 5   volatile
  ``default``          reliable     keep last 10  volatile
  ``transient_local``  reliable     keep last 1   transient local
  ===================  ===========  ==========  ===============

  plus, as rmw_cyclonedds does, writer auto-dispose off and, for transient local, a durability
  service history equal to the history. ROS 2 matching rules apply: a best-effort writer does not
  serve a reliable reader, a volatile writer does not serve a transient-local reader.

- Domain id: the ``domain_id`` argument, else ``$ROS_DOMAIN_ID``, else 0.

Cyclone configuration: the C library reads ``CYCLONEDDS_URI`` when the first participant of a
domain is created in a process (not at import), so set the variable before creating the first
:class:`DdsNode`, or pass ``config=`` (an XML string, e.g. :func:`loopback_config`) to
:class:`DdsNode`, which creates the domain explicitly with that configuration (then every node of
that domain id in the process must pass the same config while one exists). Tests use
:func:`loopback_config` so that they never touch interfaces other than loopback.

Not implemented: ROS 2's graph information (``ros_discovery_info``), so ``ros2 node list`` does not
list a :class:`DdsNode`, although ``ros2 topic list/echo`` see its topics; services, actions and
parameters.

Threading: each :class:`DdsNode` runs one dispatcher thread that waits on a Cyclone WaitSet and
calls subscription callbacks one at a time (like rclpy's SingleThreadedExecutor); the thread that
creates subscriptions is never blocked. A callback that does heavy work should hand it to a worker
(e.g. a drop-oldest queue) so that the other subscriptions keep being served. Exceptions raised by
callbacks are logged and do not stop the dispatcher. ``publish`` may be called from any thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from cyclonedds.core import (
    DDSException,
    Entity,
    GuardCondition,
    InstanceState,
    Policy,
    Qos,
    ReadCondition,
    SampleState,
    ViewState,
    WaitSet,
)
from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from posenet_ros.ros.dds_types import dds_type, ros_type_name, to_dds

__all__ = [
    "QOS_PROFILES",
    "DdsNode",
    "Publisher",
    "Subscription",
    "dds_topic_name",
    "loopback_config",
    "qos_profile",
    "resolve_topic_name",
    "ros_domain_id",
]

logger = logging.getLogger(__name__)

# name -> (reliable, history depth, transient local)
QOS_PROFILES: dict[str, tuple[bool, int, bool]] = {
    "sensor_data": (False, 5, False),
    "default": (True, 10, False),
    "transient_local": (True, 1, True),
}
SENSOR_DATA_TYPES = frozenset(
    {
        "sensor_msgs/msg/Image",
        "sensor_msgs/msg/CompressedImage",
        "sensor_msgs/msg/CameraInfo",
        "sensor_msgs/msg/PointCloud2",
    }
)
_LATCHED_TOPICS = frozenset({"/tf_static"})


def qos_for_topic(topic: str, type_name: str) -> str:
    """The QoS profile name (of `QOS_PROFILES`) that ``play`` publishes ``topic`` of ROS 2 type
    ``type_name`` with, and that `make-bag` records as the topic's offered QoS."""
    if topic in _LATCHED_TOPICS:
        return "transient_local"
    if type_name in SENSOR_DATA_TYPES:
        return "sensor_data"
    return "default"


_MAX_BLOCKING_TIME = duration(seconds=1)  # a reliable write waits at most this long for resources
_TAKE_BATCH = 32
_WAIT_PERIOD = duration(seconds=1)  # the dispatcher also wakes this often to check for close()


def ros_domain_id(domain_id: int | None = None) -> int:
    """``domain_id`` if given, else ``$ROS_DOMAIN_ID`` if set and not empty, else 0."""
    if domain_id is None:
        env = os.environ.get("ROS_DOMAIN_ID", "").strip()
        domain_id = int(env) if env else 0
    if not 0 <= domain_id <= 232:
        raise ValueError(f"DDS domain id must be in 0..232 (ROS 2's usable range), got {domain_id}")
    return domain_id


def resolve_topic_name(topic: str, namespace: str = "/", node_name: str = "") -> str:
    """Fully qualified ROS 2 topic name: ``image`` in namespace ``/cam`` -> ``/cam/image``.

    Absolute names are returned unchanged; ``~`` and ``~/x`` expand to the node's private namespace.
    """
    if not topic or topic.endswith("/") or "//" in topic:
        raise ValueError(f"invalid ROS topic name {topic!r}")
    namespace = "/" + namespace.strip("/") if namespace.strip("/") else "/"
    if topic == "~" or topic.startswith("~/"):
        if not node_name:
            raise ValueError(f"topic {topic!r} needs a node name to resolve")
        base = namespace.rstrip("/") + "/" + node_name
        return base + topic[1:]
    if topic.startswith("/"):
        return topic
    return namespace.rstrip("/") + "/" + topic


def dds_topic_name(topic: str, namespace: str = "/", node_name: str = "") -> str:
    """DDS topic of ROS topic ``topic``: ``/relocalized_pose`` -> ``rt/relocalized_pose``."""
    return "rt" + resolve_topic_name(topic, namespace, node_name)


def qos_profile(name: str) -> Qos:
    """Cyclone QoS for reader and writer of ROS 2 profile ``name`` (one of ``QOS_PROFILES``)."""
    if name not in QOS_PROFILES:
        raise ValueError(f"unknown QoS profile {name!r}; expected one of {sorted(QOS_PROFILES)}")
    reliable, depth, transient_local = QOS_PROFILES[name]
    policies = [
        Policy.Reliability.Reliable(max_blocking_time=_MAX_BLOCKING_TIME)
        if reliable
        else Policy.Reliability.BestEffort,
        Policy.History.KeepLast(depth),
        Policy.Durability.TransientLocal if transient_local else Policy.Durability.Volatile,
        Policy.WriterDataLifecycle(autodispose=False),
        Policy.DataRepresentation(use_cdrv0_representation=True),  # XCDR1 only, as ROS 2
    ]
    if transient_local:
        policies.append(
            Policy.DurabilityService(
                cleanup_delay=0,
                history=Policy.History.KeepLast(depth),
                max_samples=-1,
                max_instances=-1,
                max_samples_per_instance=-1,
            )
        )
    return Qos(*policies)


def loopback_config(max_participants: int = 32) -> str:
    """A ``CYCLONEDDS_URI`` XML that keeps Cyclone on the loopback interface, unicast only.

    Interface 127.0.0.1 without multicast; discovery by unicast to the peer 127.0.0.1, which
    needs fixed per-participant ports: ``ParticipantIndex`` ``auto`` with up to
    ``max_participants`` participants per domain on the machine (at most 120, so that a domain's
    ports stay within its 250-port block). Equivalent to what ROS 2 Humble does for
    ``ROS_LOCALHOST_ONLY=1`` on a loopback interface without multicast.
    """
    if not 1 <= max_participants <= 120:
        raise ValueError("max_participants must be in 1..120")
    return (
        '<CycloneDDS xmlns="https://cdds.io/config"><Domain Id="any">'
        "<General>"
        '<Interfaces><NetworkInterface address="127.0.0.1" multicast="false"/></Interfaces>'
        "<AllowMulticast>false</AllowMulticast>"
        "</General>"
        "<Discovery>"
        "<ParticipantIndex>auto</ParticipantIndex>"
        f"<MaxAutoParticipantIndex>{max_participants - 1}</MaxAutoParticipantIndex>"
        '<Peers><Peer Address="127.0.0.1"/></Peers>'
        "</Discovery>"
        "</Domain></CycloneDDS>"
    )


def _delete_entity(entity: Entity | None) -> None:
    """Delete a DDS entity (and, in C, all its children) now rather than when Python collects it.

    cyclonedds-python 11 has no public delete; this is what ``Entity.__del__`` does, minus the
    later second attempt.
    """
    if entity is None:
        return
    ref = getattr(entity, "_ref", None)
    if ref is not None and Entity._entities.pop(ref, None) is not None:
        entity._delete(ref)


class _DomainRegistry:
    """Domains created explicitly with a config, shared by the nodes of a process (ref-counted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._domains: dict[int, tuple[Domain, str, int]] = {}

    def acquire(self, domain_id: int, config: str) -> None:
        with self._lock:
            if domain_id in self._domains:
                domain, existing, count = self._domains[domain_id]
                if existing != config:
                    raise ValueError(f"DDS domain {domain_id} already exists with another config")
                self._domains[domain_id] = (domain, existing, count + 1)
                return
            try:
                domain = Domain(domain_id, config)
            except DDSException as err:
                raise RuntimeError(
                    f"cannot create DDS domain {domain_id} with the given config: it already exists in"
                    " this process (created without config?) or the config is invalid"
                ) from err
            self._domains[domain_id] = (domain, config, 1)

    def release(self, domain_id: int) -> None:
        with self._lock:
            domain, config, count = self._domains[domain_id]
            if count > 1:
                self._domains[domain_id] = (domain, config, count - 1)
            else:
                del self._domains[domain_id]
                _delete_entity(domain)


_DOMAINS = _DomainRegistry()


class Publisher:
    """A DataWriter on ``rt/<topic>``; created by :meth:`DdsNode.publisher`."""

    def __init__(self, writer: DataWriter, topic: str, type_name: str, qos: str) -> None:
        self.topic = topic
        self.type_name = type_name
        self.qos = qos
        self._writer = writer
        self._type = dds_type(type_name)

    def publish(self, msg: Any) -> None:
        """Send ``msg``: a sample of ``dds_type(type_name)`` or a rosbags message object of that type."""
        if not isinstance(msg, self._type):
            if ros_type_name(msg) != self.type_name:
                raise TypeError(f"{self.topic} carries {self.type_name}, not {ros_type_name(msg)}")
            msg = to_dds(msg, self.type_name)
        self._writer.write(msg)

    @property
    def matched_count(self) -> int:
        """Number of DataReaders (any process) currently matched with this writer."""
        return self._writer.get_publication_matched_status().current_count

    def wait_for_subscribers(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Poll until at least ``count`` readers are matched; False if ``timeout`` seconds pass first."""
        return _poll(lambda: self.matched_count >= count, timeout)


class Subscription:
    """A DataReader on ``rt/<topic>`` whose samples go to ``callback``; see :meth:`DdsNode.subscription`."""

    def __init__(
        self, reader: DataReader, topic: str, type_name: str, qos: str, callback: Callable[[Any], None]
    ) -> None:
        self.topic = topic
        self.type_name = type_name
        self.qos = qos
        self.callback = callback
        self._reader = reader
        self._condition = ReadCondition(reader, SampleState.NotRead | ViewState.Any | InstanceState.Any)

    @property
    def matched_count(self) -> int:
        """Number of DataWriters (any process) currently matched with this reader."""
        return self._reader.get_subscription_matched_status().current_count

    def wait_for_publishers(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Poll until at least ``count`` writers are matched; False if ``timeout`` seconds pass first."""
        return _poll(lambda: self.matched_count >= count, timeout)

    def _dispatch(self) -> None:
        """Take everything available and hand each valid sample to the callback."""
        while True:
            samples = self._reader.take(N=_TAKE_BATCH)
            for sample in samples:
                info = getattr(sample, "sample_info", None)
                if info is None or not info.valid_data:
                    continue  # instance-state change (e.g. writer gone), no data
                try:
                    self.callback(sample)
                except Exception:
                    logger.exception("callback of subscription %s raised", self.topic)
            if len(samples) < _TAKE_BATCH:
                return


def _poll(predicate: Callable[[], bool], timeout: float, period: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(period)
    return True


class DdsNode:
    """One DomainParticipant with ROS 2-style publishers and subscriptions.

    ``DdsNode(name, namespace="/", domain_id=None, config=None)``; use as a context manager or call
    :meth:`close`. ``config`` is a Cyclone XML configuration (e.g. :func:`loopback_config`); without
    it Cyclone uses ``$CYCLONEDDS_URI`` (read when the process's first participant of the domain is
    created) or its defaults.
    """

    def __init__(
        self,
        name: str = "posenet_ros",
        namespace: str = "/",
        domain_id: int | None = None,
        config: str | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.domain_id = ros_domain_id(domain_id)
        self._config = config
        self._lock = threading.Lock()
        self._closed = False
        self._topics: dict[str, Topic] = {}
        self._publishers: list[Publisher] = []
        self._subscriptions: list[Subscription] = []
        if config is not None:
            _DOMAINS.acquire(self.domain_id, config)
        try:
            self._participant = DomainParticipant(self.domain_id)
            self._guard = GuardCondition(self._participant)
            self._waitset = WaitSet(self._participant)
            self._waitset.attach(self._guard)
        except Exception:
            if config is not None:
                _DOMAINS.release(self.domain_id)
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=f"dds-{name}", daemon=True)
        self._thread.start()

    # -- entities ----------------------------------------------------------------------------

    def _topic(self, topic: str, type_name: str) -> tuple[Topic, str]:
        dds_name = dds_topic_name(topic, self.namespace, self.name)
        data_type = dds_type(type_name)
        existing = self._topics.get(dds_name)
        if existing is not None:
            if existing.data_type is not data_type:
                raise ValueError(f"topic {dds_name} already used with another type in this node")
            return existing, dds_name
        created = Topic(self._participant, dds_name, data_type)
        self._topics[dds_name] = created
        return created, dds_name

    def publisher(self, topic: str, type_name: str, qos: str = "default") -> Publisher:
        """A publisher of ROS 2 type ``type_name`` (``"geometry_msgs/msg/PoseStamped"``) on ``topic``."""
        with self._lock:
            self._check_open()
            dds_topic, _ = self._topic(topic, type_name)
            writer = DataWriter(self._participant, dds_topic, qos=qos_profile(qos))
            pub = Publisher(writer, resolve_topic_name(topic, self.namespace, self.name), type_name, qos)
            self._publishers.append(pub)
            return pub

    def subscription(
        self, topic: str, type_name: str, qos: str, callback: Callable[[Any], None]
    ) -> Subscription:
        """Subscribe to ``topic``; ``callback(sample)`` runs on the node's dispatcher thread.

        Samples are instances of ``dds_type(type_name)`` with ROS field names (``Image_.data`` is
        ``bytes``); :func:`posenet_ros.ros.dds_types.from_dds` turns one into a rosbags message.
        """
        with self._lock:
            self._check_open()
            dds_topic, _ = self._topic(topic, type_name)
            reader = DataReader(self._participant, dds_topic, qos=qos_profile(qos))
            sub = Subscription(
                reader, resolve_topic_name(topic, self.namespace, self.name), type_name, qos, callback
            )
            self._subscriptions.append(sub)
            self._waitset.attach(sub._condition)
            self._guard.set(True)  # let the dispatcher pick up the new subscription at once
            return sub

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("DdsNode is closed")

    # -- dispatcher --------------------------------------------------------------------------

    def _spin(self) -> None:
        while not self._stop.is_set():
            try:
                self._waitset.wait(_WAIT_PERIOD)
            except DDSException:
                if self._stop.is_set():
                    return
                raise
            if self._stop.is_set():
                return
            self._guard.take()
            with self._lock:
                subscriptions = list(self._subscriptions)
            for sub in subscriptions:
                if self._stop.is_set():
                    return
                try:
                    sub._dispatch()
                except DDSException:
                    if self._stop.is_set():
                        return  # entities deleted by close() while dispatching
                    raise

    # -- lifetime ----------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Stop the dispatcher (waiting up to ``timeout`` s for a running callback) and delete all
        DDS entities of this node. Idempotent. Must not be called from inside a callback."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._guard.set(True)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("DDS dispatcher of node %s still busy after %.1f s", self.name, timeout)
        for sub in self._subscriptions:
            self._waitset.detach(sub._condition)
        self._waitset.detach(self._guard)
        self._publishers.clear()
        self._subscriptions.clear()
        self._topics.clear()
        # Deleting the participant deletes its readers, writers, topics, conditions and waitset.
        _delete_entity(self._participant)
        if self._config is not None:
            _DOMAINS.release(self.domain_id)

    def __enter__(self) -> DdsNode:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
