"""How a camera frame becomes network input: pinhole intrinsics, the resize and crop of a frame
(`FrameTransform`, `CropBox`) and the test-time transform of a checkpoint.

Geometry (pixel centres at integer coordinates): a resize maps pixel centre x to (x + 0.5) * s - 0.5
(cv2.resize and `Intrinsics.resized` agree on this), a crop subtracts its top-left corner; depth is
resized with exact nearest neighbour so invalid zeros never blend with valid depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    """Intrinsics in pixels for an image of `width` x `height` (pixel centres at integers): the pinhole
    K and, optionally, OpenCV lens distortion coefficients `distortion` = (k1, k2, p1, p2[, k3[, k4,
    k5, k6]]) of the normalised image coordinates (unchanged by resizing or cropping). Empty: a pinhole
    camera (or an image already undistorted)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "distortion", tuple(float(value) for value in self.distortion))
        if len(self.distortion) not in (0, 4, 5, 8):
            raise ValueError(f"distortion must hold 0, 4, 5 or 8 OpenCV coefficients (k1 k2 p1 p2 [k3 "
                             f"[k4 k5 k6]]), got {len(self.distortion)}")

    @property
    def distorted(self) -> bool:
        """Whether any distortion coefficient is non-zero."""
        return any(value != 0.0 for value in self.distortion)

    def pinhole(self) -> Intrinsics:
        """The same K without distortion: the camera of an image undistorted to this K."""
        return Intrinsics(self.width, self.height, self.fx, self.fy, self.cx, self.cy)

    def matrix(self) -> np.ndarray:
        """The 3x3 calibration matrix K (float64)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def resized(self, width: int, height: int) -> Intrinsics:
        """Intrinsics of the same camera after resizing the whole image to `width` x `height`."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(
            width=width,
            height=height,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            distortion=self.distortion,
        )

    def cropped(self, x0: int, y0: int, width: int, height: int) -> Intrinsics:
        """Intrinsics after cropping the window with top-left pixel (x0, y0) and the given size."""
        return Intrinsics(width, height, self.fx, self.fy, self.cx - x0, self.cy - y0, self.distortion)

    def to_dict(self) -> dict:
        values = {"width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy,
                  "cx": self.cx, "cy": self.cy}
        if self.distortion:
            values["distortion"] = list(self.distortion)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> Intrinsics:
        return cls(int(values["width"]), int(values["height"]), float(values["fx"]),
                   float(values["fy"]), float(values["cx"]), float(values["cy"]),
                   tuple(values.get("distortion", ())))


