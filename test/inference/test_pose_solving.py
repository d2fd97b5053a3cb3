"""inference/pose_solving.py: RANSAC PnP (scene coordinates and pixels) and, with depth, Kabsch on
3D-3D correspondences; the poses are accurate, their covariances calibrated (mean NEES near 6), and
too few correspondences or inliers are clear errors."""

from __future__ import annotations

import cv2
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
    """With depth: Kabsch hypotheses on 3D-3D correspondences, reweighted refit on the inliers."""
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


def _kabsch_position(points_cam: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The camera position of the least-squares (unweighted Kabsch) fit of points_cam onto points."""
    mean_cam, mean_world = points_cam.mean(axis=0), points.mean(axis=0)
    u, _, vt = np.linalg.svd((points_cam - mean_cam).T @ (points - mean_world))
    rotation = vt.T @ np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))]) @ u.T
    return mean_world - rotation @ mean_cam


@pytest.mark.parametrize("use_depth", [True, False])
def test_the_robust_refinement_beats_least_squares_on_heavy_tailed_inliers(use_depth: bool):
    """Scene coordinates whose errors are heavy-tailed inside the inlier threshold (a quarter of the
    cells off by up to the threshold, as real networks' are): the Cauchy-weighted refinement's position
    is at least twice as accurate as least squares on the same inliers (median over 30 views)."""
    rng = np.random.default_rng(3)
    threshold_m, threshold_px = 0.1, 4.0
    config = RansacConfig(use_depth=use_depth, threshold_m=threshold_m, threshold_px=threshold_px)
    robust, least_squares = [], []
    for trial in range(30):
        points, pixels, position, _, _, points_cam = _scene_view(rng, noise_px=0.0, outliers=0.0)
        off = rng.random(len(points)) < 0.25
        if use_depth:
            noisy_cam = points_cam + rng.normal(scale=0.005, size=points_cam.shape)
            direction = rng.normal(size=(off.sum(), 3))
            noisy_cam[off] += direction / np.linalg.norm(direction, axis=1)[:, None] * rng.uniform(
                0.3, 0.9, (off.sum(), 1)) * threshold_m
            pose = solve_pose(points, pixels, K, config, seed=trial, points_cam_N3=noisy_cam)
            inliers = pose.inliers_N
            reference = _kabsch_position(noisy_cam[inliers], points[inliers])
        else:
            noisy = pixels + rng.normal(scale=0.25, size=pixels.shape)
            angle = rng.uniform(0, 2 * np.pi, off.sum())
            noisy[off] += np.column_stack([np.cos(angle), np.sin(angle)]) * rng.uniform(
                0.3, 0.9, (off.sum(), 1)) * threshold_px
            pose = solve_pose(points, noisy, K, config, seed=trial)
            inliers = pose.inliers_N
            _, rvec, tvec = cv2.solvePnP(points[inliers], noisy[inliers], K, None,
                                         flags=cv2.SOLVEPNP_ITERATIVE)
            rotation, _ = cv2.Rodrigues(rvec)
            reference = -rotation.T @ tvec.reshape(3)
        robust.append(np.linalg.norm(pose.position_3 - position))
        least_squares.append(np.linalg.norm(reference - position))
    assert np.median(robust) < 0.5 * np.median(least_squares)


def test_ransac_refuses_without_enough_correspondences():
    rng = np.random.default_rng(1)
    points, pixels, *_ = _scene_view(rng, 0.0, 0.0)
    points[6:] = np.nan
    with pytest.raises(PoseSolveError, match="6 finite correspondences, fewer than the 8"):
        solve_pose(points, pixels, K, RansacConfig(min_inliers=8))
    scattered = rng.normal(scale=5.0, size=(300, 3))
    with pytest.raises(PoseSolveError, match="no pose hypothesis has 6 inliers"):
        solve_pose(scattered, pixels, K, RansacConfig(threshold_px=0.01))
