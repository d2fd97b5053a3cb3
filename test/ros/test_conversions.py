"""ros/conversions.py on real rosbags message classes.

Decoding is compared with rosbags-image (a reimplementation of cv_bridge) on every encoding both
support, and with cv_bridge's documented behaviour where rosbags-image differs (it ignores `step`,
truncates when scaling 16 to 8 bits and passes 8UC3 through as if it were rgb8).
"""

from __future__ import annotations

import array
import dataclasses
import math
import sys
import types as types_module
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from rosbags.image import message_to_cvimage
from rosbags.typesys import Stores, get_typestore

from posenet_ros.ros import conversions as conv
from posenet_ros.ros.conversions import ImageConversionError

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
TYPES = conv.RosbagsTypes(TYPESTORE)
H, W = 10, 37  # odd width catches stride bugs
W_YUV = 38  # 4:2:2 needs an even width
STAMP_NS = 1_700_000_123_456_789_012

EIGHT_BIT_SHARED = [  # 8-bit encodings that rosbags-image decodes as cv_bridge does
    "rgb8",
    "bgr8",
    "rgba8",
    "bgra8",
    "mono8",
    "yuv422",
    "uyvy",
    "yuv422_yuy2",
    "yuyv",
    "bayer_rggb8",
    "bayer_bggr8",
    "bayer_gbrg8",
    "bayer_grbg8",
]
SIXTEEN_BIT = ["mono16", "rgb16", "bgr16", "rgba16", "bgra16"] + [
    f"bayer_{p}16" for p in ("rggb", "bggr", "gbrg", "grbg")
]
# cv_bridge's code for each 16-bit encoding (ROS 2 cv_bridge.cpp getConversionCodes); None = RGB already.
CV_BRIDGE_CODE_16 = {
    "mono16": cv2.COLOR_GRAY2RGB,
    "rgb16": None,
    "bgr16": cv2.COLOR_BGR2RGB,
    "rgba16": cv2.COLOR_RGBA2RGB,
    "bgra16": cv2.COLOR_BGRA2RGB,
    "bayer_rggb16": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr16": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg16": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg16": cv2.COLOR_BayerGB2RGB,
}


def channels_of(encoding: str) -> int:
    if encoding.startswith(("rgba", "bgra")):
        return 4
    if encoding.startswith(("rgb", "bgr", "8UC3")):
        return 3
    if encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
        return 2
    return 1


def random_pixels(encoding: str, seed: int = 0) -> np.ndarray:
    """Seeded random pixels in the layout of `encoding`, (H, W) or (H, W, C)."""
    rng = np.random.default_rng(seed)
    channels = channels_of(encoding)
    width = W_YUV if channels == 2 else W
    shape = (H, width) if channels == 1 else (H, width, channels)
    if "16" in encoding:
        return rng.integers(0, 65536, shape, dtype=np.uint16)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def make_image(
    encoding: str, pixels: np.ndarray, *, pad: int = 0, bigendian: bool = False, frame_id: str = "cam"
) -> object:
    """A rosbags sensor_msgs/Image with `pad` bytes of garbage after every row."""
    height, width = pixels.shape[:2]
    wire_dtype = pixels.dtype.newbyteorder(">" if bigendian else "<")
    rows = np.ascontiguousarray(pixels, dtype=wire_dtype).reshape(height, -1).view(np.uint8)
    garbage = np.full((height, pad), 0xA5, dtype=np.uint8)
    data = np.concatenate([rows, garbage], axis=1).reshape(-1)
    header = conv._header(TYPES, STAMP_NS, frame_id)
    return TYPESTORE.types["sensor_msgs/msg/Image"](
        header=header,
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=rows.shape[1] + pad,
        data=data,
    )


def cdr_round_trip(msg: object) -> object:
    msgtype = type(msg).__msgtype__
    return TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(msg, msgtype), msgtype)


# --------------------------------------------------------------------------------------------------
# image_to_rgb
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", EIGHT_BIT_SHARED)
def test_8bit_matches_rosbags_image(encoding: str) -> None:
    pixels = random_pixels(encoding)
    plain = make_image(encoding, pixels)
    expected = message_to_cvimage(plain, "rgb8")
    for pad in (0, 3, 8):
        rgb = conv.image_to_rgb(make_image(encoding, pixels, pad=pad))
        assert rgb.dtype == np.uint8 and rgb.shape == (pixels.shape[0], pixels.shape[1], 3)
        assert rgb.flags.c_contiguous and rgb.flags.writeable
        np.testing.assert_array_equal(rgb, expected)


def test_rosbags_image_ignores_step_but_we_do_not() -> None:
    rgb = random_pixels("rgb8")
    padded = make_image("rgb8", rgb, pad=5)
    np.testing.assert_array_equal(conv.image_to_rgb(padded), rgb)
    assert not np.array_equal(message_to_cvimage(padded, "rgb8"), rgb)  # the discrepancy we document


@pytest.mark.parametrize("encoding", SIXTEEN_BIT)
def test_16bit_follows_cv_bridge(encoding: str) -> None:
    """cv_bridge converts colour at 16 bits, then convertTo(CV_8U, 255/65535), which rounds."""
    pixels = random_pixels(encoding, seed=1)
    code = CV_BRIDGE_CODE_16[encoding]
    converted = pixels if code is None else cv2.cvtColor(pixels, code)
    expected = cv2.convertScaleAbs(converted, alpha=255.0 / 65535.0)  # saturate_cast rounding
    for bigendian in (False, True):
        for pad in (0, 6):
            msg = make_image(encoding, pixels, pad=pad, bigendian=bigendian)
            np.testing.assert_array_equal(conv.image_to_rgb(msg), expected)
    # rosbags-image truncates instead of rounding: off by at most one, and often.
    ours = conv.image_to_rgb(make_image(encoding, pixels, bigendian=True))
    theirs = message_to_cvimage(make_image(encoding, pixels, bigendian=True), "rgb8")
    difference = ours.astype(int) - theirs.astype(int)
    assert difference.min() >= 0 and difference.max() == 1


