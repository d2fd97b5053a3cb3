"""Torch dataset over FrameRecords: read, resize, crop, colour-jitter, roll and zoom frames, keep K and
the pose consistent.

Each item is a dict of tensors (T = `FrameTransform.window`; with T = 1 the T axis is dropped):

    image           float32 (3, H, W) or (T, 3, H, W), RGB in [0, 1]
    depth           float32 (1, H, W) or (T, 1, H, W), metres, 0 = invalid (only if records have depth,
                    or as `with_depth` says)
    world_from_cam  float32 (4, 4) or (T, 4, 4), camera-to-world, metres
    pose            float32 (7,) or (T, 7): camera position xyz (metres) + quaternion wxyz of the
                    world_from_cam rotation, unit norm, w >= 0
    K               float32 (3, 3) or (T, 3, 3), intrinsics of the returned image (after resize
                    and crop; only if the records have intrinsics). Images are read by
                    data/images.py: the record's K scaled to the file's size, distorted cameras
                    undistorted to their pinhole K, depth in the record's unit
    sequence        str
    frame_index     int, or int64 (T,) for windows

Geometry of the image operations (pixel centres at integer coordinates): the resize maps pixel
centre x to (x + 0.5) * s - 0.5 (cv2.resize and `Intrinsics.resized` agree on this), the crop
subtracts its top-left corner; depth is resized with exact nearest neighbour so invalid zeros never
blend with valid depth; the roll and zoom (`roll_and_zoom`) warp the image about the principal point
and change K and world_from_cam to the camera that would have seen it. Randomness (crop position,
jitter, roll, zoom) comes from `np.random.default_rng([seed, epoch, index])`, so an item depends only
on (seed, epoch, index), never on DataLoader workers; call `set_epoch` at the start of each epoch. All
frames of a window share one crop, one jitter, one roll and one zoom.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from posenet_ros.core.camera import FrameTransform, Intrinsics, crop_box
from posenet_ros.core.geometry import matrix_to_quat
from posenet_ros.data.cache import DecodeCache
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.data.images import record_depth, record_rgb, scaled_intrinsics

logger = logging.getLogger(__name__)

_LUMA_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def pose_vector(world_from_cam: np.ndarray) -> np.ndarray:
    """(4, 4) world_from_cam -> (7,) float64: position xyz + unit quaternion wxyz with w >= 0."""
    return np.concatenate([world_from_cam[:3, 3], matrix_to_quat(world_from_cam[:3, :3])])


def decode_frame(record: FrameRecord, with_depth: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """One frame at its source size: uint8 RGB (H, W, 3) and, with `with_depth`, float32 depth in metres
    (H, W), 0 = invalid, read by data/images.py (undistorted when the camera has distortion, depth in
    the record's unit). DatasetError naming the file when the depth's size differs from the image's or
    the intrinsics are for another aspect ratio. What the dataset and the decode cache (cache.py) read
    frames with."""
    rgb, camera = record_rgb(record)
    return rgb, record_depth(record, camera) if with_depth else None


def hole_mask(height: int, width: int, share: float, rng: np.random.Generator,
              blob_px: int = 8) -> np.ndarray:
    """A boolean (height, width) mask of holes covering `share` of the pixels (to within rounding), in
    blobs about `blob_px` pixels across: smooth random noise thresholded at its `share` quantile."""
    if share <= 0.0:
        return np.zeros((height, width), dtype=bool)
    coarse = rng.random((max(2, -(-height // blob_px)), max(2, -(-width // blob_px)))).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return field < np.quantile(field, share)


def roll_and_zoom(rgb_HW3: np.ndarray, depth_HW: np.ndarray | None, K_33: np.ndarray,
                  world_from_cam_44: np.ndarray, roll_rad: float,
                  zoom: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """The frame of the same camera rolled by `roll_rad` about its optical axis and with its focal
    lengths times `zoom`: (float32 RGB, depth in metres or None, K, world_from_cam) of that camera.
    Each pixel offset v from the principal point c moves to zoom · D R D⁻¹ v (D = diag(fx, fy), R the
    2D rotation by roll_rad), so a point seen along normalised direction x is seen along R x: the new
    camera is the old one rotated by R_z(roll_rad), world_from_cam · R_zᵀ. Depth is unchanged by both
    (nearest neighbour; pixels from outside the image are 0, black in the image)."""
    height, width = rgb_HW3.shape[:2]
    focal = np.diag([K_33[0, 0], K_33[1, 1]])
    cos, sin = math.cos(roll_rad), math.sin(roll_rad)
    linear = zoom * focal @ np.array([[cos, -sin], [sin, cos]]) @ np.linalg.inv(focal)
    centre = K_33[:2, 2]
    affine = np.hstack([linear, (centre - linear @ centre)[:, None]])
    rgb = cv2.warpAffine(rgb_HW3, affine, (width, height), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if depth_HW is not None:
        depth_HW = cv2.warpAffine(depth_HW, affine, (width, height), flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    K = np.array(K_33, np.float64)
    K[0, 0], K[1, 1] = K[0, 0] * zoom, K[1, 1] * zoom
    roll = np.eye(4)
    roll[:2, :2] = [[cos, -sin], [sin, cos]]
    return rgb, depth_HW, K, world_from_cam_44 @ roll.T


def network_input(item: dict[str, Any], channels: int) -> torch.Tensor:
    """What a PoseNet with `channels` input channels reads from a dataset item or batch: its image
    (..., 3, H, W), followed for RGB-D models (channels 4) by its depth (..., 1, H, W) in metres."""
    if channels == 3:
        return item["image"]
    if "depth" not in item:
        raise DatasetError("the model reads depth, but these frames have no depth images")
    return torch.cat([item["image"], item["depth"]], dim=-3)


@dataclass(frozen=True)
class _Jitter:
    brightness: float
    contrast: float
    saturation: float
    hue_turns: float

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Jitter float32 RGB (H, W, 3) in [0, 1]: brightness, contrast, saturation, hue, in that order."""
        out = rgb
        if self.brightness != 1.0:
            out = np.clip(out * self.brightness, 0.0, 1.0)
        if self.contrast != 1.0:
            mean = float((out @ _LUMA_RGB).mean())
            out = np.clip((out - mean) * self.contrast + mean, 0.0, 1.0)
        if self.saturation != 1.0:
            grey = (out @ _LUMA_RGB)[..., None]
            out = np.clip((out - grey) * self.saturation + grey, 0.0, 1.0)
        if self.hue_turns != 0.0:
            angle = 2.0 * math.pi * self.hue_turns
            axis = np.full(3, 1.0 / math.sqrt(3.0))
            cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
            rotation = (math.cos(angle) * np.eye(3) + math.sin(angle) * cross
                        + (1.0 - math.cos(angle)) * np.outer(axis, axis))
            out = np.clip(out @ rotation.T.astype(np.float32), 0.0, 1.0)
        return out.astype(np.float32, copy=False)


class PoseDataset(Dataset):
    """Frames (or windows of T frames) with their poses, prepared by a FrameTransform.

    `records` typically come from `load_frames`. Windows are built per sequence from the records
    sorted by frame index and never cross sequences; with T = 1 items follow the order of `records`.
    `with_depth`: read the records' depth images (True: required, a DatasetError if a record has
    none; False: never; None: when the records have them).
    `cache_dir`: decode every frame once into a `DecodeCache` in this folder (at the transform's resize,
    before the crop; built here, reused while the sources are unchanged); None reads the files for
    every item. Items are identical either way.
    """

    def __init__(self, records: Sequence[FrameRecord], transform: FrameTransform | None = None, *,
                 seed: int = 0, with_depth: bool | None = None, cache_dir: str | Path | None = None,
                 progress: bool = False) -> None:
        self.records = list(records)
        if not self.records:
            raise ValueError("PoseDataset needs at least one frame record")
        self.transform = transform if transform is not None else FrameTransform()
        self.seed = int(seed)
        self.epoch = 0
        without_depth = [record for record in self.records if record.depth_path is None]
        if with_depth and without_depth:
            first = without_depth[0]
            raise DatasetError(f"depth images are needed (an RGB-D model) but frame {first.frame_index} of "
                               f"{first.sequence!r} ({first.image_path}) has none")
        if with_depth is None and 0 < len(without_depth) < len(self.records):
            raise ValueError("some records have depth and some do not; use one kind per dataset")
        self.has_depth = not without_depth if with_depth is None else with_depth
        with_intrinsics = [record.intrinsics is not None for record in self.records]
        if any(with_intrinsics) and not all(with_intrinsics):
            raise ValueError("some records have intrinsics and some do not; use one kind per dataset")
        self.windows = self._make_windows()
        if not self.windows:
            span = (self.transform.window - 1) * self.transform.window_stride + 1
            raise ValueError(f"no sequence has the {span} frames a window of {self.transform.window} "
                             f"with stride {self.transform.window_stride} needs")
        self.cache: DecodeCache | None = None
        if cache_dir is not None:
            self.cache = DecodeCache(self.records, self.transform.resize, cache_dir, self.has_depth)
            self.cache.build(decode_frame, progress=progress)

    def _make_windows(self) -> list[list[int]]:
        """Record indices of each item."""
        length, stride = self.transform.window, self.transform.window_stride
        if length == 1:
            return [[i] for i in range(len(self.records))]
        by_sequence: dict[str, list[int]] = {}
        for i, record in enumerate(self.records):
            by_sequence.setdefault(record.sequence, []).append(i)
        span = (length - 1) * stride + 1
        windows = []
        for members in by_sequence.values():
            members.sort(key=lambda i: self.records[i].frame_index)
            for start in range(len(members) - span + 1):
                windows.append(members[start:start + span:stride])
        return windows

    def set_epoch(self, epoch: int) -> None:
        """Select the random crops and jitter of this epoch (call before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.windows)

    def _jitter(self, rng: np.random.Generator) -> _Jitter:
        t = self.transform
        factors = [max(0.0, 1.0 + rng.uniform(-a, a)) if a > 0 else 1.0
                   for a in (t.brightness, t.contrast, t.saturation)]
        hue = rng.uniform(-t.hue, t.hue) if t.hue > 0 else 0.0
        return _Jitter(factors[0], factors[1], factors[2], hue)

    def _frame(self, record_index: int) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
        """(uint8 RGB, float32 depth in metres or None, (width, height) of the source) of a record: at
        the source size when read from its files, at the resized size when read from the cache."""
        if self.cache is None:
            rgb, depth = decode_frame(self.records[record_index], self.has_depth)
            return rgb, depth, (rgb.shape[1], rgb.shape[0])
        frame = self.cache.frame(record_index)
        depth = self.cache.depth(record_index) if self.has_depth else None
        return self.cache.rgb(record_index), depth, (frame.width, frame.height)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.windows):
            raise IndexError(f"index {index} out of range for {len(self.windows)} items")
        t = self.transform
        rng = np.random.default_rng([self.seed, self.epoch, index])
        records = [self.records[i] for i in self.windows[index]]
        frames = [self._frame(i) for i in self.windows[index]]
        width, height = frames[0][2]
        for record, (_, _, size) in zip(records, frames, strict=True):
            if size != (width, height):
                raise DatasetError(f"{record.image_path}: size {size[0]}x{size[1]} differs from "
                                   f"the window's first frame {width}x{height}")

        box = crop_box(width, height, t, rng)
        # cached frames are already resized: only the crop remains to be applied to them
        pixels_box = box if self.cache is None else dataclasses.replace(box, width=box.new_width,
                                                                        height=box.new_height)
        jitter = self._jitter(rng)
        roll_rad = math.radians(rng.uniform(-t.rotation_deg, t.rotation_deg)) if t.rotation_deg > 0 else 0.0
        zoom = math.exp(rng.uniform(-math.log1p(t.zoom), math.log1p(t.zoom))) if t.zoom > 0 else 1.0
        images, depths, matrices, poses, ks = [], [], [], [], []
        for record, (rgb, depth, _) in zip(records, frames, strict=True):
            image = jitter.apply(pixels_box.apply_rgb(rgb))
            if self.has_depth:
                depth = np.array(pixels_box.apply_depth(depth))  # a copy, never a view of the cache
                if t.depth_holes > 0:
                    holes = hole_mask(*depth.shape, rng.uniform(0.0, t.depth_holes), rng)
                    depth = np.where(holes, 0.0, depth)
            world_from_cam = record.world_from_cam
            K = None
            if record.intrinsics is not None:  # the pinhole K of the image as read (images.record_rgb)
                camera = scaled_intrinsics(record.intrinsics, width, height, record.image_path).pinhole()
                intrinsics: Intrinsics = camera.resized(box.new_width, box.new_height)
                K = intrinsics.cropped(box.x0, box.y0, box.crop_width, box.crop_height).matrix()
            if roll_rad or zoom != 1.0:
                if K is None:
                    raise DatasetError(f"{record.image_path}: data.rotation_deg and data.zoom need the "
                                       "frames' intrinsics")
                image, depth, K, world_from_cam = roll_and_zoom(image, depth, K, world_from_cam,
                                                                roll_rad, zoom)
            images.append(image.transpose(2, 0, 1))
            if self.has_depth:
                depths.append(depth[None])
            matrices.append(world_from_cam)
            poses.append(pose_vector(world_from_cam))
            if K is not None:
                ks.append(K)

        def stack(arrays: list[np.ndarray]) -> torch.Tensor:
            array = arrays[0] if t.window == 1 else np.stack(arrays)
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

        item: dict[str, Any] = {
            "image": stack(images),
            "world_from_cam": stack(matrices),
            "pose": stack(poses),
            "sequence": records[0].sequence,
            "frame_index": (records[0].frame_index if t.window == 1 else
                            torch.tensor([record.frame_index for record in records], dtype=torch.int64)),
        }
        if self.has_depth:
            item["depth"] = stack(depths)
        if ks:
            item["K"] = stack(ks)
        return item
