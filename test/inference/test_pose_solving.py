"""inference/pose_solving.py: RANSAC PnP (scene coordinates and pixels) and, with depth, Kabsch on
3D-3D correspondences; the poses are accurate, their covariances calibrated (mean NEES near 6), and
too few correspondences or inliers are clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from posenet_ros.core.geometry import quat_conjugate, quat_log, quat_multiply, quat_to_matrix
from posenet_ros.inference.pose_solving import PoseSolveError, RansacConfig, solve_pose
from posenet_ros.models.scene_coordinates import cell_pixels

K = np.array([[80.0, 0.0, 79.5], [0.0, 80.0, 59.5], [0.0, 0.0, 1.0]])


def _scene_view(rng: np.random.Generator, noise_px: float, outliers: float):
    """A random camera seeing points at 1-4 m through the cells of a 160x120 image: (map points, their
    noisy pixels, camera position, quaternion, outlier mask, exact camera-frame points)."""
    quat = rng.normal(size=4)
    quat = quat / np.linalg.norm(quat) * np.sign(quat[0])
    position = rng.normal(size=3)
    pixels = cell_pixels(120, 160).reshape(-1, 2).numpy().astype(np.float64)
    depth = rng.uniform(1.0, 4.0, len(pixels))
    points_cam = np.column_stack([(pixels[:, 0] - K[0, 2]) / K[0, 0] * depth,
                                  (pixels[:, 1] - K[1, 2]) / K[1, 1] * depth, depth])
    points = points_cam @ quat_to_matrix(quat).T + position
    wrong = rng.random(len(points)) < outliers
    points[wrong] += rng.normal(scale=1.0, size=(wrong.sum(), 3))
    return points, pixels + rng.normal(scale=noise_px, size=pixels.shape), position, quat, wrong, points_cam


def test_ransac_pose_is_accurate_and_its_covariance_is_calibrated():
    rng = np.random.default_rng(0)
    nees = []
    for trial in range(100):
        points, pixels, position, quat, wrong, _ = _scene_view(rng, noise_px=0.5, outliers=0.3)
        pose = solve_pose(points, pixels, K, RansacConfig(), seed=trial)
        error = np.concatenate([position - pose.position_3,
                                quat_log(quat_multiply(quat, quat_conjugate(pose.quat_wxyz_4)))])
        assert np.linalg.norm(error[:3]) < 0.03 and np.degrees(np.linalg.norm(error[3:])) < 1.0
        assert pose.inliers_N[~wrong].mean() > 0.9 and pose.inliers_N[wrong].mean() < 0.1
        nees.append(error @ np.linalg.solve(pose.covariance_66, error))
    # Gaussian pixel noise: the refinement's covariance gives NEES of mean 6 (its dimension).
    assert 4.5 < np.mean(nees) < 7.5
    again = solve_pose(points, pixels, K, RansacConfig(), seed=99)
    np.testing.assert_array_equal(again.position_3, pose.position_3)


def test_rgbd_ransac_pose_is_accurate_and_its_covariance_is_calibrated():
    """With depth: Kabsch hypotheses on 3D-3D correspondences, least-squares refit on the inliers."""
    rng = np.random.default_rng(2)
    config = RansacConfig(use_depth=True, threshold_m=0.1)
    nees = []
    for trial in range(100):
        points, pixels, position, quat, wrong, points_cam = _scene_view(rng, noise_px=0.0, outliers=0.3)
        noisy_cam = points_cam + rng.normal(scale=0.01, size=points_cam.shape)  # 1 cm per axis
        pose = solve_pose(points, pixels, K, config, seed=trial, points_cam_N3=noisy_cam)
        error = np.concatenate([position - pose.position_3,
                                quat_log(quat_multiply(quat, quat_conjugate(pose.quat_wxyz_4)))])
        # 200 inliers average the 1 cm noise: a few millimetres (PnP with 0.5 px noise: centimetres).
        assert np.linalg.norm(error[:3]) < 0.006 and np.degrees(np.linalg.norm(error[3:])) < 0.3
        assert pose.inliers_N[~wrong].mean() > 0.99 and pose.inliers_N[wrong].mean() < 0.1
        nees.append(error @ np.linalg.solve(pose.covariance_66, error))
    # Gaussian 3D noise: the refit's covariance gives NEES of mean 6 (its dimension).
    assert 5.0 < np.mean(nees) < 7.0
    # Cells without valid depth (NaN, z <= 0) are left out; with fewer than min_inliers left, PnP.
    holes = noisy_cam.copy()
    holes[::2] = np.nan
    holes[1::4, 2] = 0.0
    assert not solve_pose(points, pixels, K, config, seed=1, points_cam_N3=holes).inliers_N[::2].any()
    holes[5:] = np.nan
    pnp = solve_pose(points, pixels, K, config, seed=1)
    without = solve_pose(points, pixels, K, config, seed=1, points_cam_N3=holes)
    np.testing.assert_array_equal(without.position_3, pnp.position_3)
    strict = RansacConfig(use_depth=True, threshold_m=0.001)
    with pytest.raises(PoseSolveError, match=r"no pose hypothesis has 6 inliers within 0\.001 m"):
        solve_pose(points, pixels, K, strict, points_cam_N3=noisy_cam)


def test_ransac_refuses_without_enough_correspondences():
    rng = np.random.default_rng(1)
    points, pixels, *_ = _scene_view(rng, 0.0, 0.0)
    points[6:] = np.nan
    with pytest.raises(PoseSolveError, match="6 finite correspondences, fewer than the 8"):
        solve_pose(points, pixels, K, RansacConfig(min_inliers=8))
    scattered = rng.normal(scale=5.0, size=(300, 3))
    with pytest.raises(PoseSolveError, match="no pose hypothesis has 6 inliers"):
        solve_pose(scattered, pixels, K, RansacConfig(threshold_px=0.01))
