"""runtime/device_preprocess.py: DevicePreprocessor against the CPU reference CropBox.apply_rgb /
apply_depth (cv2)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from posenet_ros.core.camera import CropBox, FrameTransform, crop_box
from posenet_ros.runtime.device_preprocess import DevicePreprocessor, area_weights, linear_weights

# (frame width, height, FrameTransform.resize, FrameTransform.crop)
CASES = [
    (640, 480, 224, 224),  # shrink (area, non-integer factor), centre crop
    (640, 480, 256, 224),
    (160, 120, 48, (44, 60)),  # the acceptance tests' setting
    (333, 251, 100, None),  # odd sizes, no crop
    (640, 480, 240, None),  # integer factor: cv2's fast area path
    (640, 480, None, 224),  # no resize, only a crop
    (64, 48, 96, None),  # upscaling (linear)
    (64, 48, 96, (80, 100)),
]
IDS = [f"{w}x{h}-r{r}-c{c}" for w, h, r, c in CASES]


def _box(width: int, height: int, resize: int | None, crop) -> CropBox:
    return crop_box(width, height, FrameTransform(resize=resize, crop=crop, random_crop=False))


def _frames(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """uint8 (4, H, W, 3): two uniform-noise frames and two smooth ones."""
    noise = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2)]
    smooth = []
    for _ in range(2):
        coarse = rng.random((max(2, height // 12), max(2, width // 12), 3)).astype(np.float32) * 255.0
        field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        smooth.append(np.clip(np.rint(field), 0, 255).astype(np.uint8))
    return np.stack(noise + smooth)


def _depths(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """float32 (3, H, W) metres with holes: 0, NaN and inf."""
    depth = (0.3 + 5.0 * rng.random((3, height, width))).astype(np.float32)
    depth[rng.random(depth.shape) < 0.1] = 0.0
    depth[rng.random(depth.shape) < 0.05] = np.nan
    depth[rng.random(depth.shape) < 0.02] = np.inf
    return depth


def _check_rgb(box: CropBox, device: torch.device, seed: int) -> None:
    frames = _frames(np.random.default_rng(seed), box.width, box.height)
    expected = np.stack([box.apply_rgb(f) for f in frames]).transpose(0, 3, 1, 2)
    out = DevicePreprocessor(box, device).rgb(torch.from_numpy(frames).to(device))
    assert out.dtype == torch.float32 and out.device.type == device.type
    assert tuple(out.shape) == (len(frames), 3, box.crop_height, box.crop_width)
    diff = np.abs(out.cpu().numpy() - expected)
    assert diff.max() <= 1.0 / 255.0 + 1e-6
    assert diff.mean() < 0.2 / 255.0
    if (box.new_width, box.new_height) == (box.width, box.height):
        # A crop alone is exact up to one float32 rounding: CUDA divides by a scalar as a multiplication
        # by its reciprocal (6e-8 seen on an H200), the CPU divides.
        assert diff.max() <= 2.0**-23


def _check_depth(box: CropBox, device: torch.device, seed: int) -> None:
    depth = _depths(np.random.default_rng(seed), box.width, box.height)
    expected = np.stack([box.apply_depth(d) for d in depth])[:, None]
    out = DevicePreprocessor(box, device).depth(torch.from_numpy(depth).to(device))
    assert out.dtype == torch.float32
    assert tuple(out.shape) == (len(depth), 1, box.crop_height, box.crop_width)
    np.testing.assert_array_equal(out.cpu().numpy(), expected)  # NaN positions must agree too


@pytest.mark.parametrize(("width", "height", "resize", "crop"), CASES, ids=IDS)
def test_rgb_matches_crop_box(width, height, resize, crop):
    _check_rgb(_box(width, height, resize, crop), torch.device("cpu"), seed=width + height)


@pytest.mark.parametrize(("width", "height", "resize", "crop"), CASES, ids=IDS)
def test_depth_matches_crop_box_exactly(width, height, resize, crop):
    _check_depth(_box(width, height, resize, crop), torch.device("cpu"), seed=width * height)


def test_random_crop_position():
    rng = np.random.default_rng(5)
    transform = FrameTransform(resize=64, crop=(50, 60), random_crop=True)
    for seed in range(3):
        box = crop_box(200, 150, transform, rng)
        _check_rgb(box, torch.device("cpu"), seed)
        _check_depth(box, torch.device("cpu"), seed)


def test_batch_equals_single_frames():
    box = _box(160, 120, 48, (44, 60))
    pre = DevicePreprocessor(box)
    frames = torch.from_numpy(_frames(np.random.default_rng(1), 160, 120))
    batch = pre.rgb(frames)
    for i in range(len(frames)):
        assert torch.equal(batch[i:i + 1], pre.rgb(frames[i:i + 1]))
    assert pre.size == (44, 60)
    assert tuple(pre.rgb(frames[:0]).shape) == (0, 3, 44, 60)


def test_autocast_does_not_lower_the_precision():
    pre = DevicePreprocessor(_box(640, 480, 256, 224))
    frames = torch.from_numpy(_frames(np.random.default_rng(3), 640, 480)[:2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = pre.rgb(frames)
    assert inside.dtype == torch.float32
    assert torch.equal(inside, pre.rgb(frames))


@pytest.mark.parametrize(("src", "dst"), [(640, 224), (480, 224), (333, 100), (251, 100), (640, 320), (7, 3)])
def test_area_weights_are_cv2s(src, dst):
    # cv2 resizes float32 without rounding: resizing an identity image reads its weights off.
    expected = cv2.resize(np.eye(src, dtype=np.float32), (dst, src), interpolation=cv2.INTER_AREA).T
    np.testing.assert_allclose(area_weights(src, dst), expected, atol=1e-6)


@pytest.mark.parametrize(("src", "dst"), [(48, 96), (64, 128), (50, 77), (3, 7), (10, 10)])
def test_linear_weights_are_cv2s(src, dst):
    expected = cv2.resize(np.eye(src, dtype=np.float32), (dst, src), interpolation=cv2.INTER_LINEAR).T
    np.testing.assert_allclose(linear_weights(src, dst), expected, atol=1e-6)


def test_errors_name_the_problem():
    pre = DevicePreprocessor(_box(64, 48, 32, None))
    with pytest.raises(ValueError, match=r"images must be uint8, got torch\.float32"):
        pre.rgb(torch.zeros(1, 48, 64, 3))
    with pytest.raises(ValueError, match=r"image is 32x48 px, expected 64x48"):
        pre.rgb(torch.zeros(1, 48, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"must be \(B, H, W, 3\) uint8 RGB, got shape \(48, 64, 3\)"):
        pre.rgb(torch.zeros(48, 64, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 48, 64\)"):
        pre.rgb(torch.zeros(1, 3, 48, 64, dtype=torch.uint8))  # channels first
    with pytest.raises(ValueError, match=r"image is 64x50 px, expected 64x48"):
        pre.depth(torch.zeros(1, 50, 64))
    with pytest.raises(ValueError, match=r"depth must be float metres, got torch\.int32"):
        pre.depth(torch.zeros(1, 48, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"images tensor is on meta, expected cpu"):
        pre.rgb(torch.zeros(1, 48, 64, 3, dtype=torch.uint8, device="meta"))
    with pytest.raises(ValueError, match="floating-point dtype"):
        DevicePreprocessor(_box(64, 48, 32, None), dtype=torch.int64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("width", "height", "resize", "crop"), CASES, ids=IDS)
def test_cuda_matches_crop_box(width, height, resize, crop):
    box = _box(width, height, resize, crop)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the tolerance holds for full float32 matmuls
    try:
        _check_rgb(box, torch.device("cuda"), seed=width + height)
        _check_depth(box, torch.device("cuda"), seed=width * height)
        frames = torch.from_numpy(_frames(np.random.default_rng(2), width, height))
        on_cpu = DevicePreprocessor(box).rgb(frames)
        on_gpu = DevicePreprocessor(box, "cuda").rgb(frames.pin_memory().to("cuda", non_blocking=True))
        assert (on_gpu.cpu() - on_cpu).abs().max().item() <= 1.0 / 255.0 + 1e-6
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
