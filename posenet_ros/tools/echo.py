"""Print the messages of a topic received over DDS, like ``ros2 topic echo`` (``posenet-ros echo TOPIC``).

The type is given (``type_name``, e.g. ``"geometry_msgs/msg/PoseWithCovarianceStamped"``) or
discovered: Cyclone's built-in publication topic lists every writer of the domain, and the first
one on ``rt<topic>`` gives the DDS type name ``pkg::msg::dds_::Type_``, i.e. ``pkg/msg/Type``.

Each sample is converted with :func:`posenet_ros.ros.dds_types.from_dds` to a rosbags message and
then by :func:`message_to_dict` to plain Python values, printed as

- ``yaml`` (default): block-style YAML as ``ros2 topic echo`` prints it, each message followed by a
  line ``---``;
- ``json``: one JSON object per line. Floats are written by ``repr`` (shortest string that reads back
  to the same double; float32 fields are printed as the double of their exact value), so parsing
  the line gives back the exact values. Non-finite floats are written as ``NaN``/``Infinity``
  (which Python's ``json`` reads, strict JSON parsers do not).

In both formats byte payloads (``uint8``/``byte``/``char`` arrays and sequences such as
``Image.data``) longer than :data:`MAX_LISTED_BYTES` are abbreviated to a string
``'<N bytes, crc32 XXXXXXXX>'`` (the CRC-32 of the payload, as ``zlib.crc32``, in hex), so large
images neither flood the terminal nor go unchecked; shorter ones are lists of ints. All other
arrays are printed in full.

Readiness: once the subscription exists, a line ``echo: subscribed to TOPIC [TYPE]`` goes to stderr,
so that a script can start the publisher after it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml
from cyclonedds.builtin import BuiltinDataReader, BuiltinTopicDcpsPublication
from cyclonedds.core import InstanceState, Policy, ReadCondition, SampleState, ViewState
from rosbags.interfaces import Nodetype

from posenet_ros.ros.dds import QOS_PROFILES, DdsNode, dds_topic_name, resolve_topic_name
from posenet_ros.ros.dds_types import dds_type, from_dds, typestore

__all__ = [
    "FORMATS",
    "MAX_LISTED_BYTES",
    "discover_publisher_type",
    "echo",
    "format_message",
    "message_to_dict",
    "ros_type_from_dds_name",
]

logger = logging.getLogger(__name__)

FORMATS = ("yaml", "json")
# Byte payloads longer than this are abbreviated as '<N bytes, crc32 XXXXXXXX>'.
MAX_LISTED_BYTES = 32
_BYTE_ELEMENTS = frozenset({"uint8", "byte", "char"})
_POLL_PERIOD_S = 0.05


# ---------------------------------------------------------------------------------------------
# Messages -> plain values


def _byte_fields(type_name: str | None) -> frozenset[str]:
    """Fields of ROS 2 type ``type_name`` that are arrays or sequences of uint8/byte/char."""
    if type_name is None:
        return frozenset()
    definition = typestore().fielddefs.get(type_name)
    if definition is None:
        return frozenset()
    names = set()
    for field_name, (node, arg) in definition[1]:
        if node in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            (sub_node, sub_arg), _ = arg
            if sub_node == Nodetype.BASE and sub_arg[0] in _BYTE_ELEMENTS:
                names.add(field_name)
    return frozenset(names)


def _constant_names(type_name: str | None) -> frozenset[str]:
    """Constants of ROS 2 type ``type_name`` (``PointField.FLOAT32``, ``DiagnosticStatus.ERROR``):
    rosbags' classes carry them as dataclass fields, the DDS classes as class attributes."""
    definition = typestore().fielddefs.get(type_name) if type_name is not None else None
    return frozenset(name for name, _type, _value in definition[0]) if definition is not None else frozenset()


def _abbreviate_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> str:
    raw = np.ascontiguousarray(data).view(np.uint8) if isinstance(data, np.ndarray) else bytes(data)
    return f"<{raw.size if isinstance(raw, np.ndarray) else len(raw)} bytes, crc32 {zlib.crc32(raw):08x}>"


