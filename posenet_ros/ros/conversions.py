"""ROS messages <-> numpy, for every runtime: rclpy, rosbags and Cyclone DDS.

Incoming messages are read by duck typing: any object with the ROS field names works (rclpy message
classes, the dataclasses of `rosbags.typesys`, DDS types with the same fields). An uint8[] field such as
`Image.data` may be bytes, bytearray, memoryview, a numpy array of single bytes, `array.array('B')` (what
rclpy gives) or a list of ints (what cyclonedds gives for `sequence[uint8]`); the buffer types are read
without a copy.

Outgoing messages need the runtime's classes, so every builder takes `types`, an object with
`get("pkg/msg/Name") -> class` (see `MessageTypes`): `RosbagsTypes` for bags and the DDS runtime,
`RclpyTypes` for the rclpy node. Messages are built with keyword arguments, which both runtimes accept
for every field. The two runtimes disagree on one thing, the value of an unbounded sequence of numbers
(`uint8[] data`, `float64[] d`): rosbags' CDR serialiser needs a numpy array (`val.view(numpy.uint8)`),
while rclpy's generated setter asserts `collections.abc.Sequence` (which a numpy array is not) unless it
is given an `array.array` of the right typecode, its fast path. So `types.sequence(values)` converts
such values for its runtime. Fixed-size arrays (`float64[36] covariance`, `float64[9] k`) are numpy
float64 arrays of the right size, which both accept.
A runtime may also build a message kind itself: `point_cloud2` hands its checked points to
`types.xyz32_cloud(header, points)` where that exists (`RclpyTypes`: sensor_msgs_py's
`create_cloud_xyz32`, the standard rclpy helper), and builds the identical layout with `types.get`
otherwise.

Conventions:
- Quaternions are (w, x, y, z) in the package and (x, y, z, w) in ROS messages; this module is the only
  place that reorders them. Builders normalise them and make w >= 0.
- `PoseWithCovariance.covariance` is the row-major 6x6 over (x, y, z, rotation about X, Y, Z).
- Stamps are integer nanoseconds (`stamp_to_ns`, `ns_to_stamp`).
- Depth: float32 metres, 0.0 where invalid (no return, NaN, inf, <= 0, or 65535 in 16-bit data).
- Point clouds (`point_cloud2`, `points_from_point_cloud2`): x, y, z as FLOAT32 in the units and frame
  of `header.frame_id` (this package publishes metres in the map frame), unorganised (height 1).

Colour decoding (`image_to_rgb`) reproduces cv_bridge's `imgmsg_to_cv2(msg, "rgb8")` (ROS 2
`cv_bridge/src/cv_bridge.cpp`: `getConversionCodes`, `toCvCopyImpl`, `matFromImage`):
- the OpenCV conversion codes are cv_bridge's: yuv422 (UYVY) -> COLOR_YUV2RGB_UYVY, yuv422_yuy2 ->
  COLOR_YUV2RGB_YUY2, bayer_rggb -> COLOR_BayerBG2RGB, bayer_bggr -> COLOR_BayerRG2RGB, bayer_gbrg ->
  COLOR_BayerGR2RGB, bayer_grbg -> COLOR_BayerGB2RGB (OpenCV names a Bayer pattern by the second row);
- 16-bit encodings are converted at 16 bits first and then scaled as `convertTo(CV_8U, 255/65535)`,
  which rounds to nearest: round(v / 257);
- `step` row padding is honoured and 16-bit data is byte-swapped according to `is_bigendian`.
Where this module deliberately differs from cv_bridge:
- "8UC3" is read as bgr8 and "8UC1" as mono8 (cv_bridge refuses them as the source of an rgb8
  conversion because they are not colour encodings; what produces 8UC3 in practice is `cv2_to_imgmsg`
  of an OpenCV, i.e. BGR, image, and cv_bridge's own `cvtColorForDisplay` means to guess bgr8 for it);
- data longer than `step * height` is accepted (the C++ cv_bridge requires equality, the Python one
  accepts longer data); shorter data is an error.
rosbags-image (`rosbags.image.message_to_cvimage`), which the tests compare against, agrees with the
above on every other encoding except that it ignores `step` (padded rows decode wrongly), passes 8UC3
through unchanged (as if it were rgb8), refuses 8UC1, and truncates instead of rounding when scaling 16
to 8 bits.

Compressed images are decoded with `cv2.imdecode(..., IMREAD_UNCHANGED)` as cv_bridge does; the
channel order follows image_transport's compressed subscriber: BGR(A), unless the format string says
that a colour image was compressed as RGB ("rgb8; jpeg compressed rgb8").
"""

from __future__ import annotations

import array
import enum
import importlib
import operator
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "COLOUR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "POINT_FIELD_FLOAT32",
    "ImageConversionError",
    "ImageProblem",
    "MessageTypes",
    "RclpyTypes",
    "RosbagsTypes",
    "bool_msg",
    "camera_info_msg",
    "compressed_image_msg",
    "compressed_to_rgb",
    "covariance_from_msg",
    "depth_msg",
    "depth_to_metres",
    "diagnostic_array",
    "float64_msg",
    "image_msg",
    "image_to_rgb",
    "message_to_rgb",
    "ns_to_stamp",
    "point_cloud2",
    "points_from_point_cloud2",
    "pose_array",
    "pose_from_msg",
    "pose_stamped",
    "pose_with_covariance_stamped",
    "stamp_to_ns",
    "tf_message",
    "transform_stamped",
]


