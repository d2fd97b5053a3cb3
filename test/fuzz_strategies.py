"""Hypothesis strategies of the messages a node receives, for the fuzz tests (node/test_pipeline_fuzz.py).

Every message is a well-formed message of its ROS 2 Humble type (rosbags' classes: what bags and the
Cyclone DDS runtime hand the pipeline; every field within its type's range), because that is all a
subscriber can be given; the values are anything the types allow: unknown encodings, sizes, steps and
endianness that disagree, data shorter or longer than the image, bytes that are NaN or inf as
floats, corrupt compressed data, stamps out of order, negative or with nanosec >= 1e9. Bulk data
(pixels, compressed bytes) is made by numpy from a drawn seed, so a large image costs hypothesis one
integer.

Image strategies draw a `Fuzzed`: the message and what the node must do with it, from the rules of
sensor_msgs/Image (`IMAGE_LAYOUTS`, `DEPTH_LAYOUTS`: the encodings the node decodes, with their bytes
per pixel) and of the node (a frame under 2x2 px is rejected). Strategies of the other inputs (camera
info, TF, reset) draw the message alone: the fuzz tests say what the node must do with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from hypothesis import strategies as st
from node_support import TYPES

Expected = Literal["answer", "reject"] | None  # None: either is right (a corrupt JPEG may still decode)

INT32 = (-(2**31), 2**31 - 1)
UINT32_MAX = 2**32 - 1
NS_PER_S = 1_000_000_000
MIN_SIDE_PX = 2  # the node rejects smaller frames (Relocalizer.check_frame)


@dataclass(frozen=True)
class ImageLayout:
    """How sensor_msgs/Image stores a pixel of an encoding: bytes per pixel, bytes per sample, and
    whether the width must be even (4:2:2 YUV: two pixels share their chroma)."""

    pixel_bytes: int
    sample_bytes: int = 1
    even_width: bool = False


IMAGE_LAYOUTS: dict[str, ImageLayout] = {
    **{name: ImageLayout(3) for name in ("rgb8", "bgr8", "8UC3")},
    **{name: ImageLayout(4) for name in ("rgba8", "bgra8")},
    **{name: ImageLayout(1) for name in ("mono8", "8UC1")},
    **{name: ImageLayout(2, even_width=True) for name in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")},
    **{name: ImageLayout(6, 2) for name in ("rgb16", "bgr16")},
    **{name: ImageLayout(8, 2) for name in ("rgba16", "bgra16")},
    "mono16": ImageLayout(2, 2),
    **{f"bayer_{pattern}8": ImageLayout(1) for pattern in ("rggb", "bggr", "gbrg", "grbg")},
    **{f"bayer_{pattern}16": ImageLayout(2, 2) for pattern in ("rggb", "bggr", "gbrg", "grbg")},
}
"""The colour encodings the node decodes (conversions.COLOUR_ENCODINGS), as sensor_msgs lays them out."""

DEPTH_LAYOUTS: dict[str, ImageLayout] = {"16UC1": ImageLayout(2, 2), "mono16": ImageLayout(2, 2),
                                         "32FC1": ImageLayout(4, 4)}
"""The depth encodings the node decodes (conversions.DEPTH_ENCODINGS): millimetres, or metres as float32."""
SPECIAL_FLOATS = np.array([np.nan, np.inf, -np.inf, 0.0, -1.5, 1e30, 2.5], dtype=np.float32)
COMPRESSED_FORMATS = ("jpeg", "png", "rgb8; jpeg compressed bgr8", "bgr8; png compressed rgb8",
                      "mono8; png compressed mono8", "rgb8; jpeg compressed rgb8")


@dataclass(frozen=True)
class Fuzzed:
    """A generated message and what the node must do with it; `why` says what was generated;
    `shape`: the (height, width) in px of a good image (what a depth image paired with it needs)."""

    msg: Any
    expected: Expected
    why: str
    shape: tuple[int, int] | None = None


def _bytes(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def stamps(valid: bool | None = None) -> st.SearchStrategy[Any]:
    """builtin_interfaces/Time over its whole range: any int32 sec (negative, far future); nanosec
    valid (< 1e9) or, with `valid` False or None, up to the uint32 maximum (not a time)."""
    good = st.integers(0, NS_PER_S - 1)
    bad = st.integers(NS_PER_S, UINT32_MAX)
    nanosec = {True: good, False: bad, None: st.one_of(good, good, good, bad)}[valid]
    return st.builds(TYPES.get("builtin_interfaces/msg/Time"), sec=st.integers(*INT32), nanosec=nanosec)


def headers(valid_stamp: bool | None = None) -> st.SearchStrategy[Any]:
    return st.builds(TYPES.get("std_msgs/msg/Header"), stamp=stamps(valid_stamp),
                     frame_id=st.text(max_size=12))


def _stamp_is_valid(header: Any) -> bool:
    return header.stamp.nanosec < NS_PER_S


def _image_message(draw: st.DrawFn, header: Any, encoding: str, layout: ImageLayout | None, height: int,
                   width: int) -> tuple[Any, list[str]]:
    """sensor_msgs/Image of this encoding and size with any step (exact, padded, too small, not a
    sample multiple), is_bigendian (any uint8) and data (exact, truncated, longer; for 32FC1 random
    bytes, or floats that are NaN, +-inf, 0, negative or huge), and the problems it has by `layout`
    (None: an encoding the stream does not decode)."""
    row_bytes = width * (layout.pixel_bytes if layout else draw(st.integers(1, 8)))
    step = draw(st.one_of(st.just(row_bytes), st.integers(row_bytes, row_bytes + 16),
                          st.integers(0, 2 * row_bytes + 16)))
    exact = step * height
    size = draw(st.one_of(st.just(exact), st.integers(0, max(exact - 1, 0)), st.integers(exact, exact + 64)))
    seed = draw(st.integers(0, UINT32_MAX))
    data = _bytes(seed, size)
    if encoding == "32FC1" and draw(st.booleans()):
        floats = np.random.default_rng(seed).choice(SPECIAL_FLOATS, size // 4 + 1).astype("<f4")
        data = floats.view(np.uint8)[:size].copy()
    msg = TYPES.get("sensor_msgs/msg/Image")(
        header=header, height=height, width=width, encoding=encoding, is_bigendian=draw(st.integers(0, 255)),
        step=step, data=data)
    return msg, [why for why, bad in (
        ("encoding not decoded", layout is None),
        ("zero size", height == 0 or width == 0),
        ("step too small", layout is not None and step < width * layout.pixel_bytes),
        ("step not a sample multiple", layout is not None and step % layout.sample_bytes != 0),
        ("odd 4:2:2 width", layout is not None and layout.even_width and width % 2 == 1),
        ("truncated", size < exact),
    ) if bad]


@st.composite
def raw_images(draw: st.DrawFn, max_side: int = 48) -> Fuzzed:
    """sensor_msgs/Image on the image topic: any encoding (decoded, depth, or made up), size (0
    included), step, endianness and data (`_image_message`), and a stamp that may be invalid."""
    header = draw(headers())
    encoding = draw(st.one_of(st.sampled_from(sorted(IMAGE_LAYOUTS)), st.sampled_from(sorted(DEPTH_LAYOUTS)),
                              st.text(max_size=10)))
    height, width = draw(st.integers(0, max_side)), draw(st.integers(0, max_side))
    msg, problems = _image_message(draw, header, encoding, IMAGE_LAYOUTS.get(encoding), height, width)
    checks = (("invalid stamp", not _stamp_is_valid(header)),
              ("under 2x2 px", 0 < min(height, width) < MIN_SIDE_PX))
    problems += [why for why, bad in checks if bad]
    if problems:
        return Fuzzed(msg, "reject", ", ".join(problems))
    return Fuzzed(msg, "answer", f"{encoding} {width}x{height}, step {msg.step}, {len(msg.data)} bytes")


@st.composite
def depth_images(draw: st.DrawFn, height: int, width: int, max_side: int = 48) -> Fuzzed:
    """sensor_msgs/Image on the depth topic, to pair with a colour image of `height` x `width` px:
    any encoding (depth, colour, or made up), that size or another, step, endianness and data
    (`_image_message`: NaN and inf included); a valid stamp (the test sets it to the image's)."""
    header = draw(headers(valid_stamp=True))
    encoding = draw(st.one_of(st.sampled_from(sorted(DEPTH_LAYOUTS)), st.sampled_from(sorted(IMAGE_LAYOUTS)),
                              st.text(max_size=10)))
    same = (height, width)
    depth_height, depth_width = draw(st.one_of(st.just(same), st.just(same),
                                               st.tuples(st.integers(0, max_side), st.integers(0, max_side)),
                                               st.sampled_from([(0, width), (height, 0)])))
    msg, problems = _image_message(draw, header, encoding, DEPTH_LAYOUTS.get(encoding), depth_height,
                                   depth_width)
    if not problems and (depth_height, depth_width) != same:
        problems = ["size mismatch"]
    if problems:
        return Fuzzed(msg, "reject", ", ".join(problems))
    return Fuzzed(msg, "answer", f"{encoding} {depth_width}x{depth_height}, step {msg.step}")


def _encoded(seed: int, height: int, width: int, channels: int, depth: type, extension: str) -> np.ndarray:
    """An image of random pixels encoded by OpenCV (".png" takes 16 bits and 4 channels, ".jpg" 8 bits)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, np.iinfo(depth).max, (height, width, channels), dtype=depth, endpoint=True)
    ok, encoded = cv2.imencode(extension, pixels)
    assert ok
    return encoded.reshape(-1)


@st.composite
def compressed_images(draw: st.DrawFn, max_side: int = 48) -> Fuzzed:
    """sensor_msgs/CompressedImage: a JPEG or PNG of random pixels (grey, colour, with alpha, 8 or 16
    bits), whole, cut short, with bytes flipped or empty, random bytes, or a compressedDepth format;
    any format string; a stamp that may be invalid."""
    header = draw(headers())
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    extension, depth = draw(st.sampled_from([(".jpg", np.uint8), (".png", np.uint8), (".png", np.uint16)]))
    channels = draw(st.sampled_from([1, 3] if extension == ".jpg" else [1, 3, 4]))
    image_format = draw(st.one_of(st.sampled_from(COMPRESSED_FORMATS), st.text(max_size=20)))
    seed = draw(st.integers(0, UINT32_MAX))
    encoded = _encoded(seed, height, width, channels, depth, extension)
    damage = draw(st.sampled_from(["none", "cut", "flipped", "empty", "random", "compressedDepth"]))
    expected: Expected = "answer" if min(height, width) >= MIN_SIDE_PX else "reject"
    if damage == "cut":
        encoded, expected = encoded[: draw(st.integers(1, len(encoded) - 1))], None
    elif damage == "flipped":
        encoded = encoded.copy()
        for index in draw(st.lists(st.integers(0, len(encoded) - 1), min_size=1, max_size=8)):
            encoded[index] ^= 0xFF
        expected = None
    elif damage == "empty":
        encoded, expected = encoded[:0], "reject"
    elif damage == "random":
        encoded, expected = _bytes(seed, draw(st.integers(1, 512))), None
    elif damage == "compressedDepth":
        image_format, expected = "16UC1; compressedDepth png", "reject"
    if not _stamp_is_valid(header) or "compressedDepth" in image_format:
        expected = "reject"
    msg = TYPES.get("sensor_msgs/msg/CompressedImage")(header=header, format=image_format, data=encoded)
    return Fuzzed(msg, expected, f"{extension} {width}x{height}x{channels} {np.dtype(depth)}, {damage}, "
                                 f"format {image_format!r}")


@st.composite
def good_images(draw: st.DrawFn, max_side: int = 48) -> Fuzzed:
    """A frame the node must answer: a decoded encoding with a consistent step (padded or not) and
    data, or an intact JPEG / PNG; its stamp valid (the test sets it)."""
    header = draw(headers(valid_stamp=True))
    height, width = draw(st.integers(MIN_SIDE_PX, max_side)), draw(st.integers(MIN_SIDE_PX, max_side))
    seed = draw(st.integers(0, UINT32_MAX))
    if draw(st.booleans()):
        extension = draw(st.sampled_from([".jpg", ".png"]))
        msg = TYPES.get("sensor_msgs/msg/CompressedImage")(
            header=header, format=draw(st.sampled_from(COMPRESSED_FORMATS)),
            data=_encoded(seed, height, width, 3, np.uint8, extension))
        return Fuzzed(msg, "answer", f"intact {extension} {width}x{height}", (height, width))
    encoding = draw(st.sampled_from(sorted(IMAGE_LAYOUTS)))
    layout = IMAGE_LAYOUTS[encoding]
    width += width % 2 if layout.even_width else 0
    step = width * layout.pixel_bytes + layout.sample_bytes * draw(st.integers(0, 4))
    msg = TYPES.get("sensor_msgs/msg/Image")(
        header=header, height=height, width=width, encoding=encoding, is_bigendian=draw(st.integers(0, 1)),
        step=step, data=_bytes(seed, step * height))
    return Fuzzed(msg, "answer", f"{encoding} {width}x{height}, step {step}", (height, width))


def reset_messages() -> st.SearchStrategy[Any]:
    """std_msgs/Bool on relocalization/reset: true asks for a stream reset, false changes nothing."""
    return st.builds(TYPES.get("std_msgs/msg/Bool"), data=st.booleans())


def _doubles() -> st.SearchStrategy[float]:
    """Any float64: NaN, +-inf, subnormals, huge values, and ordinary ones."""
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e4, 1e4))


def _double_arrays(size: int) -> st.SearchStrategy[np.ndarray]:
    return st.lists(_doubles(), min_size=size, max_size=size).map(lambda v: np.array(v, dtype=np.float64))


def camera_infos(size: tuple[int, int] | None = None) -> st.SearchStrategy[Any]:
    """sensor_msgs/CameraInfo with any size (0 included), distortion model and coefficients (any
    number, NaN and inf), K, R, P of any values (singular, NaN, inf), binning and ROI; with `size`
    (height, width of the images), as often a calibration of that size with a pinhole K of any focal
    length and principal point and distortion of any strength (`_pinhole_infos`), which a node uses."""
    roi = st.builds(TYPES.get("sensor_msgs/msg/RegionOfInterest"),
                    x_offset=st.integers(0, UINT32_MAX), y_offset=st.integers(0, UINT32_MAX),
                    height=st.integers(0, UINT32_MAX), width=st.integers(0, UINT32_MAX),
                    do_rectify=st.booleans())
    anything = st.builds(
        TYPES.get("sensor_msgs/msg/CameraInfo"), header=headers(), height=st.integers(0, UINT32_MAX),
        width=st.integers(0, UINT32_MAX),
        distortion_model=st.one_of(st.sampled_from(["plumb_bob", "rational_polynomial", "equidistant", ""]),
                                   st.text(max_size=12)),
        d=st.integers(0, 14).flatmap(_double_arrays), k=_double_arrays(9), r=_double_arrays(9),
        p=_double_arrays(12), binning_x=st.integers(0, UINT32_MAX), binning_y=st.integers(0, UINT32_MAX),
        roi=roi)
    return anything if size is None else st.one_of(anything, _pinhole_infos(*size))


@st.composite
def _pinhole_infos(draw: st.DrawFn, height: int, width: int) -> Any:
    fx, fy = draw(st.floats(1e-3, 1e5)), draw(st.floats(1e-3, 1e5))
    cx, cy = draw(st.floats(-2.0 * width, 3.0 * width)), draw(st.floats(-2.0 * height, 3.0 * height))
    model, length = draw(st.sampled_from([("", 0), ("plumb_bob", 4), ("plumb_bob", 5),
                                          ("rational_polynomial", 8)]))
    d = draw(st.lists(st.floats(-2.0, 2.0), min_size=length, max_size=length))
    binning = draw(st.sampled_from([0, 1, 2]))
    k = np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
    return TYPES.get("sensor_msgs/msg/CameraInfo")(
        header=draw(headers()), height=height * max(binning, 1), width=width * max(binning, 1),
        distortion_model=model, d=np.array(d, dtype=np.float64), k=k, r=np.eye(3).reshape(-1),
        p=np.concatenate([k.reshape(3, 3), np.zeros((3, 1))], axis=1).reshape(-1), binning_x=binning,
        binning_y=binning, roi=TYPES.get("sensor_msgs/msg/RegionOfInterest")(
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def quaternions() -> st.SearchStrategy[Any]:
    """geometry_msgs/Quaternion of any values: unit, not unit, zero, NaN, inf."""
    return st.builds(TYPES.get("geometry_msgs/msg/Quaternion"), x=_doubles(), y=_doubles(), z=_doubles(),
                     w=_doubles())


ROBOT_FRAMES = ("base_link", "/base_link", "camera", "odom", "map", "", "other")
"""Frame names the TF strategies use besides random ones: a robot's (REP-105), with a leading slash,
empty, and one of nothing, so that generated transforms replace, re-parent and loop the real links."""


def frame_names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ROBOT_FRAMES), st.text(max_size=12))


def transforms() -> st.SearchStrategy[Any]:
    """geometry_msgs/TransformStamped of any frames (a robot's, empty, equal parent and child, random),
    stamp (out of order, invalid nanosec), translation and rotation (`quaternions`)."""
    vector = st.builds(TYPES.get("geometry_msgs/msg/Vector3"), x=_doubles(), y=_doubles(), z=_doubles())
    transform = st.builds(TYPES.get("geometry_msgs/msg/Transform"), translation=vector,
                          rotation=quaternions())
    header = st.builds(TYPES.get("std_msgs/msg/Header"), stamp=stamps(), frame_id=frame_names())
    return st.builds(TYPES.get("geometry_msgs/msg/TransformStamped"), header=header,
                     child_frame_id=frame_names(), transform=transform)


def tf_messages() -> st.SearchStrategy[Any]:
    """tf2_msgs/TFMessage (/tf or /tf_static) of 0 to 4 transforms."""
    return st.builds(TYPES.get("tf2_msgs/msg/TFMessage"), transforms=st.lists(transforms(), max_size=4))