def test_scale_16_to_8_is_round_to_nearest_for_every_value() -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    scaled = conv._scale_16_to_8(values)
    np.testing.assert_array_equal(scaled, cv2.convertScaleAbs(values, alpha=255.0 / 65535.0))
    np.testing.assert_array_equal(scaled, np.rint(values / 257.0).astype(np.uint8))
    assert scaled[0, 0] == 0 and scaled[-1, -1] == 255


def test_big_endian_16bit_equals_little_endian() -> None:
    pixels = random_pixels("mono16", seed=2)
    little = conv.image_to_rgb(make_image("mono16", pixels))
    big = conv.image_to_rgb(make_image("mono16", pixels, bigendian=True, pad=2))
    np.testing.assert_array_equal(little, big)


def test_8uc3_is_bgr8_and_8uc1_is_mono8() -> None:
    rgb = random_pixels("rgb8", seed=3)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    np.testing.assert_array_equal(conv.image_to_rgb(make_image("8UC3", bgr, pad=1)), rgb)
    # rosbags-image passes 8UC3 through unchanged (as if it were rgb8); cv_bridge refuses it.
    np.testing.assert_array_equal(message_to_cvimage(make_image("8UC3", bgr), "rgb8"), bgr)
    grey = random_pixels("mono8", seed=3)
    np.testing.assert_array_equal(
        conv.image_to_rgb(make_image("8UC1", grey, pad=3)), conv.image_to_rgb(make_image("mono8", grey))
    )


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Bayer mosaic whose 2x2 tile, read row by row, is `pattern` (e.g. "rggb": R at (0, 0))."""
    out = np.zeros(rgb.shape[:2], dtype=rgb.dtype)
    for index, colour in enumerate(pattern):
        dy, dx = divmod(index, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "rgb".index(colour)]
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_patterns_give_true_colours(pattern: str, bits: int) -> None:
    """Ground truth for cv_bridge's non-obvious Bayer table: a flat colour survives demosaicing."""
    colour = np.array([200, 100, 30]) * (257 if bits == 16 else 1)
    dtype = np.uint16 if bits == 16 else np.uint8
    flat = np.broadcast_to(colour, (8, 9, 3)).astype(dtype)
    rgb = conv.image_to_rgb(make_image(f"bayer_{pattern}{bits}", mosaic(flat, pattern), pad=bits // 4))
    np.testing.assert_array_equal(rgb[2:-2, 2:-2], np.broadcast_to([200, 100, 30], (4, 5, 3)))


def test_uyvy_and_yuy2_are_byte_orders_of_the_same_pixels() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(16, 236, (H, W_YUV), dtype=np.uint8)
    u = rng.integers(16, 241, (H, W_YUV // 2), dtype=np.uint8)
    v = rng.integers(16, 241, (H, W_YUV // 2), dtype=np.uint8)
    uyvy = np.stack([u, y[:, 0::2], v, y[:, 1::2]], axis=-1).reshape(H, W_YUV, 2)
    yuyv = np.stack([y[:, 0::2], u, y[:, 1::2], v], axis=-1).reshape(H, W_YUV, 2)
    from_uyvy = conv.image_to_rgb(make_image("yuv422", uyvy, pad=4))
    from_yuyv = conv.image_to_rgb(make_image("yuv422_yuy2", yuyv, pad=4))
    np.testing.assert_array_equal(from_uyvy, from_yuyv)
    np.testing.assert_array_equal(from_uyvy, cv2.cvtColor(uyvy, cv2.COLOR_YUV2RGB_UYVY))


@pytest.mark.parametrize(
    "wrap",
    [
        bytes,
        bytearray,
        lambda b: memoryview(b),
        lambda b: np.frombuffer(b, dtype=np.uint8),
        lambda b: np.frombuffer(b, dtype=np.int8),
        lambda b: array.array("B", b),
        list,
        tuple,
    ],
    ids=["bytes", "bytearray", "memoryview", "numpy", "numpy_int8", "array", "list", "tuple"],
)
def test_every_data_container_decodes_identically(wrap: Callable[[bytes], object]) -> None:
    bgr = random_pixels("bgr8", seed=5)
    msg = make_image("bgr8", bgr, pad=3)
    expected = bgr[..., ::-1]
    wrapped = dataclasses.replace(msg, data=wrap(msg.data.tobytes()))
    np.testing.assert_array_equal(conv.image_to_rgb(wrapped), expected)
    np.testing.assert_array_equal(conv.message_to_rgb(wrapped), expected)


def test_result_is_a_copy_not_a_view_of_the_message() -> None:
    rgb = random_pixels("rgb8", seed=6)
    msg = make_image("rgb8", rgb)
    out = conv.image_to_rgb(msg)
    out[:] = 0
    np.testing.assert_array_equal(conv.image_to_rgb(msg), rgb)


@pytest.mark.parametrize(
    "encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "yuv422", "bayer_grbg8", "mono16", "rgb16"]
)
def test_image_msg_cdr_round_trip(encoding: str) -> None:
    pixels = random_pixels(encoding, seed=7)
    msg = cdr_round_trip(conv.image_msg(TYPES, pixels, STAMP_NS, "cam", encoding))
    assert msg.encoding == encoding and msg.header.frame_id == "cam"
    assert conv.stamp_to_ns(msg.header.stamp) == STAMP_NS
    assert msg.step == pixels.shape[1] * channels_of(encoding) * pixels.dtype.itemsize
    expected = conv.image_to_rgb(make_image(encoding, pixels, pad=2, bigendian=True))
    np.testing.assert_array_equal(conv.image_to_rgb(msg), expected)
    if encoding == "rgb8":
        np.testing.assert_array_equal(conv.image_to_rgb(msg), pixels)
    if encoding == "bgr8":
        np.testing.assert_array_equal(conv.image_to_rgb(msg), pixels[..., ::-1])


# --------------------------------------------------------------------------------------------------
# depth
# --------------------------------------------------------------------------------------------------


def test_depth_16uc1_millimetres_and_invalid_values() -> None:
    raw = np.array([[0, 1, 1500, 65534, 65535]], dtype=np.uint16)
    for encoding in ("16UC1", "mono16"):
        for bigendian in (False, True):
            depth = conv.depth_to_metres(make_image(encoding, raw, pad=2, bigendian=bigendian))
            assert depth.dtype == np.float32 and depth.shape == (1, 5)
            np.testing.assert_allclose(depth, [[0.0, 0.001, 1.5, 65.534, 0.0]], rtol=1e-7)


def test_depth_32fc1_metres_and_invalid_values() -> None:
    raw = np.array([[np.nan, np.inf, -np.inf, -1.0, 0.0, 0.25, 7.5]], dtype=np.float32)
    for bigendian in (False, True):
        depth = conv.depth_to_metres(make_image("32FC1", raw, pad=4, bigendian=bigendian))
        np.testing.assert_array_equal(depth, np.array([[0, 0, 0, 0, 0, 0.25, 7.5]], dtype=np.float32))


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1", "mono16"])
def test_depth_msg_cdr_round_trip(encoding: str) -> None:
    rng = np.random.default_rng(8)
    depth = rng.uniform(0.2, 9.0, (H, W))
    depth[0, 0], depth[1, 1], depth[2, 2], depth[3, 3] = np.nan, 0.0, -2.0, 70.0  # invalid / too far
    msg = cdr_round_trip(conv.depth_msg(TYPES, depth, STAMP_NS, "depth", encoding))
    decoded = conv.depth_to_metres(msg)
    expected = depth.copy()
    expected[[0, 1, 2], [0, 1, 2]] = 0.0
    expected[3, 3] = 0.0 if encoding != "32FC1" else 70.0
    tolerance = 0.5e-3 if encoding != "32FC1" else 1e-6
    np.testing.assert_allclose(decoded, expected, atol=tolerance, rtol=1e-6)
    assert decoded[0, 0] == decoded[1, 1] == decoded[2, 2] == 0.0


# --------------------------------------------------------------------------------------------------
# CompressedImage
# --------------------------------------------------------------------------------------------------


def smooth_rgb(height: int = 24, width: int = 37) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), (xx + yy) * 3 % 256], -1).astype(
        np.uint8
    )


def test_compressed_png_is_exact_and_matches_rosbags_image() -> None:
    rgb = smooth_rgb()
    msg = cdr_round_trip(conv.compressed_image_msg(TYPES, rgb, STAMP_NS, "cam", format="png"))
    assert msg.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(conv.compressed_to_rgb(msg), rgb)
    np.testing.assert_array_equal(conv.message_to_rgb(msg), rgb)
    np.testing.assert_array_equal(message_to_cvimage(msg, "rgb8"), rgb)


def test_compressed_jpeg_is_close_and_matches_rosbags_image() -> None:
    rgb = smooth_rgb()
    msg = cdr_round_trip(conv.compressed_image_msg(TYPES, rgb, STAMP_NS, "cam", format="jpeg"))
    assert msg.format == "rgb8; jpeg compressed bgr8"
    decoded = conv.compressed_to_rgb(msg)
    assert decoded.shape == rgb.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - rgb).mean() < 3.0
    np.testing.assert_array_equal(decoded, message_to_cvimage(msg, "rgb8"))
    for bare_format in ("jpeg", "bgr8; jpeg compressed bgr8"):
        np.testing.assert_array_equal(
            conv.compressed_to_rgb(dataclasses.replace(msg, format=bare_format)), decoded
        )


def test_compressed_grey_alpha_16bit_and_rgb_order() -> None:
    rgb = smooth_rgb()
    base = conv.compressed_image_msg(TYPES, rgb, STAMP_NS, "cam", format="png")

    def with_png(image: np.ndarray, image_format: str) -> object:
        ok, encoded = cv2.imencode(".png", image)
        assert ok
        return dataclasses.replace(base, format=image_format, data=encoded.reshape(-1))

    grey = rgb[..., 0].copy()
    grey_msg = conv.compressed_image_msg(TYPES, grey, STAMP_NS, "cam", format="png")
    assert grey_msg.format == "mono8; png compressed mono8"
    np.testing.assert_array_equal(conv.compressed_to_rgb(grey_msg), np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(conv.compressed_to_rgb(grey_msg), message_to_cvimage(grey_msg, "rgb8"))
    bgra = np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 77, np.uint8)])
    bgra_msg = with_png(bgra, "bgra8; png compressed bgra8")
    np.testing.assert_array_equal(conv.compressed_to_rgb(bgra_msg), rgb)
    np.testing.assert_array_equal(message_to_cvimage(bgra_msg, "rgb8"), rgb)
    # 16-bit PNG whose values v / 257 round back to rgb
    deep = np.minimum(rgb[..., ::-1].astype(np.int64) * 257 + 100, 65535).astype(np.uint16)
    deep_msg = with_png(deep, "bgr16; png compressed bgr16")
    np.testing.assert_array_equal(conv.compressed_to_rgb(deep_msg), rgb)
    # rosbags-image lets imdecode(IMREAD_ANYCOLOR) reduce the depth, which truncates: within one.
    assert np.abs(message_to_cvimage(deep_msg, "rgb8").astype(int) - rgb).max() <= 1
    # image_transport: a colour image "compressed rgb8" holds R, G, B where OpenCV expects B, G, R.
    np.testing.assert_array_equal(conv.compressed_to_rgb(with_png(rgb, "rgb8; png compressed rgb8")), rgb)