class ImageProblem(enum.Enum):
    """What is wrong with an image that cannot be converted: the kind of problem, so that a node can
    warn once per kind (a truncated frame right after one of an unknown encoding is another problem)."""

    UNSUPPORTED_ENCODING = "unsupported encoding"  # unknown, or colour where depth is read (or back)
    ZERO_SIZE = "zero size"  # height or width 0
    BAD_LAYOUT = "bad layout"  # step too small or not a multiple of the sample, odd yuv422 width, shape
    TRUNCATED = "truncated data"  # fewer bytes than step x height
    BAD_DATA = "bad data"  # `data` is not a sequence of bytes
    UNDECODABLE = "undecodable"  # compressed data that no decoder reads (empty, corrupt)
    UNUSABLE = "unusable"  # decoded, but the model cannot read it (e.g. smaller than 2x2 px)
    SIZE_MISMATCH = "size mismatch"  # a depth image of another size than its colour image


class ImageConversionError(ValueError):
    """An Image / CompressedImage message that cannot be converted (or an array that cannot be sent);
    `problem` says which kind of problem it is."""

    def __init__(self, message: str, problem: ImageProblem) -> None:
        super().__init__(message)
        self.problem = problem


# --------------------------------------------------------------------------------------------------
# Encodings
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """How an encoding stores a pixel: `channels` samples of `dtype`; `to_rgb` is the cv2 code to RGB."""

    channels: int
    dtype: str
    to_rgb: int | None = None  # None: the samples already are R, G, B


def _colour_layouts() -> dict[str, _Layout]:
    layouts = {
        "rgb8": _Layout(3, "u1"),
        "bgr8": _Layout(3, "u1", cv2.COLOR_BGR2RGB),
        "rgba8": _Layout(4, "u1", cv2.COLOR_RGBA2RGB),
        "bgra8": _Layout(4, "u1", cv2.COLOR_BGRA2RGB),
        "mono8": _Layout(1, "u1", cv2.COLOR_GRAY2RGB),
        "8UC1": _Layout(1, "u1", cv2.COLOR_GRAY2RGB),  # as mono8 (cv_bridge refuses it)
        "8UC3": _Layout(3, "u1", cv2.COLOR_BGR2RGB),  # as bgr8 (cv_bridge refuses it)
        "yuv422": _Layout(2, "u1", cv2.COLOR_YUV2RGB_UYVY),  # sensor_msgs: UYVY byte order
        "uyvy": _Layout(2, "u1", cv2.COLOR_YUV2RGB_UYVY),  # the newer sensor_msgs name
        "yuv422_yuy2": _Layout(2, "u1", cv2.COLOR_YUV2RGB_YUY2),  # YUYV byte order
        "yuyv": _Layout(2, "u1", cv2.COLOR_YUV2RGB_YUY2),  # the newer sensor_msgs name
        "rgb16": _Layout(3, "u2"),
        "bgr16": _Layout(3, "u2", cv2.COLOR_BGR2RGB),
        "rgba16": _Layout(4, "u2", cv2.COLOR_RGBA2RGB),
        "bgra16": _Layout(4, "u2", cv2.COLOR_BGRA2RGB),
        "mono16": _Layout(1, "u2", cv2.COLOR_GRAY2RGB),
    }
    # cv_bridge's Bayer table: the ROS name gives the first row, OpenCV's code names the second row.
    bayer_codes = {
        "rggb": cv2.COLOR_BayerBG2RGB,
        "bggr": cv2.COLOR_BayerRG2RGB,
        "gbrg": cv2.COLOR_BayerGR2RGB,
        "grbg": cv2.COLOR_BayerGB2RGB,
    }
    for pattern, code in bayer_codes.items():
        layouts[f"bayer_{pattern}8"] = _Layout(1, "u1", code)
        layouts[f"bayer_{pattern}16"] = _Layout(1, "u2", code)
    return layouts


_COLOUR = _colour_layouts()
# Depth: millimetres as uint16 (0 and 65535 invalid) or metres as float32.
_DEPTH = {"16UC1": _Layout(1, "u2"), "mono16": _Layout(1, "u2"), "32FC1": _Layout(1, "f4")}

COLOUR_ENCODINGS: tuple[str, ...] = tuple(sorted(_COLOUR))
"""Encodings that `image_to_rgb` decodes."""
DEPTH_ENCODINGS: tuple[str, ...] = tuple(sorted(_DEPTH))
"""Encodings that `depth_to_metres` decodes (16UC1 and mono16 in millimetres, 32FC1 in metres)."""

# Colour encodings as image_transport's compressed subscriber sees them (sensor_msgs isColor()).
_IS_COLOR = {"rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16"}


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 as cv_bridge's `convertTo(CV_8U, 255.0 / 65535.0)`: round(v * 255 / 65535).

    255 / 65535 = 1 / 257 and v / 257 is never exactly halfway, so round-to-nearest is the integer
    expression (v + 128) // 257.
    """
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Reading messages
# --------------------------------------------------------------------------------------------------


def _as_bytes(data: Any) -> np.ndarray:
    """A uint8[] field's value as a 1-D uint8 array (a view, where the value is a buffer)."""
    if isinstance(data, np.ndarray):
        if data.dtype.itemsize != 1:
            raise ImageConversionError(
                f"msg.data must hold single bytes (uint8), got a numpy array of {data.dtype} "
                f"({data.dtype.itemsize}-byte elements)", ImageProblem.BAD_DATA
            )
        return data.reshape(-1).view(np.uint8)
    if isinstance(data, (list, tuple)):
        try:
            return np.frombuffer(bytes(data), dtype=np.uint8)
        except (TypeError, ValueError) as err:
            raise ImageConversionError(
                f"msg.data must be a list of ints in [0, 255]: {err}",
                ImageProblem.BAD_DATA
            ) from None
    try:
        view = memoryview(data)
    except TypeError:
        raise ImageConversionError(
            f"msg.data of type {type(data).__name__} is not bytes, a buffer or a list of ints",
            ImageProblem.BAD_DATA
        ) from None
    if view.itemsize != 1:
        raise ImageConversionError(
            f"msg.data must hold single bytes (uint8), got {view.itemsize}-byte elements "
            f"(format {view.format!r})", ImageProblem.BAD_DATA
        )
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return np.frombuffer(view.cast("B"), dtype=np.uint8)


