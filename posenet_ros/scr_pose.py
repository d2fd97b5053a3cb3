"""Camera pose from predicted scene coordinates: RANSAC PnP, refinement on the inliers, covariance.

Input: N 2D-3D correspondences, pixels_N2 (u, v: column, row, pixel centres at integers) of the
network's input image and their predicted scene coordinates coords_N3 (map frame, metres), and the
input image's pinhole matrix K_33. OpenCV's `solvePnPRansac` (AP3P minimal sets) finds the pose with
the most inliers (reprojection error <= `threshold_px`), `solvePnPRefineLM` refines it on them, the
inliers are re-selected with the refined pose and it is refined once more.

Covariance: Gauss-Newton on the inlier reprojection residuals r (2n values) with Jacobian J over the
camera-from-world parameters p (OpenCV's rvec, tvec): Σ_p = σ² (JᵀJ)⁻¹ with σ² = |r|² / (2n - 6).
It is mapped to the published parameters (camera position in the map, metres; rotation of
`world_from_cam` about the fixed map axes, radians: q = exp(δ) q_est) through the numerical Jacobian
of that map. `calibration` later scales it per block on validation frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from posenet_ros.geometry import matrix_to_quat, quat_conjugate, quat_log, quat_multiply

MIN_CORRESPONDENCES = 4


class PoseSolveError(ValueError):
    """Too few (finite) correspondences or no pose hypothesis with enough inliers."""


@dataclass
class RansacConfig:
    """Pose solver settings (stored in the checkpoint's configuration under `ransac`)."""

    threshold_px: float = 2.0  # inlier reprojection error, pixels of the network's input image
    iterations: int = 256  # RANSAC hypotheses
    min_inliers: int = 6  # fewer: the frame has no pose

    def __post_init__(self) -> None:
        if not self.threshold_px > 0 or self.iterations < 1 or self.min_inliers < MIN_CORRESPONDENCES:
            raise ValueError(f"ransac needs threshold_px > 0, iterations >= 1 and min_inliers >= "
                             f"{MIN_CORRESPONDENCES}")


@dataclass
class ScrPose:
    """position_3 (metres) and quat_wxyz_4 (unit, w >= 0) of `world_from_cam`; covariance_66 over
    (x, y, z, rot X, rot Y, rot Z) about the map axes (uncalibrated); inliers_N the inlier mask over
    the given correspondences; inlier_ratio = inliers / finite correspondences; rms_px of the inliers."""

    position_3: np.ndarray
    quat_wxyz_4: np.ndarray
    covariance_66: np.ndarray
    inliers_N: np.ndarray
    inlier_ratio: float
    rms_px: float


def _world_pose(rvec: np.ndarray, tvec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(camera position in the world, world_from_cam rotation matrix) of OpenCV's cam_from_world."""
    rotation, _ = cv2.Rodrigues(rvec)
    return -rotation.T @ tvec.reshape(3), rotation.T


def _published_jacobian(rvec: np.ndarray, tvec: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """d(position, δ) / d(rvec, tvec), 6x6, by central differences."""
    position0, rotation0 = _world_pose(rvec, tvec)
    quat0 = matrix_to_quat(rotation0)
    jacobian = np.zeros((6, 6))
    for k in range(6):
        delta = np.zeros(6)
        delta[k] = step
        columns = []
        for sign in (1.0, -1.0):
            position, rotation = _world_pose(rvec + sign * delta[:3], tvec + sign * delta[3:])
            rotvec = quat_log(quat_multiply(matrix_to_quat(rotation), quat_conjugate(quat0)))
            columns.append(np.concatenate([position - position0, rotvec]))
        jacobian[:, k] = (columns[0] - columns[1]) / (2 * step)
    return jacobian


def _residuals(coords: np.ndarray, pixels: np.ndarray, K: np.ndarray, rvec: np.ndarray,
               tvec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reprojection errors N (px; inf behind the camera), residual Jacobian 2N x 6)."""
    projected, jacobian = cv2.projectPoints(coords, rvec, tvec, K, None)
    rotation, _ = cv2.Rodrigues(rvec)
    depth = coords @ rotation[2] + tvec.reshape(3)[2]
    errors = np.linalg.norm(projected.reshape(-1, 2) - pixels, axis=1)
    return np.where(depth > 0, errors, np.inf), jacobian[:, :6]


def solve_pose(coords_N3: np.ndarray, pixels_N2: np.ndarray, K_33: np.ndarray, config: RansacConfig,
               seed: int = 0) -> ScrPose:
    """The pose of the camera that saw scene points `coords_N3` at `pixels_N2` (see the module
    docstring). Non-finite coordinates are ignored. Raises PoseSolveError when no pose has
    `config.min_inliers` inliers. The RANSAC sampling is seeded by `seed`."""
    coords = np.asarray(coords_N3, np.float64).reshape(-1, 3)
    pixels = np.asarray(pixels_N2, np.float64).reshape(-1, 2)
    K = np.asarray(K_33, np.float64)
    finite = np.isfinite(coords).all(axis=1) & np.isfinite(pixels).all(axis=1)
    if finite.sum() < config.min_inliers:
        raise PoseSolveError(f"{int(finite.sum())} finite correspondences, fewer than the "
                             f"{config.min_inliers} a pose needs")
    index = np.flatnonzero(finite)
    cv2.setRNGSeed(int(seed) % (2**31))
    found, rvec, tvec, inliers = cv2.solvePnPRansac(
        coords[index], pixels[index], K, None, iterationsCount=config.iterations,
        reprojectionError=config.threshold_px, confidence=0.9999, flags=cv2.SOLVEPNP_AP3P)
    if not found or inliers is None or len(inliers) < config.min_inliers:
        raise PoseSolveError(f"no pose hypothesis has {config.min_inliers} inliers within "
                             f"{config.threshold_px} px ({0 if inliers is None else len(inliers)} found)")
    inlier = np.zeros(len(index), bool)
    inlier[inliers.reshape(-1)] = True
    for _ in range(2):  # refine on the inliers, then re-select them with the refined pose
        rvec, tvec = cv2.solvePnPRefineLM(coords[index[inlier]], pixels[index[inlier]], K, None, rvec, tvec)
        errors, _ = _residuals(coords[index], pixels[index], K, rvec, tvec)
        if (errors <= config.threshold_px).sum() < config.min_inliers:
            break
        inlier = errors <= config.threshold_px
    errors, jacobian = _residuals(coords[index[inlier]], pixels[index[inlier]], K, rvec, tvec)
    count = int(inlier.sum())
    sigma2 = float(np.sum(errors**2) / max(2 * count - 6, 1))
    information = jacobian.T @ jacobian
    with np.errstate(all="ignore"):
        try:
            covariance_p = max(sigma2, 1e-6) * np.linalg.inv(information)
        except np.linalg.LinAlgError:
            covariance_p = np.full((6, 6), np.nan)
        published = _published_jacobian(rvec.reshape(3), tvec.reshape(3))
        covariance = published @ covariance_p @ published.T
    if not np.isfinite(covariance).all():
        raise PoseSolveError(f"the {count} inliers do not constrain the pose (degenerate configuration)")
    position, rotation = _world_pose(rvec.reshape(3), tvec.reshape(3))
    mask = np.zeros(len(coords), bool)
    mask[index[inlier]] = True
    return ScrPose(position_3=position, quat_wxyz_4=matrix_to_quat(rotation),
                   covariance_66=0.5 * (covariance + covariance.T), inliers_N=mask,
                   inlier_ratio=count / len(index), rms_px=float(np.sqrt(np.mean(errors**2))))
