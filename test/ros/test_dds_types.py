"""ros/dds_types.py: the Cyclone DDS types generated from rosbags' ROS 2 definitions give CDR bytes
identical to rosbags' for every message type, and the fast path for large byte sequences (Image,
CompressedImage, PointCloud2) gives the generic path's bytes. Its speed is measured by
bench/dds_serialization.py; the transport (names, QoS, processes) is tested in test_dds.py.
"""

from __future__ import annotations

import dataclasses
import random
import string
from typing import Any

import numpy as np
from dds_support import dds_image

from posenet_ros.ros.conversions import RosbagsTypes, point_cloud2, points_from_point_cloud2
from posenet_ros.ros.dds_types import (
    dds_type,
    dds_type_name,
    deserialize,
    from_dds,
    has_fast_path,
    serialize,
    to_dds,
    typestore,
)
from posenet_ros.tools.echo import message_to_dict

MESSAGE_TYPES = [
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/CompressedImage",
    "sensor_msgs/msg/CameraInfo",
    "sensor_msgs/msg/PointCloud2",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseArray",
    "geometry_msgs/msg/TransformStamped",
    "tf2_msgs/msg/TFMessage",
    "std_msgs/msg/Bool",
    "std_msgs/msg/Float64",
    "diagnostic_msgs/msg/DiagnosticArray",
    "nav_msgs/msg/Odometry",
]