@dataclass
class FrameTransform:
    """How frames are prepared for a network.

    resize: length in pixels of the shorter image side after resizing (aspect kept; PoseNet uses
        256); None keeps the size.
    crop: square side, or (height, width), in pixels after resizing; None = no crop.
    random_crop: True for training (uniform random position); False = centre crop.
    brightness, contrast, saturation: jitter amounts a; each factor is uniform in [max(0, 1-a), 1+a]
        (0 = off). hue: shift uniform in [-hue, hue] turns (<= 0.5), a rotation about the grey axis.
    window: T consecutive frames (in frame-index order) of one sequence per item; 1 = single frames.
    window_stride: step in frames between the members of a window.
    depth_holes: largest share of depth pixels turned into holes (training augmentation for RGB-D
        models: blobs like a sensor's missing returns, a share uniform in [0, depth_holes] per item).
    rotation_deg, zoom: training augmentation of the camera itself (ACE's): the camera rolled about its
        optical axis by an angle uniform in [-rotation_deg, rotation_deg] degrees and its focal lengths
        scaled by a factor log-uniform in [1 / (1 + zoom), 1 + zoom], the image (and depth) warped
        about the principal point to match, K and the pose changed with it (0 = off; needs K).
    """

    resize: int | None = 256
    crop: int | tuple[int, int] | None = None
    random_crop: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    window: int = 1
    window_stride: int = 1
    depth_holes: float = 0.0
    rotation_deg: float = 0.0
    zoom: float = 0.0

    def __post_init__(self) -> None:
        if self.resize is not None and self.resize < 1:
            raise ValueError(f"resize must be >= 1 or None, got {self.resize}")
        if isinstance(self.crop, Sequence):
            self.crop = (int(self.crop[0]), int(self.crop[1]))  # YAML gives lists
        size = self.crop_size()
        if size is not None and min(size) < 1:
            raise ValueError(f"crop must be positive, got {self.crop}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if not 0.0 <= self.depth_holes < 1.0:
            raise ValueError(f"depth_holes must be in [0, 1), got {self.depth_holes}")
        if not (0.0 <= self.rotation_deg <= 180.0 and 0.0 <= self.zoom <= 1.0):
            raise ValueError(f"rotation_deg must be in [0, 180] and zoom in [0, 1], got {self.rotation_deg} "
                             f"and {self.zoom}")
        if self.window < 1 or self.window_stride < 1:
            raise ValueError(f"window and window_stride must be >= 1, got {self.window}, "
                             f"{self.window_stride}")

    def crop_size(self) -> tuple[int, int] | None:
        """(height, width) of the crop, or None."""
        if self.crop is None:
            return None
        if isinstance(self.crop, int):
            return self.crop, self.crop
        return int(self.crop[0]), int(self.crop[1])


def resized_size(width: int, height: int, shorter_side: int | None) -> tuple[int, int]:
    """(width, height) after scaling so the shorter side is `shorter_side` px (rounded); None keeps it."""
    if shorter_side is None:
        return width, height
    scale = shorter_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class CropBox:
    """Where a frame of `width` x `height` px goes: resized to `new_width` x `new_height`, then the
    crop of `crop_width` x `crop_height` at (`x0`, `y0`) is kept."""

    width: int
    height: int
    new_width: int
    new_height: int
    crop_width: int
    crop_height: int
    x0: int
    y0: int

    def _apply(self, image: np.ndarray, interpolation: int) -> np.ndarray:
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} px, expected "
                             f"{self.width}x{self.height}")
        if (self.new_width, self.new_height) != (self.width, self.height):
            image = cv2.resize(image, (self.new_width, self.new_height), interpolation=interpolation)
        return image[self.y0:self.y0 + self.crop_height, self.x0:self.x0 + self.crop_width]

    def apply_rgb(self, rgb_HW3: np.ndarray) -> np.ndarray:
        """uint8 RGB (H, W, 3) -> float32 RGB in [0, 1] (h, w, 3): area resampling when shrinking."""
        interpolation = cv2.INTER_AREA if self.new_width < self.width else cv2.INTER_LINEAR
        return self._apply(rgb_HW3, interpolation).astype(np.float32) / 255.0

    def apply_depth(self, depth_HW: np.ndarray) -> np.ndarray:
        """float32 metres (H, W) -> (h, w): exact nearest neighbour, so invalid zeros never blend."""
        return self._apply(depth_HW, cv2.INTER_NEAREST_EXACT)


def crop_box(width: int, height: int, transform: FrameTransform,
             rng: np.random.Generator | None = None) -> CropBox:
    """The resize and crop `transform` applies to a `width` x `height` frame (random position with
    `transform.random_crop`, drawn from `rng`; centred otherwise)."""
    new_width, new_height = resized_size(width, height, transform.resize)
    crop = transform.crop_size() or (new_height, new_width)
    if crop[0] > new_height or crop[1] > new_width:
        raise ValueError(f"crop (height, width) = ({crop[0]}, {crop[1]}) px is larger than the resized "
                         f"image (height, width) = ({new_height}, {new_width}) px: lower data.crop or raise "
                         "data.resize")
    if transform.random_crop:
        if rng is None:
            raise ValueError("a random crop needs a random generator")
        y0 = int(rng.integers(0, new_height - crop[0] + 1))
        x0 = int(rng.integers(0, new_width - crop[1] + 1))
    else:
        y0, x0 = (new_height - crop[0]) // 2, (new_width - crop[1]) // 2
    return CropBox(width, height, new_width, new_height, crop[1], crop[0], x0, y0)


def input_intrinsics(camera: Intrinsics, box: CropBox) -> np.ndarray:
    """K (3x3, float64, pixels) of the network input that `box` makes from a frame of `camera`: its
    intrinsics scaled to the frame's size (a lower or higher resolution stream of the same camera),
    resized and cropped as the frame is."""
    scaled = camera.resized(box.width, box.height).resized(box.new_width, box.new_height)
    return scaled.cropped(box.x0, box.y0, box.crop_width, box.crop_height).matrix()