def _encoding(msg: Any) -> str:
    encoding = msg.encoding
    return encoding.decode() if isinstance(encoding, bytes) else str(encoding)


def _samples(msg: Any, layout: _Layout, encoding: str) -> np.ndarray:
    """The pixels of an Image message, (H, W) or (H, W, C) of the layout's dtype in native byte order.

    8-bit data is returned as a view of `msg.data` (rows may be strided); wider data as a new array.
    """
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(
            f"{encoding} image has zero size: height={height}, width={width}",
            ImageProblem.ZERO_SIZE
        )
    sample = np.dtype(layout.dtype)
    row_bytes = width * layout.channels * sample.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"{encoding} image: step {step} is smaller than width x bytes per pixel = "
            f"{width} x {layout.channels * sample.itemsize} = {row_bytes}", ImageProblem.BAD_LAYOUT
        )
    if step % sample.itemsize:
        raise ImageConversionError(
            f"{encoding} image: step {step} is not a multiple of the {sample.itemsize}-byte sample size",
            ImageProblem.BAD_LAYOUT
        )
    data = _as_bytes(msg.data)
    if data.size < step * height:
        raise ImageConversionError(
            f"{encoding} image: data has {data.size} bytes, fewer than step x height = "
            f"{step} x {height} = {step * height}", ImageProblem.TRUNCATED
        )
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    shape = (height, width) if layout.channels == 1 else (height, width, layout.channels)
    if sample.itemsize == 1:
        return rows.view(sample).reshape(shape)
    wire = sample.newbyteorder(">" if msg.is_bigendian else "<")
    return rows.view(wire).reshape(shape).astype(sample.newbyteorder("="))


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> RGB pixels (H, W, 3) uint8, a new array; equal to cv_bridge's `"rgb8"`.

    Encodings: `COLOUR_ENCODINGS` (rgb8, bgr8, rgba8, bgra8, mono8, mono16, 8UC1 as mono8, 8UC3 as
    bgr8, yuv422 = uyvy, yuv422_yuy2 = yuyv, bayer_{rggb,bggr,gbrg,grbg}{8,16}, rgb16, bgr16, rgba16,
    bgra16). Alpha is dropped; 16-bit values are scaled to 8 bits rounding to nearest. Raises
    `ImageConversionError` for an unsupported encoding or a malformed message.
    """
    encoding = _encoding(msg)
    layout = _COLOUR.get(encoding)
    if layout is None:
        if encoding in _DEPTH:
            raise ImageConversionError(
                f"encoding {encoding!r} is a depth encoding, not a colour one; use depth_to_metres",
                ImageProblem.UNSUPPORTED_ENCODING
            )
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(COLOUR_ENCODINGS)}",
            ImageProblem.UNSUPPORTED_ENCODING
        )
    if layout.channels == 2 and int(msg.width) % 2:
        raise ImageConversionError(
            f"{encoding} image needs an even width, got {int(msg.width)}",
            ImageProblem.BAD_LAYOUT
        )
    pixels = _samples(msg, layout, encoding)
    if layout.to_rgb is None:
        rgb = np.array(pixels, order="C")
    else:
        rgb = cv2.cvtColor(np.ascontiguousarray(pixels), layout.to_rgb)
    return _scale_16_to_8(rgb) if rgb.dtype == np.uint16 else rgb


def _compressed_as_rgb(image_format: str) -> bool:
    """Whether a CompressedImage with this format holds R, G, B where OpenCV expects B, G, R.

    image_transport's compressed subscriber: for a format "<encoding>; <codec> compressed <target>" of
    a colour <encoding>, the decoded channels are BGR if <target> starts with "bgr" and RGB otherwise;
    a bare format ("jpeg", "png") or a mono encoding means plain OpenCV (BGR) order.
    """
    original, sep, rest = image_format.partition(";")
    return bool(sep) and original.strip() in _IS_COLOR and "compressed bgr" not in rest


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG, PNG, ... anything `cv2.imdecode` reads) -> (H, W, 3) uint8 RGB.

    `msg.format` may be "jpeg", "png" or image_transport's "rgb8; jpeg compressed bgr8". Grey images
    become three equal channels, alpha is dropped, 16-bit PNGs are scaled to 8 bits (round(v / 257)).
    compressedDepth messages are not images and are refused. Raises `ImageConversionError`.
    """
    image_format = str(getattr(msg, "format", ""))
    if "compressedDepth" in image_format:
        raise ImageConversionError(
            f"CompressedImage format {image_format!r} is compressed depth, which is not supported",
            ImageProblem.UNSUPPORTED_ENCODING
        )
    data = _as_bytes(msg.data)
    if data.size == 0:
        raise ImageConversionError(
            f"CompressedImage (format {image_format!r}) has no data",
            ImageProblem.UNDECODABLE
        )
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise ImageConversionError(
            f"cannot decode CompressedImage (format {image_format!r}): {err}", ImageProblem.UNDECODABLE
        ) from None
    if image is None:
        raise ImageConversionError(
            f"cannot decode {data.size} bytes of CompressedImage data (format {image_format!r})",
            ImageProblem.UNDECODABLE
        )
    if image.dtype == np.uint16:
        image = _scale_16_to_8(image)
    elif image.dtype != np.uint8:
        raise ImageConversionError(
            f"decoded CompressedImage has unsupported sample type {image.dtype}",
            ImageProblem.UNSUPPORTED_ENCODING
        )
    channels = 1 if image.ndim == 2 else image.shape[2]
    as_rgb = _compressed_as_rgb(image_format)
    if channels == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return np.ascontiguousarray(image) if as_rgb else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB if as_rgb else cv2.COLOR_BGRA2RGB)
    raise ImageConversionError(
        f"decoded CompressedImage has {channels} channels; expected 1, 3 or 4",
        ImageProblem.UNSUPPORTED_ENCODING
    )


