"""core/undistortion.py: an image of one camera (wider, with barrel distortion, another size) resampled
to another pinhole camera is what that camera renders of the same view; the maps are computed once per
camera pair; an image of the target camera itself is passed through unchanged."""

from __future__ import annotations

import dataclasses
from functools import cache

import cv2
import numpy as np

from posenet_ros.core.camera import Intrinsics
from posenet_ros.core.undistortion import resample_depth, resample_rgb, resampling_maps
from posenet_ros.data.frames import RenderedFrame
from posenet_ros.data.synthetic import SceneConfig, SyntheticScene, distorted_frames, distortion_maps


@cache
def _render(width: int, height: int, hfov_deg: float, distortion: tuple[float, ...] = ()
            ) -> tuple[RenderedFrame, Intrinsics]:
    """The first test frame of the synthetic scene seen by a camera of this size, field of view and
    distortion (the renderer's pinhole render, distorted as `synth --distortion` does)."""
    scene = SyntheticScene(SceneConfig(width=width, height=height, hfov_deg=hfov_deg,
                                       frames_per_sequence=8, train_sequences=1, val_sequences=0,
                                       outside_sequences=0, variations=[]))
    plan = next(plan for plan in scene.sequences if plan.split == "test")
    frame = scene.render(plan.world_from_cam[2])
    camera = dataclasses.replace(scene.intrinsics, distortion=distortion)
    if distortion:
        frame = next(distorted_frames(iter([frame]), distortion_maps(camera)))
    return frame, camera


def test_another_camera_resampled_to_the_target_camera_is_its_render():
    target_frame, target = _render(64, 48, 90.0)
    source_frame, source = _render(80, 60, 100.0, (-0.25, 0.05, 0.0, 0.0))
    rgb = resample_rgb(source_frame.rgb_HW3, source, target)
    depth = resample_depth(source_frame.depth_HW, source, target)
    assert rgb.shape == target_frame.rgb_HW3.shape and depth.shape == target_frame.depth_HW.shape
    inner = (slice(3, -3), slice(3, -3))  # bilinear blending with the border

    def grey_levels(image: np.ndarray) -> float:  # mean absolute difference from the target's render
        return float(np.abs(image[inner].astype(int) - target_frame.rgb_HW3[inner]).mean())

    # The textures alias at 64x48: the target camera's own 80x60 render resampled differs this much...
    same_frame, same = _render(80, 60, 90.0)
    aliasing = grey_levels(resample_rgb(same_frame.rgb_HW3, same, target))
    # ... and without resampling (the frame resized to the target's size) the view is another one.
    naive = grey_levels(cv2.resize(source_frame.rgb_HW3, (64, 48), interpolation=cv2.INTER_AREA))
    error = grey_levels(rgb)
    assert error < 1.5 * aliasing and error < 0.5 * naive, (error, aliasing, naive)
    # Depth is the z of the same points: the nearest source pixel's, within the depth edges.
    close = np.abs(depth[inner] - target_frame.depth_HW[inner]) < 0.05
    assert close.mean() > 0.9, close.mean()
    assert resampling_maps(source, target) is resampling_maps(source, target)  # once per camera pair


def test_an_image_of_the_target_camera_is_unchanged():
    frame, camera = _render(64, 48, 90.0)
    assert resample_rgb(frame.rgb_HW3, camera, camera) is frame.rgb_HW3