_INT_RANGES = {
    "byte": (0, 127),  # rosbags packs scalar ``byte`` as signed, IDL octet is unsigned: agree on 0..127
    "char": (0, 255),
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
_NUMPY_DTYPES = {
    "bool": np.bool_,
    "byte": np.uint8,
    "char": np.uint8,
    "float32": np.float32,
    "float64": np.float64,
    **{name: getattr(np, name) for name in _INT_RANGES if name not in ("byte", "char")},
}


# ---------------------------------------------------------------------------------------------
# Values for both representations, generated from rosbags' field definitions


def _base_value(base: str, bound: int, rnd: random.Random, empty: bool) -> Any:
    if base == "string":
        length = 0 if empty else rnd.randint(0, 9)  # odd and even lengths: alignment padding
        if bound:
            length = min(length, bound)
        return "".join(rnd.choice(string.ascii_letters) for _ in range(length))
    if base == "bool":
        return rnd.random() < 0.5
    if base == "float32":
        return rnd.randint(-4000, 4000) / 8.0  # exactly representable in float32
    if base == "float64":
        return rnd.uniform(-1e3, 1e3)
    low, high = _INT_RANGES[base]
    return rnd.randint(low, high)


def _value_pair(desc: tuple[Any, Any], rnd: random.Random, empty: bool) -> tuple[Any, Any]:
    """(rosbags value, DDS value) with the same content for one field description."""
    node, arg = desc
    kind = node.name
    if kind == "BASE":
        value = _base_value(arg[0], arg[1], rnd, empty)
        return value, value
    if kind == "NAME":
        return _message_pair(arg, rnd, empty)
    sub_desc, size = arg
    if kind == "ARRAY":
        length = size
    else:
        length = 0 if empty else rnd.randint(0, 3)
        if size:
            length = min(length, size)
    pairs = [_value_pair(sub_desc, rnd, empty) for _ in range(length)]
    rosbags_values = [p[0] for p in pairs]
    dds_values = [p[1] for p in pairs]
    sub_kind, sub_arg = sub_desc
    if sub_kind.name == "BASE" and sub_arg[0] != "string":
        # rosbags holds numeric arrays and sequences as numpy arrays
        return np.array(rosbags_values, dtype=_NUMPY_DTYPES[sub_arg[0]]), dds_values
    return rosbags_values, dds_values


def _message_pair(name: str, rnd: random.Random, empty: bool = False) -> tuple[Any, Any]:
    """A rosbags message object and a DDS sample of type ``name``, built independently."""
    _, fields = typestore().fielddefs[name]
    rosbags_kwargs, dds_kwargs = {}, {}
    for field_name, desc in fields:
        rosbags_kwargs[field_name], dds_kwargs[field_name] = _value_pair(desc, rnd, empty)
    return typestore().types[name](**rosbags_kwargs), dds_type(name)(**dds_kwargs)


# ---------------------------------------------------------------------------------------------
# CDR bytes identical to rosbags


def test_dds_type_names_follow_ros2_conventions() -> None:
    assert dds_type_name("sensor_msgs/msg/Image") == "sensor_msgs::msg::dds_::Image_"
    image_type = dds_type("sensor_msgs/msg/Image")
    assert image_type is dds_type("sensor_msgs/msg/Image")  # cached
    assert image_type.__idl__.idl_transformed_typename == "sensor_msgs::msg::dds_::Image_"
    header_type = dds_type("std_msgs/msg/Header")
    assert header_type.__idl__.idl_transformed_typename == "std_msgs::msg::dds_::Header_"
    time_type = dds_type("builtin_interfaces/msg/Time")
    assert time_type.__idl__.idl_transformed_typename == "builtin_interfaces::msg::dds_::Time_"
    assert image_type.__annotations__["header"] is header_type
    assert dds_type("diagnostic_msgs/msg/DiagnosticStatus").ERROR == 2  # constants kept
    sample = dds_type("geometry_msgs/msg/PoseWithCovarianceStamped")()  # every field has a default
    assert sample.header.stamp.sec == 0 and len(sample.pose.covariance) == 36


def test_cdr_bytes_equal_rosbags_for_every_used_type() -> None:
    for name in MESSAGE_TYPES:
        for seed in range(6):
            rosbags_msg, sample = _message_pair(name, random.Random(f"{name}-{seed}"), empty=seed == 0)
            expected = bytes(typestore().serialize_cdr(rosbags_msg, name))
            assert expected[:4] == b"\x00\x01\x00\x00"  # XCDR1 little endian, as ROS 2
            data = serialize(sample)
            assert data == expected, f"{name} seed {seed}"
            # and back: decoding either side's bytes gives the same content
            assert serialize(deserialize(expected, name)) == expected
            assert bytes(typestore().serialize_cdr(from_dds(sample), name)) == expected
            assert serialize(to_dds(rosbags_msg)) == expected


def test_cdr_bytes_equal_rosbags_for_whole_typestore() -> None:
    """The generator is generic: every message of the ROS 2 Humble store encodes identically."""
    for name in sorted(typestore().fielddefs):
        rosbags_msg, sample = _message_pair(name, random.Random(name))
        assert serialize(sample) == bytes(typestore().serialize_cdr(rosbags_msg, name)), name


def test_nested_sequences_roundtrip_with_content() -> None:
    _, sample = _message_pair("tf2_msgs/msg/TFMessage", random.Random(3))
    sample.transforms = sample.transforms or [dds_type("geometry_msgs/msg/TransformStamped")()]
    sample.transforms[0].child_frame_id = "camera_optical"
    decoded = deserialize(serialize(sample), "tf2_msgs/msg/TFMessage")
    assert decoded == sample
    assert decoded.transforms[0].child_frame_id == "camera_optical"


# ---------------------------------------------------------------------------------------------
# fast path for large byte sequences


def test_fast_path_bytes_equal_generic_path() -> None:
    assert has_fast_path("sensor_msgs/msg/Image") and has_fast_path("sensor_msgs/msg/CompressedImage")
    assert not has_fast_path("geometry_msgs/msg/PoseStamped")
    image_type = dds_type("sensor_msgs/msg/Image")
    image = dds_image(48, 64, seed=1)
    pixels = np.asarray(image.data)
    generic = image_type(
        header=image.header, height=48, width=64, encoding="rgb8", step=192, data=pixels.reshape(-1).tolist()
    )
    generic_bytes = image_type.__idl__.serialize(generic, use_version_2=False)  # sequence[uint8] path
    for data in (
        pixels,
        pixels.tobytes(),
        bytearray(pixels.tobytes()),
        memoryview(pixels.tobytes()),
        pixels.reshape(-1).tolist(),
    ):
        image.data = data
        assert serialize(image) == generic_bytes
    decoded = image_type.deserialize(generic_bytes)
    assert isinstance(decoded.data, bytes)
    np.testing.assert_array_equal(np.frombuffer(decoded.data, np.uint8), pixels.reshape(-1))
    assert decoded.header == image.header
    generic_decoded = image_type.__idl__.deserialize(generic_bytes)
    assert bytes(generic_decoded.data) == decoded.data

    compressed_type = dds_type("sensor_msgs/msg/CompressedImage")
    compressed = compressed_type(format="jpeg", data=b"\xff\xd8 not really a jpeg \xff\xd9")
    generic_compressed = compressed_type(format="jpeg", data=list(compressed.data))
    assert serialize(compressed) == compressed_type.__idl__.serialize(generic_compressed, use_version_2=False)
    assert isinstance(compressed_type.deserialize(serialize(compressed)).data, bytes)


class _DdsTypes:
    """The builders' MessageTypes over the generated DDS classes (numpy sequences: the fast path's)."""

    get = staticmethod(dds_type)

    @staticmethod
    def sequence(values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values).reshape(-1)


def test_point_cloud2_through_the_dds_type() -> None:
    """The node's scene-point cloud as the DDS runtime sends it (rosbags message -> `to_dds`) and as
    a DDS MessageTypes builds it: the same CDR bytes as rosbags, fast path equal to generic path."""
    name = "sensor_msgs/msg/PointCloud2"
    assert has_fast_path(name) and dds_type(name).__dds_bytes_fields__ == ("data",)
    points = np.random.default_rng(5).normal(size=(40, 3))
    points[7] = np.nan
    cloud = point_cloud2(RosbagsTypes(typestore()), 1_700_000_000_123_456_789, "map", points)
    expected = bytes(typestore().serialize_cdr(cloud, name))
    sample = to_dds(cloud)  # what dds.Publisher.publish does with a rosbags message
    assert isinstance(sample, dds_type(name)) and isinstance(sample.data, bytes)
    assert serialize(sample) == expected
    assert [(f.name, f.offset, f.datatype, f.count) for f in sample.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)]
    assert (sample.height, sample.width, sample.point_step, sample.row_step) == (1, 39, 12, 468)
    assert sample.is_bigendian is False and sample.is_dense is True
    assert sample.header.frame_id == "map" and sample.header.stamp.nanosec == 123_456_789
    finite = np.delete(points, 7, axis=0).astype(np.float32)
    np.testing.assert_array_equal(points_from_point_cloud2(sample), finite)  # read as a subscriber does
    np.testing.assert_array_equal(points_from_point_cloud2(from_dds(sample)), finite)

    built = point_cloud2(_DdsTypes(), 1_700_000_000_123_456_789, "map", points)  # DDS classes directly
    assert isinstance(built, dds_type(name)) and serialize(built) == expected
    generic = dds_type(name)(header=sample.header, height=1, width=39, fields=sample.fields,
                             is_bigendian=False, point_step=12, row_step=468, data=list(sample.data),
                             is_dense=True)
    assert dds_type(name).__idl__.serialize(generic, use_version_2=False) == expected  # sequence[uint8]
    # the generic path decodes uint8[] to a list of ints, the fast path to bytes
    assert dds_type(name).__idl__.deserialize(expected) == dataclasses.replace(sample, data=list(sample.data))

    # echo prints it readably: the fields without PointField's constants, the payload as size and CRC
    values = message_to_dict(from_dds(sample))
    assert values["fields"][2] == {"name": "z", "offset": 8, "datatype": 7, "count": 1}
    assert values["data"].startswith("<468 bytes, crc32 ") and values["width"] == 39
    assert message_to_dict(sample) == values  # the DDS sample itself (constants are class attributes)
