"""Lens undistortion: an image of a distorted camera resampled as its pinhole camera would see it.

A camera `Intrinsics` with OpenCV distortion (k1 k2 p1 p2 [k3 [k4 k5 k6]]) becomes `camera.pinhole()`:
the same K (width, height, fx, fy, cx, cy) without distortion. Pixel (u, v) of the undistorted image
shows what the distorted image shows at the distorted projection of the ray K^-1 (u, v, 1); rays that
fall outside the distorted image become 0 (black colour, invalid depth). Depth (the z coordinate in
the camera frame, metres) is unchanged by undistortion, so depth images are resampled with nearest
neighbour (no blending across depth edges or with invalid zeros) and colour bilinearly.

The maps (cv2.initUndistortRectifyMap) are computed once per camera and cached.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from posenet_ros.core.camera import Intrinsics


@lru_cache(maxsize=16)
def undistortion_maps(camera: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """float32 (height, width) maps x and y for cv2.remap: the distorted image's pixel that each pixel
    of the undistorted image (camera.pinhole()) samples. Cached per camera (the arrays are read-only)."""
    K = camera.matrix()
    map_x, map_y = cv2.initUndistortRectifyMap(K, np.asarray(camera.distortion, dtype=np.float64), None, K,
                                               (camera.width, camera.height), cv2.CV_32FC1)
    map_x.setflags(write=False)
    map_y.setflags(write=False)
    return map_x, map_y


def _remap(image: np.ndarray, camera: Intrinsics, interpolation: int) -> np.ndarray:
    if image.shape[:2] != (camera.height, camera.width):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} px but the camera is "
                         f"{camera.width}x{camera.height}")
    if not camera.distorted:
        return image
    map_x, map_y = undistortion_maps(camera)
    return cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def undistort_rgb(rgb_HW3: np.ndarray, camera: Intrinsics) -> np.ndarray:
    """uint8 RGB (H, W, 3) of the distorted `camera` -> (H, W, 3) of `camera.pinhole()`, bilinear.
    Returned unchanged for a camera without distortion; ValueError if the sizes differ."""
    return _remap(rgb_HW3, camera, cv2.INTER_LINEAR)


def undistort_depth(depth_HW: np.ndarray, camera: Intrinsics) -> np.ndarray:
    """float32 depth (H, W), metres, 0 = invalid, of the distorted `camera` -> (H, W) of
    `camera.pinhole()`, nearest neighbour. Returned unchanged for a camera without distortion."""
    return _remap(depth_HW, camera, cv2.INTER_NEAREST)