@pytest.mark.parametrize(
    ("image_format", "data", "match"),
    [
        ("jpeg", b"", "no data"),
        ("jpeg", b"not an image at all", "cannot decode"),
        ("16UC1; compressedDepth png", b"\x00" * 16, "compressed depth"),
    ],
)
def test_compressed_errors(image_format: str, data: bytes, match: str) -> None:
    msg = conv.compressed_image_msg(TYPES, smooth_rgb(), STAMP_NS, "cam")
    bad = dataclasses.replace(msg, format=image_format, data=np.frombuffer(data, np.uint8))
    with pytest.raises(ImageConversionError, match=match):
        conv.compressed_to_rgb(bad)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


def _rgb_msg(**changes: object) -> object:
    return dataclasses.replace(make_image("rgb8", random_pixels("rgb8")), **changes)


@pytest.mark.parametrize(
    ("msg_factory", "match"),
    [
        (lambda: _rgb_msg(encoding="rgb10"), r"unsupported image encoding 'rgb10'; supported: .*bgr8"),
        (lambda: _rgb_msg(encoding="16UC1"), "depth encoding.*use depth_to_metres"),
        (lambda: _rgb_msg(encoding="32FC1"), "depth encoding"),
        (lambda: _rgb_msg(width=0), "zero size"),
        (lambda: _rgb_msg(height=0), "zero size"),
        (lambda: _rgb_msg(step=W * 3 - 1), "step 110 is smaller than width x bytes per pixel"),
        (lambda: _rgb_msg(data=_rgb_msg().data[:-1]), "fewer than step x height"),
        (lambda: _rgb_msg(data=np.zeros(H * W * 3 // 2, np.uint16)), "single bytes.*uint16"),
        (lambda: _rgb_msg(data=array.array("H", [0] * (H * W * 3))), "single bytes"),
        (lambda: _rgb_msg(data=[0, 1, 300] * (H * W)), r"list of ints in \[0, 255\]"),
        (lambda: _rgb_msg(data=12345), "not bytes"),
        (lambda: make_image("yuv422", random_pixels("yuv422")[:, :-1]), "even width"),
        (
            lambda: dataclasses.replace(make_image("mono16", random_pixels("mono16")), step=2 * W + 1),
            "not a multiple of the 2-byte sample size",
        ),
    ],
)
def test_bad_images_raise_useful_errors(msg_factory: Callable[[], object], match: str) -> None:
    msg = msg_factory()
    with pytest.raises(ImageConversionError, match=match):
        conv.image_to_rgb(msg)


def test_depth_errors() -> None:
    with pytest.raises(ImageConversionError, match="'rgb8' is a colour encoding, not depth"):
        conv.depth_to_metres(make_image("rgb8", random_pixels("rgb8")))
    with pytest.raises(ImageConversionError, match="unsupported depth encoding '64FC1'"):
        conv.depth_to_metres(_rgb_msg(encoding="64FC1"))
    with pytest.raises(ImageConversionError, match="fewer than step x height"):
        short = make_image("32FC1", np.ones((4, 5), np.float32))
        conv.depth_to_metres(dataclasses.replace(short, data=short.data[:-4]))
    assert issubclass(ImageConversionError, ValueError)


def test_builder_errors() -> None:
    with pytest.raises(ImageConversionError, match="rgb8 needs pixels of dtype uint8"):
        conv.image_msg(TYPES, np.zeros((4, 5, 3), np.float32), 0, "cam", "rgb8")
    with pytest.raises(ImageConversionError, match=r"rgb8 needs pixels of shape \(H, W, 3\)"):
        conv.image_msg(TYPES, np.zeros((4, 5), np.uint8), 0, "cam", "rgb8")
    with pytest.raises(ImageConversionError, match="cannot build encoding 'jpeg'"):
        conv.image_msg(TYPES, np.zeros((4, 5), np.uint8), 0, "cam", "jpeg")
    with pytest.raises(ImageConversionError, match="'jpeg' or 'png'"):
        conv.compressed_image_msg(TYPES, np.zeros((4, 5, 3), np.uint8), 0, "cam", format="webp")
    with pytest.raises(ImageConversionError, match="depth encoding must be"):
        conv.depth_msg(TYPES, np.ones((4, 5)), 0, "cam", encoding="rgb8")


# --------------------------------------------------------------------------------------------------
# stamps
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ns", [0, 1, 999_999_999, 1_000_000_000, STAMP_NS, -1, -1_500_000_000])
def test_stamp_round_trip(ns: int) -> None:
    sec, nanosec = conv.ns_to_stamp(ns)
    assert 0 <= nanosec < 1_000_000_000 and sec * 1_000_000_000 + nanosec == ns
    stamp = TYPESTORE.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    assert conv.stamp_to_ns(stamp) == ns
    assert conv.ns_to_stamp(np.int64(ns)) == (sec, nanosec)


def test_stamp_errors() -> None:
    with pytest.raises(ValueError, match="int32"):
        conv.ns_to_stamp(2**31 * 1_000_000_000)
    with pytest.raises(TypeError):
        conv.ns_to_stamp(1.5)


# --------------------------------------------------------------------------------------------------
# poses
# --------------------------------------------------------------------------------------------------

HALF = math.sqrt(0.5)
QUAT_Z90_WXYZ = np.array([HALF, 0.0, 0.0, HALF])  # 90 degrees about +z


def distinct_symmetric_covariance() -> np.ndarray:
    """C[i, j] = C[j, i] = 10 * min(i, j) + max(i, j) + 1: every upper-triangle entry distinct."""
    i, j = np.indices((6, 6))
    return 10.0 * np.minimum(i, j) + np.maximum(i, j) + 1.0


def test_pose_with_covariance_quaternion_order_and_covariance_layout() -> None:
    covariance = distinct_symmetric_covariance()
    msg = conv.pose_with_covariance_stamped(
        TYPES, STAMP_NS, "map", [1.0, -2.0, 3.5], QUAT_Z90_WXYZ, covariance
    )
    q = msg.pose.pose.orientation
    assert (q.x, q.y, q.z) == (0.0, 0.0, pytest.approx(HALF)) and q.w == pytest.approx(HALF)
    p = msg.pose.pose.position
    assert (p.x, p.y, p.z) == (1.0, -2.0, 3.5)
    assert msg.header.frame_id == "map" and conv.stamp_to_ns(msg.header.stamp) == STAMP_NS
    flat = msg.pose.covariance
    assert flat.shape == (36,) and flat.dtype == np.float64
    assert flat[0] == 1.0  # var(x)
    assert flat[1] == flat[6] == 2.0  # cov(x, y), row-major
    assert flat[5] == flat[30] == 6.0  # cov(x, rotZ)
    assert flat[3 * 6 + 5] == flat[5 * 6 + 3] == 36.0  # cov(rotX, rotZ)
    assert flat[35] == 56.0  # var(rotZ)
    np.testing.assert_array_equal(conv.covariance_from_msg(msg), covariance)


def test_pose_builder_normalises_canonicalises_and_symmetrises() -> None:
    upper = np.triu(distinct_symmetric_covariance())
    msg = conv.pose_with_covariance_stamped(TYPES, 0, "map", [0, 0, 0], -2.0 * QUAT_Z90_WXYZ, upper)
    q = msg.pose.pose.orientation
    np.testing.assert_allclose([q.w, q.x, q.y, q.z], QUAT_Z90_WXYZ, atol=1e-15)  # unit norm, w >= 0
    np.testing.assert_array_equal(conv.covariance_from_msg(msg), (upper + upper.T) / 2)


@pytest.mark.parametrize(
    ("position", "quat", "covariance", "match"),
    [
        ([0, 0, np.nan], QUAT_Z90_WXYZ, np.eye(6), "position must be finite"),
        ([0, 0], QUAT_Z90_WXYZ, np.eye(6), r"position must have shape \(3,\)"),
        ([0, 0, 0], [0, 0, 0, 0], np.eye(6), "zero norm"),
        ([0, 0, 0], [1, 0, np.inf, 0], np.eye(6), "must be finite"),
        ([0, 0, 0], [1, 0, 0], np.eye(6), r"shape \(4,\)"),
        ([0, 0, 0], QUAT_Z90_WXYZ, np.eye(3), r"covariance must have shape \(6, 6\)"),
        ([0, 0, 0], QUAT_Z90_WXYZ, np.full((6, 6), np.inf), "covariance must be finite"),
    ],
)
def test_pose_builder_errors(position: object, quat: object, covariance: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        conv.pose_with_covariance_stamped(TYPES, 0, "map", position, quat, covariance)


def test_all_builders_survive_cdr_and_read_back() -> None:
    rng = np.random.default_rng(9)
    position = rng.normal(size=3)
    quat = rng.normal(size=4)
    quat = quat / np.linalg.norm(quat) * np.sign(quat[0])
    covariance = distinct_symmetric_covariance() * 1e-3

    pwcs = cdr_round_trip(
        conv.pose_with_covariance_stamped(TYPES, STAMP_NS, "map", position, quat, covariance)
    )
    ps = cdr_round_trip(conv.pose_stamped(TYPES, STAMP_NS, "map", position, quat))
    ts = cdr_round_trip(conv.transform_stamped(TYPES, STAMP_NS, "map", "camera", position, quat))
    odometry = TYPESTORE.types["nav_msgs/msg/Odometry"](
        header=pwcs.header,
        child_frame_id="camera",
        pose=pwcs.pose,
        twist=TYPESTORE.types["geometry_msgs/msg/TwistWithCovariance"](
            twist=TYPESTORE.types["geometry_msgs/msg/Twist"](
                linear=TYPESTORE.types["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                angular=TYPESTORE.types["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
            ),
            covariance=np.zeros(36),
        ),
    )
    odometry = cdr_round_trip(odometry)
    for msg in (pwcs, pwcs.pose, pwcs.pose.pose, ps, ps.pose, ts, ts.transform, odometry):
        read_position, read_quat = conv.pose_from_msg(msg)
        assert read_position.dtype == read_quat.dtype == np.float64
        np.testing.assert_allclose(read_position, position, rtol=0, atol=1e-15)
        np.testing.assert_allclose(read_quat, quat, rtol=0, atol=1e-15)
    for msg in (pwcs, pwcs.pose, odometry):
        np.testing.assert_allclose(conv.covariance_from_msg(msg), covariance, rtol=1e-15)
    assert ts.header.frame_id == "map" and ts.child_frame_id == "camera"

    tf = cdr_round_trip(conv.tf_message(TYPES, [ts, ts]))
    assert len(tf.transforms) == 2 and tf.transforms[1].child_frame_id == "camera"
    poses = np.concatenate([np.stack([position, -position]), np.stack([quat, quat])], axis=1)
    array_msg = cdr_round_trip(conv.pose_array(TYPES, STAMP_NS, "map", poses))
    for row, pose in zip(poses, array_msg.poses, strict=True):
        read_position, read_quat = conv.pose_from_msg(pose)
        np.testing.assert_allclose(np.concatenate([read_position, read_quat]), row, atol=1e-15)
    assert cdr_round_trip(conv.bool_msg(TYPES, np.bool_(True))).data is True
    assert cdr_round_trip(conv.float64_msg(TYPES, np.float32(0.25))).data == 0.25

    K = np.array([[500.0, 0.0, 18.0], [0.0, 510.0, 12.5], [0.0, 0.0, 1.0]])
    info = cdr_round_trip(conv.camera_info_msg(TYPES, STAMP_NS, "camera", 37, 24, K))
    assert info.distortion_model == "plumb_bob" and info.d.tolist() == [0.0] * 5
    np.testing.assert_array_equal(info.p.reshape(3, 4), np.concatenate([K, np.zeros((3, 1))], axis=1))
    np.testing.assert_array_equal(info.r.reshape(3, 3), np.eye(3))
    np.testing.assert_array_equal(info.k.reshape(3, 3), K)
    assert (info.width, info.height) == (37, 24)  # read back: test_camera_info.py

    with pytest.raises(TypeError, match="carries no pose"):
        conv.pose_from_msg(info)
    with pytest.raises(TypeError, match="carries no pose covariance"):
        conv.covariance_from_msg(ps)


# --------------------------------------------------------------------------------------------------
# runtimes
# --------------------------------------------------------------------------------------------------


def test_rosbags_types() -> None:
    assert conv.RosbagsTypes().get("std_msgs/msg/Bool").__msgtype__ == "std_msgs/msg/Bool"
    with pytest.raises(KeyError, match="not in the rosbags typestore"):
        TYPES.get("nope_msgs/msg/Nothing")
    sequence = TYPES.sequence(np.arange(6, dtype=np.uint8).reshape(2, 3)[:, ::2])
    assert sequence.flags.c_contiguous and sequence.tolist() == [0, 2, 3, 5]


def test_rclpy_types_resolve_modules_and_use_array_sequences(monkeypatch: pytest.MonkeyPatch) -> None:
    """rclpy is not installable here: a stand-in module checks the "pkg/msg/Name" resolution."""
    module = types_module.ModuleType("fake_msgs.msg")
    module.Bool = type("Bool", (), {})
    monkeypatch.setitem(sys.modules, "fake_msgs.msg", module)
    types = conv.RclpyTypes()
    assert types.get("fake_msgs/msg/Bool") is module.Bool
    monkeypatch.delitem(sys.modules, "fake_msgs.msg")
    assert types.get("fake_msgs/msg/Bool") is module.Bool  # cached: imported once
    with pytest.raises(ModuleNotFoundError):
        types.get("fake_msgs/msg/Float64")
    with pytest.raises(ValueError):
        types.get("Bool")
    as_bytes = types.sequence(np.arange(5, dtype=np.uint8))
    as_doubles = types.sequence(np.zeros(5))
    assert (as_bytes.typecode, list(as_bytes)) == ("B", [0, 1, 2, 3, 4])
    assert (as_doubles.typecode, list(as_doubles)) == ("d", [0.0] * 5)
    # what rclpy hands a subscriber (array.array('B') data) decodes like any other container
    bgr = random_pixels("bgr8", seed=10)
    msg = make_image("bgr8", bgr)
    np.testing.assert_array_equal(
        conv.image_to_rgb(dataclasses.replace(msg, data=types.sequence(msg.data))), bgr[..., ::-1]
    )


# --------------------------------------------------------------------------------------------------
# point clouds
# --------------------------------------------------------------------------------------------------


def scene_points(n: int = 7, seed: int = 11) -> np.ndarray:
    """(n, 3) float64 points in metres with distinct values, not exactly float32."""
    return np.random.default_rng(seed).normal(scale=3.0, size=(n, 3))


def test_point_cloud2_layout_and_bytes() -> None:
    points = scene_points()
    msg = conv.point_cloud2(TYPES, STAMP_NS, "map", points)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)]
    assert TYPESTORE.types["sensor_msgs/msg/PointField"].FLOAT32 == conv.POINT_FIELD_FLOAT32 == 7
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 7, 12, 84)
    assert msg.is_bigendian is False and msg.is_dense is True
    assert msg.header.frame_id == "map" and conv.stamp_to_ns(msg.header.stamp) == STAMP_NS
    assert msg.data.dtype == np.uint8 and msg.data.tobytes() == points.astype("<f4").tobytes()
    read = conv.points_from_point_cloud2(msg)
    assert read.dtype == np.float32 and read.shape == (7, 3)
    np.testing.assert_array_equal(read, points.astype(np.float32))


def test_point_cloud2_cdr_round_trip() -> None:
    points = scene_points(50, seed=12)
    msg = conv.point_cloud2(TYPES, STAMP_NS, "map", points)
    back = cdr_round_trip(msg)
    assert back.fields == msg.fields and back.header == msg.header
    assert (back.height, back.width, back.point_step, back.row_step) == (1, 50, 12, 600)
    assert back.is_bigendian is False and back.is_dense is True
    np.testing.assert_array_equal(back.data, msg.data)
    np.testing.assert_array_equal(conv.points_from_point_cloud2(back), points.astype(np.float32))


def test_point_cloud2_drops_non_finite_points() -> None:
    points = scene_points(6, seed=13)
    points[1, 0] = np.nan
    points[3, 2] = -np.inf
    points[4, 1] = 1e39  # finite as float64, inf as float32
    msg = conv.point_cloud2(TYPES, STAMP_NS, "map", points)
    kept = points[[0, 2, 5]].astype(np.float32)
    assert (msg.width, msg.row_step, msg.is_dense) == (3, 36, True)
    np.testing.assert_array_equal(conv.points_from_point_cloud2(cdr_round_trip(msg)), kept)
    for empty in (np.zeros((0, 3)), np.full((2, 3), np.nan)):
        cloud = cdr_round_trip(conv.point_cloud2(TYPES, STAMP_NS, "map", empty))
        assert (cloud.width, cloud.row_step, cloud.data.size, len(cloud.fields)) == (0, 0, 0, 3)
        assert conv.points_from_point_cloud2(cloud).shape == (0, 3)
    integers = conv.point_cloud2(TYPES, 0, "map", np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(conv.points_from_point_cloud2(integers), [[0, 1, 2], [3, 4, 5]])


@pytest.mark.parametrize(
    ("points", "match"),
    [
        (np.zeros(3), r"shape \(N, 3\), got \(3,\)"),
        (np.zeros((4, 2)), r"shape \(N, 3\), got \(4, 2\)"),
        (np.zeros((4, 3, 1)), r"shape \(N, 3\), got \(4, 3, 1\)"),
        (np.zeros((4, 4)), r"shape \(N, 3\), got \(4, 4\)"),
        (np.full((2, 3), "a"), "real numbers"),
        (np.zeros((2, 3), np.complex64), "real numbers"),
    ],
)
def test_point_cloud2_rejects_bad_points(points: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        conv.point_cloud2(TYPES, STAMP_NS, "map", points)


def make_cloud(fields: list[tuple[str, int, int]], records: bytes, *, height: int, width: int,
               point_step: int, row_step: int, bigendian: bool = False) -> object:
    """A rosbags PointCloud2 with the given (name, offset, datatype) fields and raw data."""
    point_field = TYPESTORE.types["sensor_msgs/msg/PointField"]
    return TYPESTORE.types["sensor_msgs/msg/PointCloud2"](
        header=conv._header(TYPES, STAMP_NS, "lidar"), height=height, width=width,
        fields=[point_field(name=name, offset=offset, datatype=datatype, count=1)
                for name, offset, datatype in fields],
        is_bigendian=bigendian, point_step=point_step, row_step=row_step,
        data=np.frombuffer(records, np.uint8), is_dense=False)


@pytest.mark.parametrize("bigendian", [False, True])
def test_points_from_point_cloud2_honours_offsets_steps_and_byte_order(bigendian: bool) -> None:
    """An organised 2 x 3 cloud as a lidar driver writes it: intensity first, z before y, a padded
    point (point_step 24) and padded rows (row_step 80 > 3 x 24)."""
    points = scene_points(6, seed=14).astype(np.float32)
    points[2, 1] = np.nan  # read back as stored
    order = ">" if bigendian else "<"
    record = np.dtype({"names": ["intensity", "z", "x", "y"],
                       "formats": [order + "f8", order + "f4", order + "f4", order + "f4"],
                       "offsets": [0, 8, 12, 16], "itemsize": 24})
    rows = np.zeros((2, 80), np.uint8)
    for row in range(2):
        cells = np.zeros(3, record)
        cells["intensity"] = 100.0 + np.arange(3)
        for axis, name in enumerate("xyz"):
            cells[name] = points[3 * row: 3 * row + 3, axis]
        rows[row, :72] = np.frombuffer(cells.tobytes(), np.uint8)
        rows[row, 72:] = 0xA5
    fields = [("intensity", 0, 8), ("z", 8, 7), ("x", 12, 7), ("y", 16, 7)]
    msg = make_cloud(fields, rows.tobytes(), height=2, width=3, point_step=24, row_step=80,
                     bigendian=bigendian)
    read = conv.points_from_point_cloud2(msg)
    assert read.dtype == np.float32 and read.dtype.isnative
    np.testing.assert_array_equal(read, points)  # NaN equals NaN here
    np.testing.assert_array_equal(conv.points_from_point_cloud2(cdr_round_trip(msg)), points)
    as_bytes = dataclasses.replace(msg, data=rows.tobytes())  # what the DDS runtime hands over
    np.testing.assert_array_equal(conv.points_from_point_cloud2(as_bytes), points)


@pytest.mark.parametrize(
    ("fields", "point_step", "row_step", "size", "match"),
    [
        ([("x", 0, 7), ("y", 4, 7)], 12, 12, 12, "no field z; its fields are 'x', 'y'"),
        ([], 12, 12, 12, "no field x, y, z; its fields are none"),
        ([("x", 0, 8), ("y", 8, 7), ("z", 12, 7)], 16, 16, 16,
         r"'x' has datatype 8 \(FLOAT64\); expected FLOAT32"),
        ([("x", 0, 7), ("y", 4, 7), ("z", 8, 2)], 12, 12, 12, r"'z' has datatype 2 \(UINT8\)"),
        ([("x", 0, 7), ("y", 4, 7), ("z", 10, 7)], 12, 12, 12,
         "'z' at offset 10 does not fit in point_step 12"),
        ([("x", 0, 7), ("y", 4, 7), ("z", 8, 7)], 12, 11, 12, "row_step 11 is smaller than"),
        ([("x", 0, 7), ("y", 4, 7), ("z", 8, 7)], 12, 12, 11, "data has 11 bytes, fewer than"),
    ],
)
def test_points_from_point_cloud2_errors(fields: list[tuple[str, int, int]], point_step: int, row_step: int,
                                         size: int, match: str) -> None:
    msg = make_cloud(fields, bytes(size), height=1, width=1, point_step=point_step, row_step=row_step)
    with pytest.raises(ValueError, match=match):
        conv.points_from_point_cloud2(msg)


def _sensor_msgs_py_stand_in(calls: list[tuple[object, np.ndarray]]) -> types_module.ModuleType:
    """`sensor_msgs_py.point_cloud2` as ROS 2 Humble's common_interfaces has it (create_cloud with an
    unstructured numpy array: structured dtype from the fields, data as array.array('B') set through
    the property, is_dense false, native byte order), on the rosbags classes: rclpy is not
    installable here."""
    from numpy.lib.recfunctions import unstructured_to_structured

    cloud_class = TYPESTORE.types["sensor_msgs/msg/PointCloud2"]
    field_class = TYPESTORE.types["sensor_msgs/msg/PointField"]

    def create_cloud(header: object, fields: list, points: np.ndarray) -> object:
        dtype = np.dtype({"names": [f.name for f in fields], "formats": [np.float32] * len(fields),
                          "offsets": [f.offset for f in fields]})
        points = unstructured_to_structured(points, dtype=dtype)
        data = array.array("B")
        data.frombytes(memoryview(points).cast("B"))
        cloud = cloud_class(header=header, height=1, width=points.shape[0], is_dense=False,
                            is_bigendian=sys.byteorder != "little", fields=fields,
                            point_step=points.dtype.itemsize,
                            row_step=points.dtype.itemsize * points.shape[0],
                            data=np.zeros(0, np.uint8))
        cloud.data = data
        return cloud

    def create_cloud_xyz32(header: object, points: np.ndarray) -> object:
        calls.append((header, points))
        fields = [field_class(name=name, offset=offset, datatype=field_class.FLOAT32, count=1)
                  for name, offset in (("x", 0), ("y", 4), ("z", 8))]
        return create_cloud(header, fields, points)

    module = types_module.ModuleType("sensor_msgs_py.point_cloud2")
    module.create_cloud_xyz32 = create_cloud_xyz32
    return module


def test_rclpy_types_build_the_cloud_with_sensor_msgs_py(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rclpy path: `RclpyTypes.xyz32_cloud` hands the checked points to sensor_msgs_py's
    create_cloud_xyz32 and marks the cloud dense; the message equals the generic builder's."""
    calls: list[tuple[object, np.ndarray]] = []
    point_cloud2_module = _sensor_msgs_py_stand_in(calls)
    package = types_module.ModuleType("sensor_msgs_py")
    package.point_cloud2 = point_cloud2_module
    monkeypatch.setitem(sys.modules, "sensor_msgs_py", package)
    monkeypatch.setitem(sys.modules, "sensor_msgs_py.point_cloud2", point_cloud2_module)
    for module_name, class_names in (("builtin_interfaces.msg", ["Time"]), ("std_msgs.msg", ["Header"])):
        module = types_module.ModuleType(module_name)
        for class_name in class_names:
            setattr(module, class_name, TYPESTORE.types[module_name.replace(".", "/") + "/" + class_name])
        monkeypatch.setitem(sys.modules, module_name, module)

    points = scene_points(9, seed=15)
    points[4] = np.nan
    rclpy_cloud = conv.point_cloud2(conv.RclpyTypes(), STAMP_NS, "map", points)
    generic = conv.point_cloud2(TYPES, STAMP_NS, "map", points)
    ((header, passed),) = calls
    assert conv.stamp_to_ns(header.stamp) == STAMP_NS and header.frame_id == "map"
    assert passed.shape == (8, 3) and passed.dtype == np.float32 and np.isfinite(passed).all()
    assert isinstance(rclpy_cloud.data, array.array) and rclpy_cloud.data.typecode == "B"
    assert rclpy_cloud.is_dense is True
    for name in ("header", "height", "width", "fields", "is_bigendian", "point_step", "row_step", "is_dense"):
        assert getattr(rclpy_cloud, name) == getattr(generic, name), name
    assert rclpy_cloud.data.tobytes() == generic.data.tobytes()
    np.testing.assert_array_equal(conv.points_from_point_cloud2(rclpy_cloud), np.delete(points, 4, 0)
                                  .astype(np.float32))
