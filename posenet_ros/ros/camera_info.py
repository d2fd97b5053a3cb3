"""sensor_msgs/CameraInfo -> the `Intrinsics` of the images it describes, and the topic it comes on.

`camera_from_camera_info` reads a CameraInfo as image_geometry's PinholeCameraModel does: K (3x3,
pixels) and D describe the raw (distorted) image, calibrated at `width` x `height`; a region of
interest (`roi`, in unbinned full-resolution pixels, all zeros = the whole image) crops that image,
and binning (`binning_x`, `binning_y`; 0 and 1 = none) then averages blocks of b x b pixels into
one. R and P (rectification and projection, for stereo pairs) are not used. Distortion models:

- `plumb_bob`: OpenCV's k1 k2 p1 p2 k3 (4 or 5 coefficients);
- `rational_polynomial`: k1 k2 p1 p2 k3 k4 k5 k6 (8; a longer D only when the coefficients beyond
  the eighth, OpenCV's thin-prism and tilt terms, are zero);
- no distortion: an empty `distortion_model` with an empty or all-zero D.

Anything else is refused with `CameraInfoError` (a ValueError) naming the problem: K not a finite
pinhole matrix (zero, NaN, negative focal length, a skew term), a D of the wrong length or not finite,
an unknown model or `equidistant` (the fisheye model: rectify such images with image_proc first), a
size of zero, a ROI outside the image or binning it cannot divide.

`camera_info_topic` is image_transport's rule for the CameraInfo topic of an image topic: the
`camera_info` topic in the image topic's namespace (`/camera/image_raw` and its transport topic
`/camera/image_raw/compressed` -> `/camera/camera_info`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from posenet_ros.core.camera import Intrinsics

DISTORTION_LENGTHS = {"plumb_bob": (4, 5), "rational_polynomial": (8,)}
"""The distortion models read, and the lengths of D each may have."""


class CameraInfoError(ValueError):
    """A CameraInfo message that does not describe a camera this package can use."""


def camera_info_topic(image_topic: str) -> str:
    """The CameraInfo topic beside `image_topic` (module docstring): its namespace + `camera_info`."""
    base = image_topic.removesuffix("/compressed")
    namespace, separator, _ = base.rpartition("/")
    return f"{namespace}{separator}camera_info"


def camera_from_camera_info(msg: Any) -> Intrinsics:
    """The camera of the images a sensor_msgs/CameraInfo describes (module docstring): K in pixels
    and OpenCV distortion, after the ROI and binning. Raises CameraInfoError for a message this
    package cannot use."""
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise CameraInfoError(f"CameraInfo size {width}x{height} px is not a camera's")
    K = np.asarray(msg.k, dtype=np.float64)
    if K.size != 9 or not np.all(np.isfinite(K)):
        raise CameraInfoError(f"CameraInfo.k must hold 9 finite values, got {K.tolist()}")
    K = K.reshape(3, 3)
    if not (K[0, 0] > 0 and K[1, 1] > 0) or K[0, 1] != 0 or K[1, 0] != 0 or K[2].tolist() != [0, 0, 1]:
        raise CameraInfoError(f"CameraInfo.k is not a pinhole matrix [fx 0 cx; 0 fy cy; 0 0 1] with "
                              f"fx, fy > 0: {K.reshape(-1).tolist()}")
    camera = Intrinsics(width, height, K[0, 0], K[1, 1], K[0, 2], K[1, 2], _distortion(msg))
    return _binned(_region_of_interest(camera, msg.roi), int(msg.binning_x), int(msg.binning_y))


def _distortion(msg: Any) -> tuple[float, ...]:
    """D as OpenCV coefficients; () for a camera without distortion."""
    model = str(msg.distortion_model)
    D = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(D)):
        raise CameraInfoError(f"CameraInfo.d holds values that are not finite: {D.tolist()}")
    if not np.any(D):
        return ()
    if model == "equidistant":
        raise CameraInfoError("the equidistant (fisheye) distortion model is not supported: rectify "
                              "the images with image_proc and give the node image_rect")
    lengths = DISTORTION_LENGTHS.get(model)
    if lengths is None:
        raise CameraInfoError(f"unknown distortion model {model!r}; supported: "
                              f"{', '.join(DISTORTION_LENGTHS)}")
    if model == "rational_polynomial" and len(D) > 8 and not np.any(D[8:]):
        D = D[:8]
    if len(D) not in lengths:
        raise CameraInfoError(f"a {model} D has {' or '.join(map(str, lengths))} coefficients, got {len(D)}")
    return tuple(D.tolist())


def _region_of_interest(camera: Intrinsics, roi: Any) -> Intrinsics:
    """`camera` cropped to the region of interest (all zeros, or the whole image: unchanged)."""
    x0, y0, width, height = int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)
    if (width, height) == (0, 0) and (x0, y0) == (0, 0):
        return camera
    if min(width, height) <= 0 or min(x0, y0) < 0 or x0 + width > camera.width or y0 + height > camera.height:
        raise CameraInfoError(f"CameraInfo.roi ({width}x{height} px at ({x0}, {y0})) is not inside the "
                              f"{camera.width}x{camera.height} px image")
    return camera.cropped(x0, y0, width, height)


def _binned(camera: Intrinsics, binning_x: int, binning_y: int) -> Intrinsics:
    """`camera` after averaging blocks of binning_x x binning_y pixels (pixel centres at integers: a
    block's centre (b - 1) / 2 becomes 0)."""
    bx, by = max(binning_x, 1), max(binning_y, 1)
    if (bx, by) == (1, 1):
        return camera
    width, height = camera.width // bx, camera.height // by
    if width == 0 or height == 0:
        raise CameraInfoError(f"binning {bx}x{by} leaves nothing of the {camera.width}x{camera.height} px "
                              "image")
    return Intrinsics(width, height, camera.fx / bx, camera.fy / by, (camera.cx + 0.5) / bx - 0.5,
                      (camera.cy + 0.5) / by - 0.5, camera.distortion)


def describe(camera: Intrinsics) -> str:
    """A short text for logs: size, focal lengths, principal point and distortion."""
    distortion = ", D " + " ".join(f"{value:.4g}" for value in camera.distortion) if camera.distorted else ""
    return (f"{camera.width}x{camera.height} px, f {camera.fx:.1f}/{camera.fy:.1f} px, "
            f"c ({camera.cx:.1f}, {camera.cy:.1f}){distortion}")

