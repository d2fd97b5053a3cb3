"""Cyclone DDS (pip ``cyclonedds``) types for ROS 2 messages, generated from rosbags' definitions.

Nothing here is hand-written per message: :func:`dds_type` reads ``fielddefs`` of rosbags' ROS 2
Humble typestore and builds a ``cyclonedds.idl.IdlStruct`` dataclass per message, following the
conventions of ROS 2's ``rmw_cyclonedds_cpp`` so that ROS 2 nodes on the same DDS domain match and
decode these samples:

- DDS type name: ``"sensor_msgs/msg/Image"`` -> ``"sensor_msgs::msg::dds_::Image_"``; nested types
  likewise (``std_msgs::msg::dds_::Header_``, ``builtin_interfaces::msg::dds_::Time_``).
- Field mapping (rosbags ``Nodetype`` -> cyclonedds annotation), as in rosidl's .msg -> IDL mapping:
  ``BASE bool`` -> ``bool``; ``byte`` -> ``types.byte`` (IDL octet); ``char`` -> ``types.uint8``;
  ``int8..uint64``, ``float32``, ``float64`` -> ``types.<name>``; ``string`` -> ``str`` (bounded
  ``string<=N`` -> ``types.bounded_str[N]``); ``NAME`` -> the generated struct;
  ``ARRAY (T, N)`` -> ``types.array[T, N]``; ``SEQUENCE (T, 0)`` -> ``types.sequence[T]``;
  ``SEQUENCE (T, N)`` -> ``types.sequence[T, N]``. Extensibility is ``final`` (cyclonedds' default),
  as for all ROS 2 messages. Message constants become class attributes (``DiagnosticStatus_.ERROR``).
  A scalar ``byte`` is an int in 0..255 here (IDL octet); rosbags gives the same wire byte as a
  signed int (-128..127), so :func:`to_dds`/:func:`from_dds` map 255 <-> -1.
- Wire format: XCDR1, i.e. plain CDR with encapsulation header ``00 01 00 00`` (little endian),
  which is what ROS 2 sends. The bytes equal rosbags' ``Typestore.serialize_cdr`` for the same
  content (tested for every message this package uses). :mod:`posenet_ros.ros.dds` additionally sets
  the XCDR1 data-representation QoS on readers and writers so cyclonedds never picks XCDR2.

Samples are ordinary dataclasses with ROS field names (``msg.header.stamp.sec``, ``msg.data``), so
code written against rclpy or rosbags message objects reads them unchanged. Every field has a
default (zeros, empty strings and sequences, default-constructed nested messages).

Fast path for large byte payloads: cyclonedds serialises a ``sequence[uint8]`` element by element
(20-30 ms for a 640x480 rgb8 image) and deserialises it to a Python list. A field annotated
``bytes`` gives identical CDR bytes in about a millisecond, but a Topic cannot be created from such
a type. So a message whose top-level fields include unbounded ``uint8``/``byte``/``char`` sequences
(``sensor_msgs/msg/Image.data``, ``CompressedImage.data``, ``PointCloud2.data``, ...) keeps the
``sequence[uint8]`` annotation (the Topic's type information is the ROS 2 one) but its
``serialize``/``deserialize`` go through a twin class whose such fields are ``bytes``. On that
path ``data`` may be given as ``bytes``, ``bytearray``, ``memoryview``, a numpy array (any shape,
any dtype: its raw bytes are sent) or a list of ints, and is received as ``bytes``. Large uint8
sequences nested deeper than the top level take the generic (slow) path.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np
from cyclonedds.idl import Endianness, IdlMeta, IdlStruct
from cyclonedds.idl import types as idl
from rosbags.interfaces import Nodetype
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

__all__ = [
    "dds_type",
    "dds_type_name",
    "deserialize",
    "from_dds",
    "has_fast_path",
    "ros_type_name",
    "serialize",
    "to_dds",
    "typestore",
]

# rosbags base type name -> (cyclonedds annotation, default value).
_BASE_TYPES: dict[str, tuple[Any, Any]] = {
    "bool": (bool, False),
    "byte": (idl.byte, 0),
    "char": (idl.uint8, 0),
    "int8": (idl.int8, 0),
    "int16": (idl.int16, 0),
    "int32": (idl.int32, 0),
    "int64": (idl.int64, 0),
    "uint8": (idl.uint8, 0),
    "uint16": (idl.uint16, 0),
    "uint32": (idl.uint32, 0),
    "uint64": (idl.uint64, 0),
    "float32": (idl.float32, 0.0),
    "float64": (idl.float64, 0.0),
}
# Element types of sequences that the fast path carries as ``bytes`` (one byte per element).
_BYTE_ELEMENTS = frozenset({"uint8", "byte", "char"})

_LOCK = threading.RLock()
_TYPES: dict[str, type[IdlStruct]] = {}
_TYPESTORE: Typestore | None = None


def typestore() -> Typestore:
    """The rosbags ROS 2 Humble typestore whose definitions the DDS types are generated from."""
    global _TYPESTORE
    with _LOCK:
        if _TYPESTORE is None:
            _TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
        return _TYPESTORE


def dds_type_name(name: str) -> str:
    """ROS 2 DDS type name: ``"sensor_msgs/msg/Image"`` -> ``"sensor_msgs::msg::dds_::Image_"``."""
    parts = name.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"expected a ROS 2 type name like 'pkg/msg/Type', got {name!r}")
    package, kind, type_ = parts
    return f"{package}::{kind}::dds_::{type_}_"


def dds_type(name: str) -> type[IdlStruct]:
    """The cyclonedds ``IdlStruct`` class of ROS 2 message ``name`` (e.g. ``"sensor_msgs/msg/Image"``).

    Generated on first use from rosbags' definition (recursively for nested messages) and cached,
    so each name always maps to the same class (DataWriter checks samples with ``isinstance``).
    The class has ``__ros_msgtype__ = name``.
    """
    with _LOCK:
        cls = _TYPES.get(name)
        if cls is None:
            cls = _build(name)
            _TYPES[name] = cls
        return cls


def ros_type_name(obj: Any) -> str:
    """ROS 2 type name of a DDS sample/class from :func:`dds_type` or of a rosbags message object."""
    for attr in ("__ros_msgtype__", "__msgtype__"):
        name = getattr(obj, attr, None)
        if isinstance(name, str):
            return name
    raise TypeError(f"{obj!r} is neither a generated DDS message nor a rosbags message")


def has_fast_path(name: str) -> bool:
    """Whether ``dds_type(name)`` (de)serialises its top-level byte sequences as ``bytes``."""
    return bool(dds_type(name).__dds_bytes_fields__)


def serialize(sample: IdlStruct) -> bytes:
    """XCDR1 little-endian CDR of ``sample`` with its 4-byte encapsulation header (as ROS 2 sends)."""
    return sample.serialize(endianness=Endianness.Little, use_version_2=False)


def deserialize(data: bytes | bytearray | memoryview, name: str) -> IdlStruct:
    """Decode CDR ``data`` (with encapsulation header; either endianness) into a ``dds_type(name)``."""
    return dds_type(name).deserialize(bytes(data))


def to_dds(msg: Any, name: str | None = None) -> IdlStruct:
    """Convert a rosbags message object to the DDS sample with the same content (via CDR bytes)."""
    name = name or ros_type_name(msg)
    return deserialize(typestore().serialize_cdr(msg, name), name)


def from_dds(sample: IdlStruct, name: str | None = None) -> Any:
    """Convert a DDS sample to the rosbags message object with the same content (via CDR bytes).

    rosbags returns numeric arrays and sequences as numpy arrays (e.g. ``Image.data`` as uint8).
    """
    name = name or ros_type_name(sample)
    return typestore().deserialize_cdr(serialize(sample), name)


# ---------------------------------------------------------------------------------------------
# Generation


def _class_name(name: str) -> str:
    return name.rsplit("/", 1)[-1] + "_"


def _field_type(desc: tuple[Any, Any]) -> tuple[Any, Any]:
    """(cyclonedds annotation, dataclass default or default_factory) for a rosbags field desc.

    The second element is ``("value", v)`` for immutable defaults or ``("factory", f)``.
    """
    node, arg = desc
    if node == Nodetype.BASE:
        base, bound = arg
        if base == "string":
            return (idl.bounded_str[bound] if bound else str), ("value", "")
        if base not in _BASE_TYPES:
            raise TypeError(f"ROS base type {base!r} has no cyclonedds mapping")
        annotation, default = _BASE_TYPES[base]
        return annotation, ("value", default)
    if node == Nodetype.NAME:
        cls = dds_type(arg)
        return cls, ("factory", cls)
    if node == Nodetype.ARRAY:
        sub_desc, length = arg
        sub, (kind, sub_default) = _field_type(sub_desc)
        if kind == "value":
            return idl.array[sub, length], ("factory", lambda: [sub_default] * length)
        return idl.array[sub, length], ("factory", lambda: [sub_default() for _ in range(length)])
    if node == Nodetype.SEQUENCE:
        sub_desc, bound = arg
        sub, _ = _field_type(sub_desc)
        annotation = idl.sequence[sub, bound] if bound else idl.sequence[sub]
        return annotation, ("factory", list)
    raise TypeError(f"unsupported rosbags field description {desc!r}")


def _is_byte_sequence(desc: tuple[Any, Any]) -> bool:
    node, arg = desc
    if node != Nodetype.SEQUENCE:
        return False
    (sub_node, sub_arg), bound = arg
    return bound == 0 and sub_node == Nodetype.BASE and sub_arg[0] in _BYTE_ELEMENTS


def _make_struct(
    class_name: str, typename: str, fields: list[tuple[str, Any, tuple[str, Any]]]
) -> type[IdlStruct]:
    """An IdlStruct dataclass with the given (name, annotation, default) fields, in order."""
    namespace = IdlMeta.__prepare__(class_name, (IdlStruct,), typename=typename)
    namespace["__module__"] = __name__
    namespace["__qualname__"] = class_name
    for field_name, annotation, (kind, default) in fields:
        namespace["__annotations__"][field_name] = annotation
        if kind == "value":
            namespace[field_name] = dataclasses.field(default=default)
        else:
            namespace[field_name] = dataclasses.field(default_factory=default)
    return dataclasses.dataclass(IdlMeta(class_name, (IdlStruct,), namespace))


def _build(name: str) -> type[IdlStruct]:
    store = typestore()
    if name not in store.fielddefs:
        raise KeyError(f"unknown ROS 2 message type {name!r} (not in rosbags' ROS2_HUMBLE typestore)")
    constants, field_descs = store.fielddefs[name]
    typename = dds_type_name(name)
    bytes_fields = tuple(field_name for field_name, desc in field_descs if _is_byte_sequence(desc))
    fields = []
    for field_name, desc in field_descs:
        annotation, default = _field_type(desc)
        # Byte sequences default to b"" (valid on the generic path too, and what the fast path returns).
        fields.append((field_name, annotation, ("factory", bytes) if field_name in bytes_fields else default))
    cls = _make_struct(_class_name(name), typename, fields)
    cls.__ros_msgtype__ = name
    cls.__dds_bytes_fields__ = bytes_fields
    for const_name, _const_type, value in constants:
        setattr(cls, const_name, value)

    if bytes_fields:
        twin_fields = [
            (field_name, bytes, ("value", b"")) if field_name in bytes_fields else (field_name, ann, dflt)
            for field_name, ann, dflt in fields
        ]
        # Never registered as a Topic type (cyclonedds cannot build type information for ``bytes``);
        # it only lends its (de)serialisation machines to ``cls``.
        twin_name = _class_name(name) + "bytes_"
        twin_typename = typename.rsplit("::", 1)[0] + "::" + twin_name
        cls.__dds_twin__ = _make_struct(twin_name, twin_typename, twin_fields)
        cls.__dds_field_names__ = tuple(field_name for field_name, _, _ in fields)
        cls.serialize = _fast_serialize
        cls.deserialize = classmethod(_fast_deserialize)
    return cls


def _as_byte_buffer(value: Any) -> bytes | bytearray | memoryview:
    """Raw bytes of a byte-sequence field value, without copying where possible."""
    if isinstance(value, bytes | bytearray):
        return value
    if isinstance(value, memoryview):
        return value.cast("B") if value.format != "B" or value.ndim != 1 else value
    if isinstance(value, np.ndarray):
        return memoryview(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
    return bytes(value)  # a list/tuple of ints in 0..255


def _fast_serialize(
    self: IdlStruct,
    buffer: Any = None,
    endianness: Endianness | None = None,
    use_version_2: bool | None = None,
) -> bytes:
    """``IdlStruct.serialize`` through the twin class whose byte sequences are ``bytes``."""
    cls = type(self)
    twin = cls.__dds_twin__
    values = {field_name: getattr(self, field_name) for field_name in cls.__dds_field_names__}
    for field_name in cls.__dds_bytes_fields__:
        values[field_name] = _as_byte_buffer(values[field_name])
    return twin.__idl__.serialize(
        twin(**values), buffer=buffer, endianness=endianness, use_version_2=use_version_2
    )


def _fast_deserialize(
    cls: type[IdlStruct], data: bytes, has_header: bool = True, use_version_2: bool | None = None
) -> IdlStruct:
    """``IdlStruct.deserialize`` through the twin class: byte sequences come back as ``bytes``."""
    twin_sample = cls.__dds_twin__.__idl__.deserialize(
        data, has_header=has_header, use_version_2=use_version_2
    )
    return cls(**{field_name: getattr(twin_sample, field_name) for field_name in cls.__dds_field_names__})
