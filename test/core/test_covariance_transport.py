"""core/covariance_transport.py: the camera pose covariance carried to the robot base, checked against
sampled poses (the empirical covariance of world_from_base errors) and by NEES under known Gaussian
errors."""

from __future__ import annotations

import numpy as np
import pytest

from posenet_ros.core.covariance_transport import covariance_transport_jacobian, transport_covariance
from posenet_ros.core.geometry import (
    matrix_to_quat,
    pose_from_position_quat,
    position_quat_from_pose,
    quat_exp,
    quat_multiply,
)
from posenet_ros.inference.calibration import nees, pose_error_vectors

WORLD_FROM_CAM = pose_from_position_quat([1.0, -2.0, 0.5], quat_exp([0.3, -1.1, 2.0]))
# A camera optical frame (z forward, x right, y down) 0.2 m ahead of, 0.05 m left of and 0.6 m above
# the base, pitched down 10°.
BASE_FROM_OPTICAL_R = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
BASE_FROM_CAM = pose_from_position_quat([0.2, 0.05, 0.6], quat_multiply(
    quat_exp([0.0, np.radians(10.0), 0.0]), matrix_to_quat(BASE_FROM_OPTICAL_R)))
CAM_FROM_BASE = np.linalg.inv(BASE_FROM_CAM)


def _camera_covariance(rng: np.random.Generator, sigma_position_m: float,
                       sigma_rotation_rad: float) -> np.ndarray:
    """A random full 6x6 covariance (correlated position and rotation) with these typical σ."""
    root = rng.normal(size=(6, 6)) * np.r_[[sigma_position_m] * 3, [sigma_rotation_rad] * 3][:, None] / 2.5
    return root @ root.T + np.diag(np.r_[[sigma_position_m] * 3, [sigma_rotation_rad] * 3] ** 2) * 0.1


def _perturbed_base_poses(errors_N6: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position_N3, quat_N4) of world_from_base for camera poses perturbed by errors (ε, δ):
    R = exp(δ) R̄, t = t̄ + ε (the covariance convention)."""
    position, quat = position_quat_from_pose(WORLD_FROM_CAM)
    world_from_cam = pose_from_position_quat(position + errors_N6[:, :3],
                                             quat_multiply(quat_exp(errors_N6[:, 3:]), quat))
    return position_quat_from_pose(world_from_cam @ CAM_FROM_BASE)


def test_the_jacobian_is_the_lever_arm_cross_product_and_vanishes_without_one():
    jacobian = covariance_transport_jacobian(WORLD_FROM_CAM, CAM_FROM_BASE)
    lever_arm = (WORLD_FROM_CAM @ CAM_FROM_BASE)[:3, 3] - WORLD_FROM_CAM[:3, 3]  # camera -> base, world
    delta = np.array([0.01, -0.02, 0.03])
    np.testing.assert_allclose(jacobian[:3, 3:] @ delta, -np.cross(lever_arm, delta), atol=1e-15)
    np.testing.assert_array_equal(jacobian[3:], np.c_[np.zeros((3, 3)), np.eye(3)])
    np.testing.assert_array_equal(jacobian[:3, :3], np.eye(3))
    rotation_only = CAM_FROM_BASE.copy()
    rotation_only[:3, 3] = 0.0
    np.testing.assert_array_equal(covariance_transport_jacobian(WORLD_FROM_CAM, rotation_only), np.eye(6))


def test_transported_covariance_matches_the_sampled_base_poses():
    rng = np.random.default_rng(0)
    covariance = _camera_covariance(rng, 0.05, 0.01)
    errors = rng.multivariate_normal(np.zeros(6), covariance, size=200_000)
    base_position, base_quat = _perturbed_base_poses(errors)
    nominal_position, nominal_quat = position_quat_from_pose(WORLD_FROM_CAM @ CAM_FROM_BASE)
    base_errors = pose_error_vectors(np.broadcast_to(nominal_position, base_position.shape),
                                     np.broadcast_to(nominal_quat, base_quat.shape), base_position, base_quat)
    empirical = np.cov(base_errors.T)
    transported = transport_covariance(covariance, WORLD_FROM_CAM, CAM_FROM_BASE)
    scale = np.sqrt(np.outer(np.diag(transported), np.diag(transported)))
    # Correlations agree to sampling precision (N = 2e5: about 0.005), far below what ignoring the
    # lever arm would give (the untransported covariance is off by much more).
    assert np.abs((empirical - transported) / scale).max() < 0.01
    assert np.abs((empirical - covariance) / scale).max() > 0.1


def test_mean_nees_is_unchanged_by_the_transport():
    rng = np.random.default_rng(1)
    covariance = _camera_covariance(rng, 0.03, 0.03)  # 3 cm, 1.7°: the 0.63 m lever arm matters
    errors = rng.multivariate_normal(np.zeros(6), covariance, size=20_000)
    camera_nees = nees(errors, np.broadcast_to(covariance, (len(errors), 6, 6)))
    base_position, base_quat = _perturbed_base_poses(errors)
    nominal_position, nominal_quat = position_quat_from_pose(WORLD_FROM_CAM @ CAM_FROM_BASE)
    base_errors = pose_error_vectors(np.broadcast_to(nominal_position, base_position.shape),
                                     np.broadcast_to(nominal_quat, base_quat.shape), base_position, base_quat)
    transported = transport_covariance(covariance, WORLD_FROM_CAM, CAM_FROM_BASE)
    base_nees = nees(base_errors, np.broadcast_to(transported, (len(errors), 6, 6)))
    assert camera_nees.mean() == pytest.approx(6.0, abs=0.15)  # chi-square with 6 degrees of freedom
    # Equal up to the second-order term of the lever arm (about |δ|² |r| / 2, 0.3 mm here).
    assert base_nees.mean() == pytest.approx(camera_nees.mean(), abs=0.03)
    untransported = nees(base_errors, np.broadcast_to(covariance, (len(errors), 6, 6)))
    assert untransported.mean() > 9.0  # the camera's covariance alone misstates the base's error