def _plain(value: Any, is_bytes: bool, max_bytes: int) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return message_to_dict(value, max_bytes=max_bytes)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return _abbreviate_bytes(data) if len(data) > max_bytes else list(data)
    if isinstance(value, np.ndarray):
        if (is_bytes or value.dtype == np.uint8) and value.size > max_bytes:
            return _abbreviate_bytes(value)
        if value.dtype == object:
            return [_plain(item, False, max_bytes) for item in value.tolist()]
        return value.tolist()
    if isinstance(value, list | tuple):
        if is_bytes and len(value) > max_bytes and all(isinstance(item, int) for item in value):
            return _abbreviate_bytes(bytes(item & 0xFF for item in value))
        return [_plain(item, False, max_bytes) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def message_to_dict(msg: Any, *, max_bytes: int = MAX_LISTED_BYTES) -> dict[str, Any]:
    """A ROS message (rosbags dataclass, or a DDS sample of ``dds_type``) as nested plain values.

    Nested messages become dicts in field order, numpy arrays and sequences lists of Python
    numbers, numpy scalars Python scalars. Byte payloads (uint8/byte/char arrays, ``bytes``) longer
    than ``max_bytes`` become ``'<N bytes, crc32 XXXXXXXX>'``. Field names starting with ``__``
    (rosbags' ``__msgtype__``) and the type's constants (rosbags' ``PointField.FLOAT32`` ...) are left
    out, as ``ros2 topic echo`` does, so a rosbags message and its DDS sample give the same dict.
    """
    if not dataclasses.is_dataclass(msg) or isinstance(msg, type):
        raise TypeError(f"expected a ROS message object (a dataclass), got {type(msg).__name__}")
    type_name = getattr(msg, "__msgtype__", None) or getattr(msg, "__ros_msgtype__", None)
    type_name = type_name if isinstance(type_name, str) else None
    byte_fields = _byte_fields(type_name)
    constants = _constant_names(type_name)
    return {
        field.name: _plain(getattr(msg, field.name), field.name in byte_fields, max_bytes)
        for field in dataclasses.fields(msg)
        if not field.name.startswith("__") and field.name not in constants
    }


def format_message(values: dict[str, Any], fmt: str = "yaml") -> str:
    """Text of one message from :func:`message_to_dict`: YAML ending in ``---`` or one JSON line.

    The result ends with a newline.
    """
    if fmt == "yaml":
        # PyYAML writes floats by repr (plus ".0" before an exponent), so they read back exactly.
        text = yaml.safe_dump(
            values, default_flow_style=False, sort_keys=False, allow_unicode=True, width=2**31 - 1
        )
        return text + "---\n"
    if fmt == "json":
        return json.dumps(values, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------------
# Type discovery


def ros_type_from_dds_name(dds_name: str) -> str:
    """ROS 2 type of a DDS type name: ``"sensor_msgs::msg::dds_::Image_"`` -> ``"sensor_msgs/msg/Image"``."""
    parts = dds_name.split("::")
    if (
        len(parts) != 4
        or parts[2] != "dds_"
        or not parts[3].endswith("_")
        or not all(parts[:2])
        or len(parts[3]) < 2
    ):
        raise ValueError(f"{dds_name!r} is not a ROS 2 DDS type name (pkg::msg::dds_::Type_)")
    return f"{parts[0]}/{parts[1]}/{parts[3][:-1]}"


def discover_publisher_type(node: DdsNode, topic: str, timeout: float = 10.0) -> tuple[str, bool]:
    """ROS 2 type of a publisher of ``topic`` seen through DDS discovery, and whether it is best effort.

    Reads Cyclone's built-in DCPSPublication topic on ``node``'s participant until a live writer on
    ``rt<topic>`` appears (``topic`` resolved against ``/``), polling for up to ``timeout`` seconds;
    raises TimeoutError if none does, ValueError if its type is not a ROS 2 one.
    """
    dds_name = dds_topic_name(topic)
    # DdsNode has no public accessor for its participant; the built-in reader must live on it so
    # that it sees what this node's participant has discovered.
    reader = BuiltinDataReader(node._participant, BuiltinTopicDcpsPublication)
    alive = ReadCondition(reader, SampleState.Any | ViewState.Any | InstanceState.Alive)
    deadline = time.monotonic() + timeout
    other_types: set[str] = set()
    while True:
        for endpoint in reader.take(N=64, condition=alive):
            info = getattr(endpoint, "sample_info", None)
            if info is not None and not info.valid_data:
                continue
            if endpoint.topic_name == dds_name:
                best_effort = endpoint.qos is not None and Policy.Reliability.BestEffort in endpoint.qos
                return ros_type_from_dds_name(endpoint.type_name), best_effort
            other_types.add(endpoint.topic_name)
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"no publisher of {resolve_topic_name(topic)} appeared on DDS domain {node.domain_id} within "
                f"{timeout:g} s (give --type to subscribe without waiting for one)"
            )
        time.sleep(_POLL_PERIOD_S)


# ---------------------------------------------------------------------------------------------
# echo


@contextmanager
def _open_output(output: str | Path | None) -> Iterator[TextIO]:
    if output is None:
        yield sys.stdout
        return
    with open(output, "a", encoding="utf-8") as stream:
        yield stream


def echo(
    topic: str,
    *,
    type_name: str | None = None,
    qos: str = "default",
    count: int | None = None,
    timeout: float | None = None,
    wait_timeout: float = 10.0,
    domain_id: int | None = None,
    fmt: str = "yaml",
    output: str | Path | None = None,
    config: str | None = None,
) -> int:
    """Subscribe to ``topic`` over DDS and print each message; returns the number printed.

    ``type_name``: ROS 2 type (``"pkg/msg/Type"``); None discovers it from a publisher, waiting up to
    ``wait_timeout`` seconds (TimeoutError if none appears). ``qos``: profile of the subscription
    (a key of ``QOS_PROFILES``; a reliable one does not receive from best-effort publishers such as
    cameras, for those use ``"sensor_data"``). Stops after ``count`` messages, or ``timeout``
    seconds after subscribing, whichever comes first (neither: until interrupted).
    ``fmt``: ``"yaml"`` or ``"json"`` (see the module docstring). ``output``: a file to append to,
    flushed after every message, instead of stdout. ``domain_id``: default ``$ROS_DOMAIN_ID``, else
    0. ``config``: Cyclone XML configuration for the node (e.g. ``loopback_config()``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if qos not in QOS_PROFILES:
        raise ValueError(f"unknown QoS profile {qos!r}; expected one of {', '.join(QOS_PROFILES)}")
    if count is not None and count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    for name, value in (("timeout", timeout), ("wait_timeout", wait_timeout)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 seconds, got {value}")
    resolved = resolve_topic_name(topic)
    if type_name is not None:
        try:
            dds_type(type_name)
        except (KeyError, TypeError) as err:
            reason = err.args[0] if err.args else err
            raise ValueError(f"cannot subscribe with type {type_name!r}: {reason}") from None
    samples: queue.SimpleQueue[Any] = queue.SimpleQueue()
    printed = 0
    with DdsNode("posenet_ros_echo", domain_id=domain_id, config=config) as node:
        if type_name is None:
            type_name, best_effort = discover_publisher_type(node, resolved, wait_timeout)
            if best_effort and QOS_PROFILES[qos][0]:
                logger.warning(
                    "the publisher of %s is best effort, which a %r (reliable) subscription does "
                    "not receive from; use --qos sensor_data",
                    resolved,
                    qos,
                )
        node.subscription(resolved, type_name, qos, samples.put)
        print(f"echo: subscribed to {resolved} [{type_name}]", file=sys.stderr, flush=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        with _open_output(output) as stream:
            while count is None or printed < count:
                wait = 0.5
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        break
                try:
                    sample = samples.get(timeout=wait)
                except queue.Empty:
                    continue
                stream.write(format_message(message_to_dict(from_dds(sample, type_name)), fmt))
                stream.flush()
                printed += 1
    return printed
