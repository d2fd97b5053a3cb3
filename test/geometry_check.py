"""Shared by the loader tests: is what a loader read geometrically consistent?

Depth back-projected from frame A with A's pose and intrinsics, moved into frame B with B's pose and
projected with B's intrinsics, must land on pixels of B whose depth agrees (depth to depth, so it also
holds for real data whose colour and depth are not registered, like the 7-Scenes kitchen). A loader
that gets a convention wrong (a quaternion order, a pose direction, an axis flip, unscaled K) makes
the disagreement large. `rendered_frames` makes nearby frames with exact depth with the synthetic
renderer for the layout writers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from posenet_ros.core.camera import Intrinsics
from posenet_ros.core.geometry import backproject_depth, pose_invert, project_points, transform_points
from posenet_ros.data.frames import FrameRecord, RenderedFrame, SequenceToWrite
from posenet_ros.data.images import record_depth, scaled_intrinsics
from posenet_ros.data.synthetic import SceneConfig, SyntheticScene, distorted_frames, distortion_maps


def reprojected_depth_error(depth_a: np.ndarray, depth_b: np.ndarray, K: np.ndarray, world_from_a: np.ndarray,
                            world_from_b: np.ndarray, K_b: np.ndarray | None = None) -> np.ndarray:
    """|z_B(projected A points) - depth_B at the nearest pixel| (metres) for A's valid pixels that land
    on valid pixels of B. `K` is A's 3x3 intrinsics, `K_b` B's (default: `K`)."""
    K_b = K if K_b is None else K_b
    points_a = backproject_depth(depth_a, K).reshape(-1, 3)
    points_a = points_a[np.isfinite(points_a).all(axis=1)]
    b_from_a = pose_invert(world_from_b) @ world_from_a
    uv, z = project_points(transform_points(b_from_a, points_a), K_b)
    cols, rows = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    h, w = depth_b.shape
    inside = (z > 0) & (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    observed = depth_b[rows[inside], cols[inside]]
    valid = observed > 0
    return np.abs(z[inside][valid] - observed[valid])


def record_depth_camera(record: FrameRecord) -> tuple[np.ndarray, np.ndarray]:
    """A record's depth (metres, as the torch dataset reads it) and the 3x3 K of that depth image (the
    record's intrinsics scaled to its size, pinhole after undistortion)."""
    depth = record_depth(record, None)
    camera = scaled_intrinsics(record.intrinsics, depth.shape[1], depth.shape[0], record.depth_path)
    return depth, camera.pinhole().matrix()


def depth_disagreement(records: Sequence[FrameRecord], pairs: Sequence[tuple[int, int]],
                       depths: Sequence[np.ndarray] | None = None) -> tuple[list[float], list[float]]:
    """For each pair (a, b) of record indices: the median depth disagreement (metres) of A's depth
    reprojected into B, and the share of A's pixels that landed on valid depth of B (the overlap).
    Depth and K come from the records (`record_depth_camera`), or, for RGB-only records, depth from
    `depths` (one per record, the size of the records' images) with the records' K scaled to it."""
    medians, overlaps = [], []
    for a, b in pairs:
        if depths is None:
            (depth_a, K_a), (depth_b, K_b) = record_depth_camera(records[a]), record_depth_camera(records[b])
        else:
            depth_a, depth_b = depths[a], depths[b]
            K_a, K_b = (scaled_intrinsics(records[i].intrinsics, depths[i].shape[1], depths[i].shape[0],
                                          records[i].image_path).pinhole().matrix() for i in (a, b))
        error = reprojected_depth_error(depth_a, depth_b, K_a, records[a].world_from_cam,
                                        records[b].world_from_cam, K_b)
        overlaps.append(len(error) / depth_a.size)
        medians.append(float(np.median(error)) if len(error) else float("inf"))
    return medians, overlaps


def assert_consistent(records: Sequence[FrameRecord], pairs: Sequence[tuple[int, int]], *,
                      max_median_m: float = 0.015, min_overlap: float = 0.3,
                      depths: Sequence[np.ndarray] | None = None) -> list[float]:
    """Assert that every pair overlaps (`min_overlap` of A's pixels land on valid depth of B) and its
    median disagreement is below `max_median_m` (the default suits 64x48 synthetic frames a few cm
    apart: rounding to the nearest pixel gives medians of 3 to 9 mm); returns the medians."""
    medians, overlaps = depth_disagreement(records, pairs, depths)
    assert min(overlaps) >= min_overlap, f"the frames hardly overlap: {overlaps}"
    assert max(medians) < max_median_m, f"median depth disagreement {medians} m"
    return medians


SMALL_SCENE = SceneConfig(width=64, height=48, frames_per_sequence=240, train_sequences=1, test_sequences=0,
                          outside_sequences=0, val_sequences=0, variations=[])
"""A one-loop synthetic scene of small frames; consecutive frames are a few centimetres apart."""


def rendered_frames(count: int, config: SceneConfig = SMALL_SCENE) -> tuple[Intrinsics, list[RenderedFrame]]:
    """The first `count` frames of the scene's training loop, rendered with exact depth, and the
    intrinsics they were rendered with."""
    scene = SyntheticScene(config)
    poses = scene.sequences[0].world_from_cam[:count]
    return scene.intrinsics, [scene.render(pose) for pose in poses]


COARSE_SCENE = SceneConfig(width=64, height=48, frames_per_sequence=90, train_sequences=1,
                           outside_sequences=0, val_sequences=0, variations=[])
"""The same loop in 90 frames: consecutive frames 4 degrees apart."""


def as_sequences(frames: Sequence[RenderedFrame], splits: tuple[str, ...] = ("train",)
                 ) -> list[SequenceToWrite]:
    """`frames` cut into one sequence per split name, in order (generators, as writers must accept)."""
    chunks = np.array_split(np.arange(len(frames)), len(splits))
    return [SequenceToWrite(split, (frames[i] for i in chunk))
            for split, chunk in zip(splits, chunks, strict=True)]


def consistent(depth_a: np.ndarray, depth_b: np.ndarray, K: np.ndarray, world_from_a: np.ndarray,
               world_from_b: np.ndarray) -> bool:
    """Whether A's depth, moved into B by the poses, lands where B's depth agrees: most of A seen
    (>= 50% of A's valid pixels) and the median disagreement under 1% of A's median depth (nearest-pixel
    lookup at 64x48 px gives about 0.3% with the true poses, 3% and more with a wrong convention)."""
    error = reprojected_depth_error(depth_a, depth_b, K, world_from_a, world_from_b)
    valid = depth_a[depth_a > 0]
    return len(error) >= 0.5 * len(valid) and float(np.median(error)) < 0.01 * float(np.median(valid))


def distort(frame: RenderedFrame, camera: Intrinsics) -> RenderedFrame:
    """What the distorted `camera` sees of a pinhole rendering with `camera.pinhole()`
    (`synthetic.distortion_maps`)."""
    depth = frame.depth_HW if frame.depth_HW is not None else np.zeros(frame.rgb_HW3.shape[:2], np.float32)
    (distorted,) = distorted_frames(iter([RenderedFrame(frame.rgb_HW3, depth, frame.world_from_cam)]),
                                    distortion_maps(camera))
    return distorted if frame.depth_HW is not None else RenderedFrame(distorted.rgb_HW3, None,
                                                                      frame.world_from_cam)
