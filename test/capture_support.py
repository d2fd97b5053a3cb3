"""Shared by the COLMAP and NeRF loader tests (data/): a few consecutive frames of the synthetic scene
and the geometric-consistency check that loaded poses and intrinsics must pass."""

from __future__ import annotations

import numpy as np

from posenet_ros.core.camera import Intrinsics
from posenet_ros.core.geometry import backproject_depth, pose_invert, project_points, transform_points
from posenet_ros.data.frames import RenderedFrame, SequenceToWrite
from posenet_ros.data.synthetic import SceneConfig, SyntheticScene

SCENE_CONFIG = SceneConfig(width=64, height=48, frames_per_sequence=90, train_sequences=1,
                           outside_sequences=0, val_sequences=0, variations=[])


def render_frames(count: int, first: int = 0) -> tuple[list[RenderedFrame], Intrinsics]:
    """`count` consecutive frames (4 degrees apart along the training loop) and the pinhole camera."""
    scene = SyntheticScene(SCENE_CONFIG)
    poses = scene.sequences[0].world_from_cam[first:first + count]
    return [scene.render(pose) for pose in poses], scene.intrinsics


def as_sequences(frames: list[RenderedFrame], splits: tuple[str, ...] = ("train",)
                 ) -> list[SequenceToWrite]:
    """`frames` cut into one sequence per split name, in order (generators, as writers must accept)."""
    chunks = np.array_split(np.arange(len(frames)), len(splits))
    return [SequenceToWrite(split, (frames[i] for i in chunk)) for split, chunk in zip(splits, chunks,
                                                                                         strict=True)]


def reprojection_agreement(depth_a: np.ndarray, depth_b: np.ndarray, K: np.ndarray,
                           world_from_a: np.ndarray, world_from_b: np.ndarray) -> tuple[float, float]:
    """Back-project frame A's depth (metres) with K and A's pose, project it into frame B: (share of
    A's pixels landing inside B with valid depth, median of |z_B - depth_B| / depth_B over those)."""
    points_a = backproject_depth(depth_a, K).reshape(-1, 3)
    points_a = points_a[np.isfinite(points_a).all(axis=1)]
    uv, z = project_points(transform_points(pose_invert(world_from_b) @ world_from_a, points_a), K)
    cols, rows = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    height, width = depth_b.shape
    inside = (z > 0) & (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    observed = depth_b[rows[inside], cols[inside]]
    valid = observed > 0
    if not valid.any():
        return 0.0, float("inf")
    relative = np.abs(z[inside][valid] - observed[valid]) / observed[valid]
    return float(valid.sum() / len(points_a)), float(np.median(relative))


def consistent(depth_a: np.ndarray, depth_b: np.ndarray, K: np.ndarray, world_from_a: np.ndarray,
               world_from_b: np.ndarray) -> bool:
    """Whether A's depth, moved into B by the poses, lands where B's depth agrees: most of A seen
    (>= 50%) and the median relative depth difference under 1% (nearest-pixel lookup at 64x48 px
    gives about 0.3% with the true poses, 3% and more with a wrong convention)."""
    share, median = reprojection_agreement(depth_a, depth_b, K, world_from_a, world_from_b)
    return share >= 0.5 and median < 0.01