def message_to_rgb(msg: Any) -> np.ndarray:
    """`compressed_to_rgb` for a message with a `format` field (CompressedImage), else `image_to_rgb`."""
    return compressed_to_rgb(msg) if hasattr(msg, "format") else image_to_rgb(msg)


def depth_to_metres(msg: Any) -> np.ndarray:
    """sensor_msgs/Image depth -> (H, W) float32 metres, a new array; 0.0 marks invalid pixels.

    16UC1 and mono16 hold millimetres (0 and 65535 are invalid), 32FC1 holds metres (NaN, +-inf and
    values <= 0 are invalid). Honours `step` and `is_bigendian`. Raises `ImageConversionError`.
    """
    encoding = _encoding(msg)
    layout = _DEPTH.get(encoding)
    if layout is None:
        if encoding in _COLOUR:
            raise ImageConversionError(
                f"encoding {encoding!r} is a colour encoding, not depth; depth_to_metres reads "
                f"{', '.join(DEPTH_ENCODINGS)}", ImageProblem.UNSUPPORTED_ENCODING
            )
        raise ImageConversionError(
            f"unsupported depth encoding {encoding!r}; supported: {', '.join(DEPTH_ENCODINGS)}",
            ImageProblem.UNSUPPORTED_ENCODING
        )
    raw = _samples(msg, layout, encoding)
    if layout.dtype == "u2":
        valid = (raw != 0) & (raw != np.iinfo(np.uint16).max)
        metres = raw.astype(np.float32) / np.float32(1000.0)
    else:
        metres = raw.astype(np.float32, copy=True)
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(metres) & (metres > 0)
    metres[~valid] = 0.0
    return metres


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (anything with `sec` and `nanosec`) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) with 0 <= nanosec < 1e9 (negative times floor `sec`).

    Raises TypeError for a non-integer and ValueError when `sec` leaves int32 (Time.sec's type).
    """
    sec, nanosec = divmod(operator.index(ns), 1_000_000_000)
    if not -(2**31) <= sec < 2**31:
        raise ValueError(f"time {ns} ns does not fit builtin_interfaces/Time (int32 seconds)")
    return sec, nanosec


def pose_from_msg(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Position (3,) and quaternion (w, x, y, z) (4,), float64, of a pose-carrying message.

    Accepts Pose, PoseStamped, PoseWithCovariance, PoseWithCovarianceStamped, Odometry (its pose),
    Transform and TransformStamped. The quaternion is returned as stored (not normalised).
    """
    node = msg
    while hasattr(node, "pose"):
        node = node.pose
    if hasattr(node, "transform"):
        node = node.transform
    if hasattr(node, "position") and hasattr(node, "orientation"):
        p, q = node.position, node.orientation
    elif hasattr(node, "translation") and hasattr(node, "rotation"):
        p, q = node.translation, node.rotation
    else:
        raise TypeError(f"{type(msg).__name__} carries no pose (no position/orientation or transform)")
    position = np.array([p.x, p.y, p.z], dtype=np.float64)
    quat_wxyz = np.array([q.w, q.x, q.y, q.z], dtype=np.float64)
    return position, quat_wxyz


def covariance_from_msg(msg: Any) -> np.ndarray:
    """The (6, 6) float64 pose covariance of PoseWithCovariance(Stamped) or Odometry.

    Rows and columns are (x, y, z, rotation about X, Y, Z); the message stores it row-major.
    """
    node = msg
    while not hasattr(node, "covariance") and hasattr(node, "pose"):
        node = node.pose
    if not hasattr(node, "covariance"):
        raise TypeError(f"{type(msg).__name__} carries no pose covariance")
    covariance = np.asarray(node.covariance, dtype=np.float64)
    if covariance.size != 36:
        raise ValueError(f"covariance has {covariance.size} entries, expected 36")
    return covariance.reshape(6, 6).copy()


# sensor_msgs/msg/PointField.datatype values (the message's constants), for error messages.
_POINT_FIELD_TYPES = {1: "INT8", 2: "UINT8", 3: "INT16", 4: "UINT16", 5: "INT32", 6: "UINT32", 7: "FLOAT32",
                      8: "FLOAT64"}
POINT_FIELD_FLOAT32 = 7
"""sensor_msgs/msg/PointField.FLOAT32: the datatype of the x, y, z fields this module writes and reads."""
_XYZ_OFFSETS = (("x", 0), ("y", 4), ("z", 8))
_XYZ_POINT_STEP = 12


def points_from_point_cloud2(msg: Any) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> (N, 3) float32 x, y, z, a new array; N = height x width, row by row.

    The coordinates are in the units and frame of `msg.header.frame_id` (metres in the map frame for
    the clouds this package publishes). The FLOAT32 fields named x, y and z are read at their offsets,
    honouring `point_step`, `row_step` and `is_bigendian`; other fields are ignored. Points are returned
    as stored: a cloud that is not dense may hold NaN. Raises ValueError naming the problem (x, y or z
    missing or not FLOAT32, a field outside `point_step`, `row_step` or data too short).
    """
    offsets: dict[str, int] = {}
    names = []
    for field in msg.fields:
        name = field.name.decode() if isinstance(field.name, bytes) else str(field.name)
        names.append(name)
        if name in ("x", "y", "z") and name not in offsets:
            datatype = int(field.datatype)
            if datatype != POINT_FIELD_FLOAT32:
                raise ValueError(
                    f"PointCloud2 field {name!r} has datatype {datatype} "
                    f"({_POINT_FIELD_TYPES.get(datatype, 'unknown')}); expected FLOAT32 "
                    f"({POINT_FIELD_FLOAT32})"
                )
            offsets[name] = int(field.offset)
    missing = [name for name in ("x", "y", "z") if name not in offsets]
    if missing:
        raise ValueError(f"PointCloud2 has no field {', '.join(missing)}; its fields are "
                         f"{', '.join(repr(name) for name in names) or 'none'}")
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    for name, offset in offsets.items():
        if offset + 4 > point_step:
            raise ValueError(f"PointCloud2 field {name!r} at offset {offset} does not fit in point_step "
                             f"{point_step}")
    if height == 0 or width == 0:
        return np.zeros((0, 3), dtype=np.float32)
    if row_step < width * point_step:
        raise ValueError(f"PointCloud2 row_step {row_step} is smaller than width x point_step = "
                         f"{width} x {point_step} = {width * point_step}")
    data = _as_bytes(msg.data)
    if data.size < row_step * height:
        raise ValueError(f"PointCloud2 data has {data.size} bytes, fewer than row_step x height = "
                         f"{row_step} x {height} = {row_step * height}")
    wire = np.dtype(">f4" if msg.is_bigendian else "<f4")
    columns = [np.ndarray((height, width), wire, buffer=data, offset=offsets[name],
                          strides=(row_step, point_step)) for name in ("x", "y", "z")]
    return np.stack(columns, axis=-1).reshape(-1, 3).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Message classes of a runtime
# --------------------------------------------------------------------------------------------------


class MessageTypes(Protocol):
    """What the builders need from a runtime: its message classes and its sequence representation.

    Optional: `xyz32_cloud(header, points_M3) -> PointCloud2` (see `point_cloud2`)."""

    def get(self, name: str) -> Any:
        """The message class for a ROS 2 full type name such as "geometry_msgs/msg/Pose"."""
        ...

    def sequence(self, values: np.ndarray) -> Any:
        """A 1-D numeric array as this runtime's value for an unbounded sequence field (uint8[] ...)."""
        ...


def _sequence(types: MessageTypes, values: np.ndarray) -> Any:
    convert = getattr(types, "sequence", None)
    return convert(values) if convert is not None else values


class RosbagsTypes:
    """Message classes of a rosbags typestore (default: ROS 2 Humble), for bags and the DDS runtime."""

    def __init__(self, typestore: Any | None = None) -> None:
        if typestore is None:
            from rosbags.typesys import Stores, get_typestore

            typestore = get_typestore(Stores.ROS2_HUMBLE)
        self.typestore = typestore

    def get(self, name: str) -> Any:
        try:
            return self.typestore.types[name]
        except KeyError:
            raise KeyError(f"message type {name!r} is not in the rosbags typestore") from None

    @staticmethod
    def sequence(values: np.ndarray) -> np.ndarray:
        """rosbags serialises numeric sequences from contiguous numpy arrays."""
        return np.ascontiguousarray(values).reshape(-1)


class RclpyTypes:
    """Message classes of rclpy: "pkg/msg/Name" -> `importlib.import_module("pkg.msg").Name`."""

    def __init__(self) -> None:
        self._classes: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._classes:
            package, kind, class_name = name.split("/")  # ValueError unless "pkg/msg/Name"
            self._classes[name] = getattr(importlib.import_module(f"{package}.{kind}"), class_name)
        return self._classes[name]

    @staticmethod
    def sequence(values: np.ndarray) -> array.array:
        """rclpy's setters take an `array.array` of the field's typecode without a per-element check."""
        values = np.ascontiguousarray(values).reshape(-1)
        return array.array(values.dtype.char, values.tobytes())

    @staticmethod
    def xyz32_cloud(header: Any, points_M3: np.ndarray) -> Any:
        """sensor_msgs/PointCloud2 of finite float32 points by `sensor_msgs_py.point_cloud2`'s
        `create_cloud_xyz32` (fields x, y, z FLOAT32 at 0, 4, 8; height 1; point_step 12; native byte
        order, i.e. little-endian on every ROS 2 platform), marked dense: `point_cloud2` dropped the
        non-finite points before, which create_cloud_xyz32 cannot know (it writes is_dense false)."""
        from sensor_msgs_py import point_cloud2 as sensor_msgs_point_cloud2

        cloud = sensor_msgs_point_cloud2.create_cloud_xyz32(header, points_M3)
        cloud.is_dense = True
        return cloud


# --------------------------------------------------------------------------------------------------
# Building messages
# --------------------------------------------------------------------------------------------------


def _header(types: MessageTypes, stamp_ns: int, frame_id: str) -> Any:
    sec, nanosec = ns_to_stamp(stamp_ns)
    stamp = types.get("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec)
    return types.get("std_msgs/msg/Header")(stamp=stamp, frame_id=str(frame_id))


def _finite_vector(values: ArrayLike, size: int, name: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64)
    if vector.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"{name} must be finite, got {vector}")
    return vector


def _unit_quat_wxyz(quat_wxyz: ArrayLike) -> np.ndarray:
    """Finite (w, x, y, z) scaled to unit norm with w >= 0 (geometry.quat_normalize's convention;
    repeated here so that this module does not import torch)."""
    q = _finite_vector(quat_wxyz, 4, "quaternion (w, x, y, z)")
    norm = float(np.linalg.norm(q))
    if norm < 1e-12:
        raise ValueError(f"quaternion (w, x, y, z) has zero norm: {q}")
    q = q / norm
    return -q if q[0] < 0 else q


def _pose(types: MessageTypes, position_3: ArrayLike, quat_wxyz_4: ArrayLike) -> Any:
    x, y, z = _finite_vector(position_3, 3, "position").tolist()
    qw, qx, qy, qz = _unit_quat_wxyz(quat_wxyz_4).tolist()
    return types.get("geometry_msgs/msg/Pose")(
        position=types.get("geometry_msgs/msg/Point")(x=x, y=y, z=z),
        orientation=types.get("geometry_msgs/msg/Quaternion")(x=qx, y=qy, z=qz, w=qw),
    )


def _covariance_36(covariance_66: ArrayLike) -> np.ndarray:
    covariance = np.asarray(covariance_66, dtype=np.float64)
    if covariance.shape != (6, 6):
        raise ValueError(f"covariance must have shape (6, 6), got {covariance.shape}")
    if not np.all(np.isfinite(covariance)):
        raise ValueError("covariance must be finite")
    return np.ascontiguousarray(0.5 * (covariance + covariance.T)).reshape(36)


def pose_with_covariance_stamped(
    types: MessageTypes,
    stamp_ns: int,
    frame_id: str,
    position_3: ArrayLike,
    quat_wxyz_4: ArrayLike,
    covariance_66: ArrayLike,
) -> Any:
    """geometry_msgs/PoseWithCovarianceStamped of the camera pose `frame_id`_from_cam.

    position_3 in metres; quat_wxyz_4 (w, x, y, z), normalised here (w >= 0) and written in ROS order
    (x, y, z, w); covariance_66 over (x, y, z, rotation about X, Y, Z) in m^2 / rad^2, symmetrised as
    (C + C^T) / 2 and stored row-major. Raises ValueError for wrong shapes or non-finite values.
    """
    pose = types.get("geometry_msgs/msg/PoseWithCovariance")(
        pose=_pose(types, position_3, quat_wxyz_4), covariance=_covariance_36(covariance_66)
    )
    return types.get("geometry_msgs/msg/PoseWithCovarianceStamped")(
        header=_header(types, stamp_ns, frame_id), pose=pose
    )


def pose_stamped(
    types: MessageTypes, stamp_ns: int, frame_id: str, position_3: ArrayLike, quat_wxyz_4: ArrayLike
) -> Any:
    """geometry_msgs/PoseStamped; position in metres, quaternion (w, x, y, z) normalised, w >= 0."""
    return types.get("geometry_msgs/msg/PoseStamped")(
        header=_header(types, stamp_ns, frame_id), pose=_pose(types, position_3, quat_wxyz_4)
    )


def transform_stamped(
    types: MessageTypes,
    stamp_ns: int,
    parent_frame: str,
    child_frame: str,
    position_3: ArrayLike,
    quat_wxyz_4: ArrayLike,
) -> Any:
    """geometry_msgs/TransformStamped `parent_frame`_from_`child_frame` (maps child points to parent).

    position_3 is the child origin in the parent frame (metres); quat_wxyz_4 (w, x, y, z) is normalised.
    """
    x, y, z = _finite_vector(position_3, 3, "position").tolist()
    qw, qx, qy, qz = _unit_quat_wxyz(quat_wxyz_4).tolist()
    transform = types.get("geometry_msgs/msg/Transform")(
        translation=types.get("geometry_msgs/msg/Vector3")(x=x, y=y, z=z),
        rotation=types.get("geometry_msgs/msg/Quaternion")(x=qx, y=qy, z=qz, w=qw),
    )
    return types.get("geometry_msgs/msg/TransformStamped")(
        header=_header(types, stamp_ns, parent_frame), child_frame_id=str(child_frame), transform=transform
    )


def tf_message(types: MessageTypes, transforms: list[Any]) -> Any:
    """tf2_msgs/TFMessage holding the given TransformStamped messages (for /tf or /tf_static)."""
    return types.get("tf2_msgs/msg/TFMessage")(transforms=list(transforms))


def pose_array(types: MessageTypes, stamp_ns: int, frame_id: str, poses_N7: ArrayLike) -> Any:
    """geometry_msgs/PoseArray from rows [x, y, z, qw, qx, qy, qz] (metres; quaternions normalised)."""
    poses = np.asarray(poses_N7, dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] != 7:
        raise ValueError(f"poses must have shape (N, 7), got {poses.shape}")
    return types.get("geometry_msgs/msg/PoseArray")(
        header=_header(types, stamp_ns, frame_id), poses=[_pose(types, row[:3], row[3:]) for row in poses]
    )


def _finite_xyz32(points_N3: ArrayLike) -> np.ndarray:
    """(M, 3) contiguous little-endian float32 rows of the points whose coordinates are finite as float32."""
    points = np.asarray(points_N3)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {points.shape}")
    if points.dtype.kind not in "iuf":
        raise ValueError(f"points must be real numbers, got dtype {points.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range: inf, dropped below
        rows = points.astype("<f4")
    return np.ascontiguousarray(rows[np.isfinite(rows).all(axis=1)])


def point_cloud2(types: MessageTypes, stamp_ns: int, frame_id: str, points_N3: ArrayLike) -> Any:
    """sensor_msgs/PointCloud2 of 3-D points in `frame_id` (metres for this package: the scene
    coordinates of a frame in the map frame), stamped `stamp_ns`.

    Layout: fields x, y, z FLOAT32 (PointField datatype 7, count 1) at offsets 0, 4, 8; point_step 12;
    height 1, width M, row_step 12 x M; little-endian (is_bigendian false); data the float32 rows.
    Points with a non-finite coordinate (NaN, inf, or beyond float32's range) are dropped, so the cloud
    is dense (is_dense true); N = 0, or no finite point, gives an empty cloud. Raises ValueError unless
    `points_N3` is a real-valued (N, 3) array. A runtime whose `types` has `xyz32_cloud(header, points)`
    builds the message itself (`RclpyTypes`: sensor_msgs_py's create_cloud_xyz32, the same layout).
    """
    points = _finite_xyz32(points_N3)
    header = _header(types, stamp_ns, frame_id)
    build = getattr(types, "xyz32_cloud", None)
    if build is not None:
        return build(header, points)
    point_field = types.get("sensor_msgs/msg/PointField")
    fields = [point_field(name=name, offset=offset, datatype=POINT_FIELD_FLOAT32, count=1)
              for name, offset in _XYZ_OFFSETS]
    return types.get("sensor_msgs/msg/PointCloud2")(
        header=header,
        height=1,
        width=len(points),
        fields=fields,
        is_bigendian=False,
        point_step=_XYZ_POINT_STEP,
        row_step=_XYZ_POINT_STEP * len(points),
        data=_sequence(types, points.reshape(-1).view(np.uint8)),
        is_dense=True,
    )


def bool_msg(types: MessageTypes, value: bool) -> Any:
    """std_msgs/Bool (e.g. the known-place flag)."""
    return types.get("std_msgs/msg/Bool")(data=bool(value))


def float64_msg(types: MessageTypes, value: float) -> Any:
    """std_msgs/Float64 (e.g. the scalar uncertainty)."""
    return types.get("std_msgs/msg/Float64")(data=float(value))


def diagnostic_array(types: MessageTypes, stamp_ns: int, name: str, hardware_id: str, level: str,
                     message: str, values: dict[str, str]) -> Any:
    """diagnostic_msgs/DiagnosticArray with one status; `level` is "OK", "WARN", "ERROR" or "STALE"
    (the message class's constant, so rclpy gets its `bytes` value and rosbags its int)."""
    status_class = types.get("diagnostic_msgs/msg/DiagnosticStatus")
    key_value = types.get("diagnostic_msgs/msg/KeyValue")
    status = status_class(level=getattr(status_class, level), name=name, message=message,
                          hardware_id=hardware_id,
                          values=[key_value(key=str(k), value=str(v)) for k, v in values.items()])
    array_class = types.get("diagnostic_msgs/msg/DiagnosticArray")
    return array_class(header=_header(types, stamp_ns, ""), status=[status])


def _image_layout(encoding: str) -> _Layout:
    layout = _COLOUR.get(encoding) or _DEPTH.get(encoding)
    if layout is None:
        supported = sorted({*_COLOUR, *_DEPTH})
        raise ImageConversionError(
            f"cannot build encoding {encoding!r}; supported: {', '.join(supported)}",
            ImageProblem.UNSUPPORTED_ENCODING
        )
    return layout


def image_msg(types: MessageTypes, pixels: ArrayLike, stamp_ns: int, frame_id: str, encoding: str) -> Any:
    """sensor_msgs/Image holding `pixels`, which must already be in the layout of `encoding`.

    As cv_bridge's `cv2_to_imgmsg(pixels, encoding)`: no colour conversion happens, so pass RGB to
    "rgb8" and BGR (`rgb[..., ::-1]`) to "bgr8". Shapes: (H, W) for one channel, (H, W, C) otherwise
    ((H, W, 2) for yuv422); dtype uint8 for *8 encodings, uint16 for *16 and 16UC1 (millimetres),
    float32 for 32FC1 (metres) - see `depth_msg` to send depth in metres. Data is little-endian,
    rows unpadded (step = W x bytes per pixel). Raises `ImageConversionError` on a mismatch.
    """
    layout = _image_layout(encoding)
    array_ = np.asarray(pixels)
    if layout.channels == 1 and array_.ndim == 3 and array_.shape[2] == 1:
        array_ = array_[:, :, 0]
    expected_ndim = 2 if layout.channels == 1 else 3
    if array_.ndim != expected_ndim or (expected_ndim == 3 and array_.shape[2] != layout.channels):
        want = "(H, W)" if layout.channels == 1 else f"(H, W, {layout.channels})"
        raise ImageConversionError(
            f"{encoding} needs pixels of shape {want}, got {array_.shape}",
            ImageProblem.BAD_LAYOUT
        )
    if array_.dtype != np.dtype(layout.dtype):
        raise ImageConversionError(
            f"{encoding} needs pixels of dtype {np.dtype(layout.dtype)}, got {array_.dtype}",
            ImageProblem.BAD_LAYOUT
        )
    height, width = array_.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(
            f"cannot send an empty image of shape {array_.shape}",
            ImageProblem.ZERO_SIZE
        )
    wire = np.ascontiguousarray(array_, dtype=np.dtype(layout.dtype).newbyteorder("<"))
    data = wire.reshape(-1).view(np.uint8)
    return types.get("sensor_msgs/msg/Image")(
        header=_header(types, stamp_ns, frame_id),
        height=int(height),
        width=int(width),
        encoding=encoding,
        is_bigendian=0,
        step=int(data.size // height),
        data=_sequence(types, data),
    )


def depth_msg(
    types: MessageTypes, depth_m: ArrayLike, stamp_ns: int, frame_id: str, encoding: str = "32FC1"
) -> Any:
    """sensor_msgs/Image of a (H, W) depth map in metres; the inverse of `depth_to_metres`.

    "32FC1" sends float32 metres; "16UC1" (or "mono16") sends millimetres rounded to integers. Invalid
    depth (NaN, inf, <= 0) and depth a 16-bit image cannot hold (>= 65.5345 m) are sent as 0.
    """
    depth = np.asarray(depth_m, dtype=np.float64)
    if depth.ndim != 2:
        raise ImageConversionError(
            f"depth must have shape (H, W), got {depth.shape}",
            ImageProblem.BAD_LAYOUT
        )
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    if encoding == "32FC1":
        pixels = np.where(valid, depth, 0.0).astype(np.float32)
    elif encoding in ("16UC1", "mono16"):
        millimetres = np.rint(np.where(valid, depth, 0.0) * 1000.0)
        pixels = np.where(millimetres < np.iinfo(np.uint16).max, millimetres, 0.0).astype(np.uint16)
    else:
        raise ImageConversionError(
            f"depth encoding must be 32FC1, 16UC1 or mono16, got {encoding!r}",
            ImageProblem.UNSUPPORTED_ENCODING
        )
    return image_msg(types, pixels, stamp_ns, frame_id, encoding)


def compressed_image_msg(
    types: MessageTypes,
    rgb: ArrayLike,
    stamp_ns: int,
    frame_id: str,
    format: str = "jpeg",
    jpeg_quality: int = 95,
) -> Any:
    """sensor_msgs/CompressedImage of an RGB (H, W, 3) or grey (H, W) uint8 image, "jpeg" or "png".

    The format string is image_transport's: "rgb8; jpeg compressed bgr8" (or "mono8; png compressed
    mono8"), and the data is what `cv2.imencode` writes from the BGR / grey image.
    """
    image = np.asarray(rgb)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ImageConversionError(
            f"need (H, W, 3) or (H, W) uint8 pixels, got {image.shape} {image.dtype}",
            ImageProblem.BAD_LAYOUT
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageConversionError(
            f"cannot compress an empty image of shape {image.shape}",
            ImageProblem.ZERO_SIZE
        )
    if format == "jpeg":
        extension, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    elif format == "png":
        extension, params = ".png", []
    else:
        raise ImageConversionError(
            f"compressed format must be 'jpeg' or 'png', got {format!r}",
            ImageProblem.UNSUPPORTED_ENCODING
        )
    if image.ndim == 3:
        source, target = "rgb8", "bgr8"
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    else:
        source = target = "mono8"
    ok, encoded = cv2.imencode(extension, image, params)
    if not ok:
        raise ImageConversionError(
            f"OpenCV could not encode a {image.shape} image as {format}",
            ImageProblem.UNSUPPORTED_ENCODING
        )
    return types.get("sensor_msgs/msg/CompressedImage")(
        header=_header(types, stamp_ns, frame_id),
        format=f"{source}; {format} compressed {target}",
        data=_sequence(types, encoded.reshape(-1)),
    )


def camera_info_msg(
    types: MessageTypes, stamp_ns: int, frame_id: str, width: int, height: int, K_33: ArrayLike,
    distortion: ArrayLike = (),
) -> Any:
    """sensor_msgs/CameraInfo of a camera with the 3x3 intrinsic matrix K in pixels and OpenCV
    `distortion` (k1 k2 p1 p2 [k3], written as plumb_bob with 5 coefficients; or 8 coefficients,
    rational_polynomial; empty: plumb_bob with zero distortion), R = identity, P = [K | 0]."""
    K = np.asarray(K_33, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise ValueError(f"K must be a finite (3, 3) matrix, got shape {K.shape}")
    D = np.asarray(distortion, dtype=np.float64).reshape(-1)
    if len(D) not in (0, 4, 5, 8) or not np.all(np.isfinite(D)):
        raise ValueError(f"distortion must hold 0, 4, 5 or 8 finite coefficients, got {D.tolist()}")
    model = "rational_polynomial" if len(D) == 8 else "plumb_bob"
    if model == "plumb_bob":
        D = np.concatenate([D, np.zeros(5 - len(D))])
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    P = np.concatenate([K, np.zeros((3, 1))], axis=1)
    roi = types.get("sensor_msgs/msg/RegionOfInterest")(
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return types.get("sensor_msgs/msg/CameraInfo")(
        header=_header(types, stamp_ns, frame_id),
        height=int(height),
        width=int(width),
        distortion_model=model,
        d=_sequence(types, D),
        k=np.ascontiguousarray(K).reshape(9),
        r=np.eye(3, dtype=np.float64).reshape(9),
        p=np.ascontiguousarray(P).reshape(12),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )
