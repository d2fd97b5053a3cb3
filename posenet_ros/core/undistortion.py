"""Lens undistortion: an image of a distorted camera resampled as a pinhole camera would see it.

A camera `Intrinsics` with OpenCV distortion (k1 k2 p1 p2 [k3 [k4 k5 k6]]) becomes `camera.pinhole()`:
the same K (width, height, fx, fy, cx, cy) without distortion (`undistort_rgb`, `undistort_depth`); or
any other pinhole camera `target` with the same optical centre and orientation, at its own size
(`resample_rgb`, `resample_depth`: a query camera's images as the camera a model was trained with
would see them). Pixel (u, v) of the result shows what the source image shows at the distorted
projection of the ray K_target^-1 (u, v, 1); rays that fall outside the source image become 0 (black
colour, invalid depth). Depth (the z coordinate in the camera frame, metres) is unchanged by this
resampling (the rays keep their camera frame), so depth images are resampled with nearest neighbour
(no blending across depth edges or with invalid zeros) and colour bilinearly.

The maps (cv2.initUndistortRectifyMap) are computed once per (source, target) pair and cached.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from posenet_ros.core.camera import Intrinsics


@lru_cache(maxsize=16)
def resampling_maps(source: Intrinsics, target: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """float32 (target.height, target.width) maps x and y for cv2.remap: the pixel of the `source`
    image (K and distortion) that each pixel of the pinhole `target` image samples (target's
    distortion is not used). Cached per (source, target) pair (the arrays are read-only)."""
    map_x, map_y = cv2.initUndistortRectifyMap(
        source.matrix(), np.asarray(source.distortion, dtype=np.float64), None, target.matrix(),
        (target.width, target.height), cv2.CV_32FC1)
    map_x.setflags(write=False)
    map_y.setflags(write=False)
    return map_x, map_y


def undistortion_maps(camera: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """`resampling_maps` from `camera` to `camera.pinhole()` (cached per camera)."""
    return resampling_maps(camera, camera.pinhole())


def _remap(image: np.ndarray, source: Intrinsics, target: Intrinsics, interpolation: int) -> np.ndarray:
    if image.shape[:2] != (source.height, source.width):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} px but the camera is "
                         f"{source.width}x{source.height}")
    if not source.distorted and source.pinhole() == target:
        return image
    map_x, map_y = resampling_maps(source, target)
    return cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def undistort_rgb(rgb_HW3: np.ndarray, camera: Intrinsics) -> np.ndarray:
    """uint8 RGB (H, W, 3) of the distorted `camera` -> (H, W, 3) of `camera.pinhole()`, bilinear.
    Returned unchanged for a camera without distortion; ValueError if the sizes differ."""
    return resample_rgb(rgb_HW3, camera, camera)


def undistort_depth(depth_HW: np.ndarray, camera: Intrinsics) -> np.ndarray:
    """float32 depth (H, W), metres, 0 = invalid, of the distorted `camera` -> (H, W) of
    `camera.pinhole()`, nearest neighbour. Returned unchanged for a camera without distortion."""
    return resample_depth(depth_HW, camera, camera)


def resample_rgb(rgb_HW3: np.ndarray, source: Intrinsics, target: Intrinsics) -> np.ndarray:
    """uint8 RGB (H, W, 3) of the `source` camera (K and distortion) -> (target.height,
    target.width, 3) as the pinhole camera `target` sees it, bilinear; unchanged when `target` is
    `source` without distortion. ValueError if the image is not source's size."""
    return _remap(rgb_HW3, source, target.pinhole(), cv2.INTER_LINEAR)


def resample_depth(depth_HW: np.ndarray, source: Intrinsics, target: Intrinsics) -> np.ndarray:
    """float32 depth (H, W), metres, 0 = invalid, of the `source` camera -> (target.height,
    target.width) as the pinhole camera `target` sees it, nearest neighbour."""
    return _remap(depth_HW, source, target.pinhole(), cv2.INTER_NEAREST)
