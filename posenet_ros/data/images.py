"""Reading a frame's images as users have them: colour files of any size, integer depth in the
dataset's unit, intrinsics for another resolution of the same camera, lens distortion.

`record_rgb` and `record_depth` are what the torch dataset reads for a `FrameRecord`:

- colour: uint8 RGB (H, W, 3) of the file as it is (PNG, JPEG, ...), or of a rosbag2 message;
- intrinsics: the record's `Intrinsics`, when given for another image size of the same aspect ratio
  (camera-intrinsics.txt for 640x480 while the files are 320x240), are scaled to the image's size
  (`Intrinsics.resized`: pixel centre x -> (x + 0.5) * s - 0.5); another aspect ratio is a
  DatasetError naming the image file;
- distortion: an image of a distorted camera (`Intrinsics.distorted`) is undistorted to the same K
  without distortion (`Intrinsics.pinhole()`; core/undistortion.py: bilinear for colour, nearest for
  depth, maps computed once per camera), so everything downstream sees pinhole images and the
  training camera a checkpoint records is the pinhole one;
- depth: an integer image (uint16) times `record.depth_unit_m` metres per unit (7-Scenes 0.001, TUM
  1/5000); 0 and 65535 mean "no measurement" and become 0. Depth is the z coordinate in the camera
  frame, so it must have the colour image's size (it is registered to it);
- unregistered depth (`record.depth_intrinsics`, a depth sensor with its own intrinsics, such as the
  Kinect v1 of 7-Scenes): each depth pixel is back-projected with the depth camera's K and projected
  with the colour camera's (`register_depth`). The two sensors are taken to share their optical
  centre and axes: the baseline between them (2.5 cm on a Kinect v1) is neglected, a parallax of
  f * b / z pixels (about 3 px at 262 px focal length and 2 m).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import PIL.Image

from posenet_ros.core.camera import Intrinsics
from posenet_ros.core.undistortion import undistort_depth, undistort_rgb
from posenet_ros.data.bag_dataset import read_bag_depth, read_bag_rgb
from posenet_ros.data.frames import BagMessage, DatasetError, FrameRecord

DEPTH_INVALID_VALUES = (0, 65535)
"""Raw uint16 depth values that mean "no measurement"."""

ASPECT_TOLERANCE = 0.01
"""Largest relative difference of width / height between intrinsics and an image they are scaled to
(a downscaled image rounds its size: 1000x750 / 3 -> 333x250)."""


def read_rgb(path: Path) -> np.ndarray:
    """Read a colour image as uint8 RGB (H, W, 3); DatasetError naming the file if it cannot be read."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"{path}: cannot read image (missing, truncated or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_depth(path: Path, unit_m: float = 0.001) -> np.ndarray:
    """Read a uint16 depth PNG as float32 metres (H, W): raw value x `unit_m` metres per unit (0.001:
    millimetres; TUM 1/5000); 0 and 65535 become 0 (invalid). DatasetError naming the file otherwise."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DatasetError(f"{path}: cannot read depth image (missing, truncated or not an image)")
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise DatasetError(f"{path}: depth must be a single-channel uint16 PNG, got {raw.dtype} {raw.shape}")
    valid = (raw != DEPTH_INVALID_VALUES[0]) & (raw != DEPTH_INVALID_VALUES[1])
    return np.where(valid, raw * float(unit_m), 0.0).astype(np.float32)  # float64 product, then rounded


def read_depth_mm(path: Path) -> np.ndarray:
    """Read a uint16 millimetre depth PNG as float32 metres (H, W); 0 and 65535 become 0 (invalid)."""
    return read_depth(path, 0.001)


def read_frame_rgb(source: Path | BagMessage) -> np.ndarray:
    """uint8 RGB (H, W, 3) of a record's `image_path`: an image file (`read_rgb`) or a message in a
    rosbag2 (`bag_dataset.read_bag_rgb`)."""
    if isinstance(source, BagMessage):
        return read_bag_rgb(source)
    return read_rgb(source)


def read_frame_depth(source: Path | BagMessage, unit_m: float = 0.001) -> np.ndarray:
    """float32 depth in metres (H, W), 0 = invalid, of a record's `depth_path`: a uint16 PNG of
    `unit_m` metres per unit (`read_depth`) or a depth Image in a rosbag2 (`bag_dataset.read_bag_depth`,
    whose message says its unit)."""
    if isinstance(source, BagMessage):
        return read_bag_depth(source)
    return read_depth(source, unit_m)


def scaled_intrinsics(intrinsics: Intrinsics, width: int, height: int,
                      image: Path | BagMessage) -> Intrinsics:
    """`intrinsics` scaled to an image of `width` x `height` px (unchanged when the sizes agree);
    distortion is kept (it acts on normalised coordinates). DatasetError naming `image` when the
    aspect ratios differ by more than `ASPECT_TOLERANCE`."""
    if (intrinsics.width, intrinsics.height) == (width, height):
        return intrinsics
    aspect_image, aspect_camera = width / height, intrinsics.width / intrinsics.height
    if abs(aspect_image / aspect_camera - 1.0) > ASPECT_TOLERANCE:
        raise DatasetError(f"{image}: image is {width}x{height} px (width x height) but its intrinsics are "
                           f"for {intrinsics.width}x{intrinsics.height}, another aspect ratio; give the "
                           "intrinsics of this image size")
    return intrinsics.resized(width, height)


def register_depth(depth_HW: np.ndarray, depth_camera: Intrinsics, colour_camera: Intrinsics) -> np.ndarray:
    """Depth (metres, 0 = invalid) of the depth sensor `depth_camera` (of the depth image's size) as the
    pinhole `colour_camera` would see it: float32 (colour height, colour width). Both cameras share
    their centre and axes, so depth (the z coordinate) is unchanged and only moves; where several depth
    pixels land on one colour pixel the nearest wins, colour pixels no depth pixel lands on are 0."""
    rows, cols = np.nonzero(depth_HW > 0)
    z = depth_HW[rows, cols]
    sx, sy = colour_camera.fx / depth_camera.fx, colour_camera.fy / depth_camera.fy
    u = np.rint((cols - depth_camera.cx) * sx + colour_camera.cx).astype(int)
    v = np.rint((rows - depth_camera.cy) * sy + colour_camera.cy).astype(int)
    inside = (u >= 0) & (u < colour_camera.width) & (v >= 0) & (v < colour_camera.height)
    registered = np.full((colour_camera.height, colour_camera.width), np.inf, dtype=np.float32)
    np.minimum.at(registered, (v[inside], u[inside]), z[inside])
    registered[np.isinf(registered)] = 0.0
    return registered


def record_rgb(record: FrameRecord) -> tuple[np.ndarray, Intrinsics | None]:
    """The record's colour image as uint8 RGB (H, W, 3) and the pinhole intrinsics of that image
    (None when the record has none): its intrinsics scaled to the image's size, the image undistorted
    to `pinhole()` when the camera has distortion (module docstring)."""
    rgb = read_frame_rgb(record.image_path)
    if record.intrinsics is None:
        return rgb, None
    height, width = rgb.shape[:2]
    camera = scaled_intrinsics(record.intrinsics, width, height, record.image_path)
    if camera.distorted:
        rgb = undistort_rgb(rgb, camera)
    return rgb, camera.pinhole()


def record_camera(record: FrameRecord) -> Intrinsics | None:
    """The pinhole intrinsics of the record's colour image as `record_rgb` returns them, without decoding
    the pixels (the size comes from the file's header; a rosbag2 frame's intrinsics come from its
    CameraInfo and are taken as they are). None for a record without intrinsics."""
    if record.intrinsics is None:
        return None
    if isinstance(record.image_path, BagMessage):
        return record.intrinsics.pinhole()
    try:
        with PIL.Image.open(record.image_path) as image:
            width, height = image.size
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{record.image_path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    return scaled_intrinsics(record.intrinsics, width, height, record.image_path).pinhole()


def record_depth(record: FrameRecord, camera: Intrinsics | None) -> np.ndarray:
    """The record's depth as float32 metres (H, W), 0 = invalid, in `record.depth_unit_m` per integer
    unit, undistorted as its colour image is, or registered to it (`register_depth`) when the record
    has `depth_intrinsics`. `camera`: the colour image's intrinsics from `record_rgb` (or None; needed
    for unregistered depth); registered depth must have its size. DatasetError naming the depth file
    for another size, and naming the colour image for a record without depth."""
    if record.depth_path is None:
        raise DatasetError(f"{record.image_path}: the frame has no depth image")
    depth = read_frame_depth(record.depth_path, record.depth_unit_m)
    height, width = depth.shape
    if record.depth_intrinsics is not None:
        if camera is None:
            raise DatasetError(f"{record.depth_path}: unregistered depth needs the colour camera's "
                               "intrinsics")
        depth_camera = scaled_intrinsics(record.depth_intrinsics, width, height, record.depth_path)
        return register_depth(depth, depth_camera, camera)
    if camera is not None and (camera.width, camera.height) != (width, height):
        raise DatasetError(f"{record.depth_path}: depth is {width}x{height} px, its colour image "
                           f"{camera.width}x{camera.height}")
    if record.intrinsics is not None and record.intrinsics.distorted:
        depth = undistort_depth(depth, scaled_intrinsics(record.intrinsics, width, height, record.depth_path))
    return depth
