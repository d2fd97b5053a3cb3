"""Frame preprocessing on the inference device: `CropBox`'s resize + crop done in torch.

So that the GPU fast path can upload a frame as it comes (uint8 RGB, from pinned memory with
`non_blocking=True`) and prepare it there, `DevicePreprocessor` reproduces `CropBox.apply_rgb` /
`CropBox.apply_depth` (posenet_ros/data/dataset.py) with the same torch code on CPU and CUDA,
without host synchronisation:

    rgb(images)  uint8 (B, H, W, 3) RGB, H x W = the box's frame size
                 -> float32 (B, 3, crop_h, crop_w), RGB in [0, 1], multiples of 1/255
    depth(depth) float32 (B, H, W), metres (0 / NaN / inf = invalid)
                 -> float32 (B, 1, crop_h, crop_w), metres, values copied unchanged

RGB: a separable linear map per channel, `floor(A_h @ image @ A_w^T + 0.5) / 255`. A_h (crop_h, H)
and A_w (crop_w, W) hold the resampling weights of cv2's INTER_AREA (shrinking: exact pixel-area
weights, `computeResizeAreaTab`, also for non-integer factors) or INTER_LINEAR (otherwise:
half-pixel centres, clamped borders), restricted to the rows / columns the crop keeps; without a
resize they just select the crop. They are built once, at construction, in float64 and stored in
`dtype` (float32). cv2 resizes uint8 images in fixed point and rounds to uint8, so the result is
rounded to whole levels too (ties upwards, as cv2's fixed-point paths do) but is not bit-identical.
Measured against `CropBox.apply_rgb` (opencv-python 5.0.0 with its IPP HAL, torch 2.13, CPU, float32;
6 uniform-noise and 6 smooth frames per case), differences in levels (1/255):

    frame -> resize, crop            max   mean (noise / smooth)   pixels differing
    640x480 -> 224, crop 224          1    4e-5 / 5e-5             0.005 %
    640x480 -> 256, crop 224          1    1e-4 / 1.2e-4           0.01 %
    160x120 -> 48, crop 44x60         0    0                       0
    333x251 -> 100, no crop           1    4e-6 / 4e-6             < 0.001 %
    640x480 -> 240 (2x), no crop      0    0                       0
    640x480 no resize, crop 224       0    0                       0
    64x48 -> 96 (linear), no crop     1    0.094 / 0.109           9-11 %
    64x48 -> 96, crop 80x100          1    0.093 / 0.105           9-10 %

Upscaling agrees less because cv2's SIMD vertical pass for uint8 bilinear truncates (`S >> 4`, then
16-bit multiply-high) and so lands up to one level below the exactly rounded value.
`test/runtime/test_device_preprocess.py` asserts max <= 1/255 and mean < 0.2/255 for these cases, on CPU and
(where available) on CUDA, the latter with full float32 matmuls; not yet measured on a GPU. With
TF32 matmuls enabled (`torch.backends.cuda.matmul.allow_tf32`,
`torch.set_float32_matmul_precision("high")`) the weights lose precision (~5e-4 relative) and more
pixels can be one level off. `rgb` turns autocast off around its matmuls (fp16 / bf16 weights would
be several levels off).

Depth: a gather with precomputed flat source indices, so invalid values never blend and NaN / inf
/ 0 stay as they are; equal to `CropBox.apply_depth` bit for bit. The indices are read from cv2
itself at construction (`CropBox.apply_depth` on row and column index ramps), because
INTER_NEAREST_EXACT is not one formula across builds: the usual formula
`min(floor((dst + 0.5) * src / dst), src - 1)` holds except where `(dst + 0.5) * src / dst` is a
whole number; there the IPP HAL of opencv-python 5.0 (source position accumulated in float64,
`x += src / dst`) rounds either way, and OpenCV's own `resizeNN_bitexact` (16.16 fixed point) rounds
differently again.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from posenet_ros.core.camera import CropBox

__all__ = ["DevicePreprocessor", "area_weights", "linear_weights"]


def area_weights(src: int, dst: int) -> np.ndarray:
    """float64 (dst, src): cv2 INTER_AREA weights for shrinking `src` px to `dst` px (dst <= src), the
    share of each output pixel's footprint [x * s, (x + 1) * s), s = src / dst, that source pixel
    covers (cv2's `computeResizeAreaTab`, including its 1e-3 cut-off for slivers)."""
    if not 1 <= dst <= src:
        raise ValueError(f"area weights shrink: need 1 <= dst <= src, got src {src}, dst {dst}")
    scale = src / dst
    weights = np.zeros((dst, src), dtype=np.float64)
    for dx in range(dst):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        cell = min(scale, src - fsx1)
        sx2 = min(math.floor(fsx2), src - 1)
        sx1 = min(math.ceil(fsx1), sx2)
        if sx1 - fsx1 > 1e-3:
            weights[dx, sx1 - 1] = (sx1 - fsx1) / cell
        weights[dx, sx1:sx2] = 1.0 / cell
        if fsx2 - sx2 > 1e-3:
            weights[dx, sx2] = min(fsx2 - sx2, 1.0, cell) / cell
    return weights


def linear_weights(src: int, dst: int) -> np.ndarray:
    """float64 (dst, src): cv2 INTER_LINEAR weights for resampling `src` px to `dst` px: output pixel
    x samples source position (x + 0.5) * src / dst - 0.5 between its two neighbours, positions
    outside [0, src - 1] taking the border pixel."""
    if src < 1 or dst < 1:
        raise ValueError(f"linear weights need positive sizes, got src {src}, dst {dst}")
    scale = 1.0 / (dst / src)  # as cv2: scale_x = 1 / inv_scale_x
    position = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    left = np.floor(position)
    frac = (position - left).astype(np.float32).astype(np.float64)  # cv2 keeps fx in float
    left = left.astype(np.int64)
    rows = np.arange(dst)
    weights = np.zeros((dst, src), dtype=np.float64)
    np.add.at(weights, (rows, np.clip(left, 0, src - 1)), 1.0 - frac)
    np.add.at(weights, (rows, np.clip(left + 1, 0, src - 1)), frac)
    return weights


def _axis_weights(src: int, dst: int, area: bool) -> np.ndarray:
    if src == dst:
        return np.eye(src, dtype=np.float64)
    return area_weights(src, dst) if area else linear_weights(src, dst)


class DevicePreprocessor:
    """`CropBox.apply_rgb` / `apply_depth` for batches of frames, in torch on `device` (see the
    module docstring for units, shapes and the measured agreement with cv2). `dtype` is that of the
    weights and of `rgb`'s arithmetic; the tolerances are measured for float32 only."""

    def __init__(self, box: CropBox, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self.box = box
        self.dtype = dtype
        resized = (box.new_width, box.new_height) != (box.width, box.height)
        # CropBox.apply_rgb: INTER_AREA when the width shrinks, INTER_LINEAR otherwise. cv2 runs
        # INTER_AREA as area averaging only when neither axis grows, which holds for any box
        # crop_box makes (both axes share one scale); otherwise it would be cv2's bilinear variant.
        area = box.new_width < box.width
        if area and box.new_height > box.height:
            raise ValueError(f"box {box.width}x{box.height} -> {box.new_width}x{box.new_height} shrinks "
                             "one axis and grows the other; cv2's INTER_AREA for that case is not supported")
        rows = slice(box.y0, box.y0 + box.crop_height)
        cols = slice(box.x0, box.x0 + box.crop_width)
        if resized:
            a_h = _axis_weights(box.height, box.new_height, area)[rows]
            a_w = _axis_weights(box.width, box.new_width, area)[cols]
        else:
            a_h = np.eye(box.height, dtype=np.float64)[rows]
            a_w = np.eye(box.width, dtype=np.float64)[cols]
        if a_h.shape[0] != box.crop_height or a_w.shape[0] != box.crop_width:
            raise ValueError(f"crop {box.crop_width}x{box.crop_height} at ({box.x0}, {box.y0}) does not "
                             f"fit the resized image {box.new_width}x{box.new_height}")
        self._a_h = torch.as_tensor(a_h, dtype=dtype).to(device)  # (crop_h, H)
        self._a_w_t = torch.as_tensor(a_w.T.copy(), dtype=dtype).to(device)  # (W, crop_w)
        self.device = self._a_h.device
        try:  # the matmuls must stay in `dtype` inside a caller's autocast region
            torch.autocast(self.device.type, enabled=False)
            self._autocast_type: str | None = self.device.type
        except RuntimeError:  # a device type without autocast (meta)
            self._autocast_type = None
        height, width, crop_h, crop_w = box.height, box.width, box.crop_height, box.crop_width
        # Contract the width first when that is fewer multiply-adds (it is when shrinking).
        self._width_first = (height * width * crop_w + crop_h * height * crop_w
                             <= crop_h * height * width + crop_h * width * crop_w)
        self._flat_index = torch.as_tensor(self._nearest_exact_index(box), dtype=torch.int64).to(device)

    @staticmethod
    def _nearest_exact_index(box: CropBox) -> np.ndarray:
        """int64 (crop_h * crop_w,): flat source index (row * W + column) of each output depth pixel,
        as `CropBox.apply_depth` (cv2 INTER_NEAREST_EXACT + crop) picks them."""
        shape = (box.height, box.width)
        row_ramp = np.broadcast_to(np.arange(box.height, dtype=np.float32)[:, None], shape).copy()
        col_ramp = np.broadcast_to(np.arange(box.width, dtype=np.float32)[None, :], shape).copy()
        rows = box.apply_depth(row_ramp).astype(np.int64)
        cols = box.apply_depth(col_ramp).astype(np.int64)
        return (rows * box.width + cols).reshape(-1)

    @property
    def size(self) -> tuple[int, int]:
        """(crop_h, crop_w) of the outputs, px."""
        return self.box.crop_height, self.box.crop_width

    def _check(self, tensor: torch.Tensor, name: str, layout: str, ndim: int) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor {layout}, got {type(tensor).__name__}")
        if tensor.ndim != ndim or (ndim == 4 and tensor.shape[-1] != 3):
            raise ValueError(f"{name} must be {layout}, got shape {tuple(tensor.shape)}")
        if tuple(tensor.shape[1:3]) != (self.box.height, self.box.width):
            raise ValueError(f"image is {tensor.shape[2]}x{tensor.shape[1]} px, expected "
                             f"{self.box.width}x{self.box.height}")
        if tensor.device != self.device:
            raise ValueError(f"{name} tensor is on {tensor.device}, expected {self.device}")

    def rgb(self, images_uint8_BHW3: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (B, H, W, 3) -> (B, 3, crop_h, crop_w) in [0, 1], as `CropBox.apply_rgb` per frame
        (to within one level, see the module docstring)."""
        images = images_uint8_BHW3
        self._check(images, "images", "(B, H, W, 3) uint8 RGB", 4)
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        no_autocast = (torch.autocast(self._autocast_type, enabled=False) if self._autocast_type
                       else contextlib.nullcontext())
        with no_autocast:
            x = images.permute(0, 3, 1, 2).to(self.dtype)  # (B, 3, H, W)
            if self._width_first:
                y = torch.matmul(self._a_h, torch.matmul(x, self._a_w_t))
            else:
                y = torch.matmul(torch.matmul(self._a_h, x), self._a_w_t)
        # cv2 rounds to uint8, ties upwards in its integer paths (e.g. 2x area averaging): so here.
        return y.add_(0.5).floor_().clamp_(0.0, 255.0).div_(255.0)

    def depth(self, depth_BHW: torch.Tensor) -> torch.Tensor:
        """float32 metres (B, H, W) -> (B, 1, crop_h, crop_w), exactly `CropBox.apply_depth` per frame:
        values are picked, never blended (0, NaN and inf stay where they land)."""
        self._check(depth_BHW, "depth", "(B, H, W) float metres", 3)
        if not depth_BHW.dtype.is_floating_point:
            raise ValueError(f"depth must be float metres, got {depth_BHW.dtype} "
                             "(convert millimetres to metres first)")
        batch = depth_BHW.shape[0]
        picked = depth_BHW.reshape(batch, -1).index_select(1, self._flat_index)
        return picked.view(batch, 1, *self.size).to(torch.float32)
