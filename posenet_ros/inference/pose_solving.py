"""Camera pose from predicted scene coordinates: RANSAC PnP or, with depth, RANSAC Kabsch; refinement
on the inliers; covariance.

Input: N 2D-3D correspondences, pixels_N2 (u, v: column, row, pixel centres at integers) of the
network's input image and their predicted scene coordinates coords_N3 (map frame, metres), and the
input image's pinhole matrix K_33.

- RGB (2D-3D): OpenCV's `solvePnPRansac` (AP3P minimal sets) finds the pose with the most inliers
  (reprojection error <= `threshold_px`).
- RGB-D (3D-3D, the seed's regression forests): each cell also has its depth pixel back-projected,
  points_cam_N3 (camera frame, metres). Hypotheses are Kabsch fits of `world_from_cam` to 3 random
  cells (batched in torch); the one with the most inliers (|world_from_cam · p - coord| <=
  `threshold_m`) wins. Depth removes PnP's rotation-translation ambiguity, and the pose averages the
  coordinate errors of all inliers.

Refinement (both): `REFINE_ITERATIONS` of iteratively reweighted least squares from the RANSAC pose
(a step that would leave fewer than `min_inliers` cells within the threshold ends it), each cell
weighted by the Cauchy weight 1 / (1 + (e / s)²) of its error e at the current pose with
s = `CAUCHY_SCALE` x threshold, and 0 beyond the threshold (the inliers are re-selected at every
step): Gauss-Newton on the reprojection errors for PnP, weighted Kabsch for RGB-D. A scene coordinate's
error is heavy-tailed even among inliers, and this beat a least-squares refit on hard inliers on real
images (docs/results.md). The inliers are the cells within the threshold of the refined pose.

Covariance: the M-estimate's, c (JᵀJ)⁻¹ on the inlier residuals r with Jacobian J, c from the Cauchy
ψ of the residuals (`_m_estimator_covariance`; Gauss-Newton's σ² for least squares). RGB: reprojection
residuals (2n) over the camera-from-world parameters (OpenCV's rvec, tvec), mapped to the published
parameters (camera position in the map, metres; rotation of `world_from_cam` about the fixed map axes,
radians: q = exp(δ) q_est) through the numerical Jacobian of that map. RGB-D: 3D residuals (3n)
directly over the published parameters (∂r/∂position = I, ∂r/∂δ = -[R p]ₓ). `calibration` later
scales it per block on validation frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from posenet_ros.core.geometry import matrix_to_quat, quat_conjugate, quat_log, quat_multiply

MIN_CORRESPONDENCES = 4
REFINE_ITERATIONS = 10
CAUCHY_SCALE = 0.25  # of the inlier threshold


class PoseSolveError(ValueError):
    """Too few (finite) correspondences or no pose hypothesis with enough inliers."""


@dataclass
class RansacConfig:
    """Pose solver settings (stored in the checkpoint's configuration under `ransac`)."""

    threshold_px: float = 2.0  # inlier reprojection error, pixels of the network's input image
    iterations: int = 256  # RANSAC hypotheses
    min_inliers: int = 6  # fewer: the frame has no pose
    # RGB-D: solve from 3D-3D correspondences with each frame's depth image (the model then needs one
    # with every frame); cells without valid depth are left out, and a frame with fewer than
    # min_inliers such cells is solved by PnP.
    use_depth: bool = False
    threshold_m: float = 0.1  # RGB-D inlier distance of a cell's coordinate to its depth point, metres

    def __post_init__(self) -> None:
        if not (self.threshold_px > 0 and self.threshold_m > 0 and self.iterations >= 1
                and self.min_inliers >= MIN_CORRESPONDENCES):
            raise ValueError(f"ransac needs threshold_px > 0, threshold_m > 0, iterations >= 1 and "
                             f"min_inliers >= {MIN_CORRESPONDENCES}")


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


Projection = tuple[np.ndarray, np.ndarray, np.ndarray]


def _projection(coords: np.ndarray, pixels: np.ndarray, K: np.ndarray, rvec: np.ndarray,
                tvec: np.ndarray) -> Projection:
    """(reprojection residuals N x 2 px, their Jacobian 2N x 6 over (rvec, tvec), reprojection errors N
    px, inf behind the camera) of N points under OpenCV's camera-from-world pose."""
    projected, jacobian = cv2.projectPoints(coords, rvec, tvec, K, None)
    residuals = projected.reshape(-1, 2) - pixels
    rotation, _ = cv2.Rodrigues(rvec)
    depth = coords @ rotation[2] + tvec.reshape(3)[2]
    return residuals, jacobian[:, :6], np.where(depth > 0, np.linalg.norm(residuals, axis=1), np.inf)


def _residuals(coords: np.ndarray, pixels: np.ndarray, K: np.ndarray, rvec: np.ndarray,
               tvec: np.ndarray) -> np.ndarray:
    """Reprojection errors N (px; inf behind the camera)."""
    return _projection(coords, pixels, K, rvec, tvec)[2]


def _m_estimator_covariance(residuals_Nd: np.ndarray, jacobian_Nd6: np.ndarray,
                            threshold: float) -> np.ndarray:
    """Covariance of the refinement's Cauchy M-estimate from N inlier cells with d-dimensional
    residuals (Huber, Robust Statistics, 7.6): [Σ ψ² / (m - 6)] / [Σ ψ' / m]² (JᵀJ)⁻¹ over the m = Nd
    residual components, ψ(r) = w(|r_cell|) r and ψ' its derivative in r; for Gaussian residuals it
    follows the efficiency the robust weights lose. The factor is at least 1e-6; NaN where JᵀJ is
    singular."""
    scale = CAUCHY_SCALE * threshold
    weights = _refine_weights(np.linalg.norm(residuals_Nd, axis=1), threshold)
    psi = weights[:, None] * residuals_Nd
    slope = weights[:, None] - 2 * residuals_Nd**2 * weights[:, None] ** 2 / scale**2
    count = residuals_Nd.size
    factor = float(np.sum(psi**2) / max(count - 6, 1) / max(np.mean(slope), 1e-3) ** 2)
    jacobian = jacobian_Nd6.reshape(-1, 6)
    with np.errstate(all="ignore"):
        try:
            return max(factor, 1e-6) * np.linalg.inv(jacobian.T @ jacobian)
        except np.linalg.LinAlgError:
            return np.full((6, 6), np.nan)


def _refine_weights(errors: np.ndarray | torch.Tensor, threshold: float) -> np.ndarray | torch.Tensor:
    """Cauchy weights of scale `CAUCHY_SCALE` x threshold for errors within the threshold, 0 beyond."""
    inside = errors <= threshold
    weights = 1.0 / (1.0 + (errors / (CAUCHY_SCALE * threshold)) ** 2)
    return weights * inside


def _kabsch(points_cam: torch.Tensor, coords: torch.Tensor,
            weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotations ...x3x3, positions ...x3) of the `world_from_cam` that maps points_cam (..., n, 3)
    onto coords (..., n, 3) with the least (weighted: weights (..., n) >= 0) squared error (Kabsch;
    batched over the leading axes)."""
    if weights is None:
        weights = torch.ones(points_cam.shape[:-1], dtype=points_cam.dtype)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    mean_cam = (weights[..., None] * points_cam).sum(dim=-2)
    mean_world = (weights[..., None] * coords).sum(dim=-2)
    cross = ((points_cam - mean_cam[..., None, :]) * weights[..., None]).transpose(-1, -2) @ (
        coords - mean_world[..., None, :])
    u, _, vt = torch.linalg.svd(cross)
    v, ut = vt.transpose(-1, -2), u.transpose(-1, -2)
    reflection = torch.ones_like(mean_cam)
    reflection[..., 2] = torch.where(torch.linalg.det(v @ ut) < 0, -1.0, 1.0)
    rotation = (v * reflection[..., None, :]) @ ut
    return rotation, mean_world - (rotation @ mean_cam[..., None])[..., 0]


def _solve_rgbd(coords: np.ndarray, points_cam: np.ndarray, pixels: np.ndarray, K: np.ndarray,
                index: np.ndarray, config: RansacConfig, seed: int) -> ScrPose:
    """RANSAC Kabsch over the cells `index` (finite coordinates and valid depth); module docstring.
    The hypotheses are scored in torch (float64, CPU), in the thread pool the network runs in: with
    numpy, its BLAS threads competed with the network's (5 -> 15 ms per forward on 2 cores)."""
    world, cam = torch.from_numpy(coords[index]), torch.from_numpy(points_cam[index])
    # Minimal sets of 3 cells (a repeated cell makes a degenerate hypothesis, which scores low).
    samples = torch.from_numpy(np.random.default_rng(seed).integers(0, len(index), (config.iterations, 3)))
    rotations, positions = _kabsch(cam[samples], world[samples])
    # |R c + p - x|² expanded into matrix products over (hypotheses, cells): 10x faster than the residuals.
    positions_in_cam = torch.einsum("hji,hj->hi", rotations, positions)  # Rᵀp
    squared = (cam.square().sum(dim=1) + world.square().sum(dim=1) + positions.square().sum(dim=1)[:, None]
               - 2 * positions @ world.T + 2 * positions_in_cam @ cam.T
               - 2 * rotations.reshape(-1, 9) @ (world[:, :, None] * cam[:, None, :]).reshape(-1, 9).T)
    counts = (squared <= config.threshold_m**2).sum(dim=1)
    best = int(counts.argmax())
    if counts[best] < config.min_inliers:
        raise PoseSolveError(f"no pose hypothesis has {config.min_inliers} inliers within "
                             f"{config.threshold_m} m ({int(counts[best])} found)")
    rotation, position = rotations[best], positions[best]
    errors = (cam @ rotation.T + position - world).norm(dim=1)
    for _ in range(REFINE_ITERATIONS):
        candidate = _kabsch(cam, world, _refine_weights(errors, config.threshold_m))
        candidate_errors = (cam @ candidate[0].T + candidate[1] - world).norm(dim=1)
        if int((candidate_errors <= config.threshold_m).sum()) < config.min_inliers:
            break
        (rotation, position), errors = candidate, candidate_errors
    inlier = errors <= config.threshold_m
    rotation_33, position_3, inlier_n = rotation.numpy(), position.numpy(), inlier.numpy()
    rotated = points_cam[index[inlier_n]] @ rotation_33.T
    residuals = rotated + position_3 - coords[index[inlier_n]]
    jacobian = np.zeros((len(rotated), 3, 6))
    jacobian[:, :, :3] = np.eye(3)
    x, y, z = rotated.T  # ∂r/∂δ of r = exp(δ) R p + position - coord: δ x Rp = -[Rp]x δ
    jacobian[:, 0, 4], jacobian[:, 0, 5] = z, -y
    jacobian[:, 1, 3], jacobian[:, 1, 5] = -z, x
    jacobian[:, 2, 3], jacobian[:, 2, 4] = y, -x
    covariance = _m_estimator_covariance(residuals, jacobian, config.threshold_m)
    rvec, _ = cv2.Rodrigues(rotation_33.T)
    return _result(coords, pixels, K, index, inlier_n, rvec, -rotation_33.T @ position_3, covariance)


def _result(coords: np.ndarray, pixels: np.ndarray, K: np.ndarray, index: np.ndarray, inlier: np.ndarray,
            rvec: np.ndarray, tvec: np.ndarray, covariance: np.ndarray) -> ScrPose:
    """The ScrPose of camera-from-world (rvec, tvec) with `covariance` over the published parameters;
    `inlier` is the mask over the candidate cells `index`."""
    count = int(inlier.sum())
    if not np.isfinite(covariance).all():
        raise PoseSolveError(f"the {count} inliers do not constrain the pose (degenerate configuration)")
    errors = _residuals(coords[index[inlier]], pixels[index[inlier]], K, rvec, tvec)
    position, rotation = _world_pose(rvec.reshape(3), tvec.reshape(3))
    mask = np.zeros(len(coords), bool)
    mask[index[inlier]] = True
    return ScrPose(position_3=position, quat_wxyz_4=matrix_to_quat(rotation),
                   covariance_66=0.5 * (covariance + covariance.T), inliers_N=mask,
                   inlier_ratio=count / len(index), rms_px=float(np.sqrt(np.mean(errors**2))))


def _refine_pnp(coords: np.ndarray, pixels: np.ndarray, K: np.ndarray, rvec: np.ndarray, tvec: np.ndarray,
                config: RansacConfig) -> tuple[np.ndarray, np.ndarray, Projection]:
    """OpenCV's (rvec, tvec) refined by Gauss-Newton on the Cauchy-weighted reprojection errors (module
    docstring); a step that would leave fewer than `min_inliers` cells within the threshold ends it.
    Returns the refined pose and its `_projection`."""
    projection = _projection(coords, pixels, K, rvec, tvec)
    for _ in range(REFINE_ITERATIONS):
        residuals, jacobian, errors = projection
        weights_2n = np.repeat(_refine_weights(errors, config.threshold_px), 2)
        try:
            step = np.linalg.solve(jacobian.T @ (jacobian * weights_2n[:, None]),
                                   jacobian.T @ (weights_2n * residuals.reshape(-1)))
        except np.linalg.LinAlgError:
            break
        candidate = rvec - step[:3], tvec - step[3:]
        candidate_projection = _projection(coords, pixels, K, *candidate)
        if (candidate_projection[2] <= config.threshold_px).sum() < config.min_inliers:
            break
        (rvec, tvec), projection = candidate, candidate_projection
    return rvec, tvec, projection


def solve_pose(coords_N3: np.ndarray, pixels_N2: np.ndarray, K_33: np.ndarray, config: RansacConfig,
               seed: int = 0, points_cam_N3: np.ndarray | None = None) -> ScrPose:
    """The pose of the camera that saw scene points `coords_N3` at `pixels_N2` (see the module
    docstring): from 3D-3D correspondences when `points_cam_N3` (each cell's depth point in the camera
    frame, metres; NaN or z <= 0 where the depth is invalid) is given and at least `min_inliers` cells
    have one, else by PnP. Non-finite coordinates are ignored. Raises PoseSolveError when no pose has
    `config.min_inliers` inliers. The RANSAC sampling is seeded by `seed`."""
    coords = np.asarray(coords_N3, np.float64).reshape(-1, 3)
    pixels = np.asarray(pixels_N2, np.float64).reshape(-1, 2)
    K = np.asarray(K_33, np.float64)
    finite = np.isfinite(coords).all(axis=1) & np.isfinite(pixels).all(axis=1)
    if finite.sum() < config.min_inliers:
        raise PoseSolveError(f"{int(finite.sum())} finite correspondences, fewer than the "
                             f"{config.min_inliers} a pose needs")
    if points_cam_N3 is not None:
        points_cam = np.asarray(points_cam_N3, np.float64).reshape(-1, 3)
        with np.errstate(invalid="ignore"):
            with_depth = finite & np.isfinite(points_cam).all(axis=1) & (points_cam[:, 2] > 0)
        if with_depth.sum() >= config.min_inliers:
            return _solve_rgbd(coords, points_cam, pixels, K, np.flatnonzero(with_depth), config, seed)
    index = np.flatnonzero(finite)
    cv2.setRNGSeed(int(seed) % (2**31))
    found, rvec, tvec, inliers = cv2.solvePnPRansac(
        coords[index], pixels[index], K, None, iterationsCount=config.iterations,
        reprojectionError=config.threshold_px, confidence=0.9999, flags=cv2.SOLVEPNP_AP3P)
    if not found or inliers is None or len(inliers) < config.min_inliers:
        raise PoseSolveError(f"no pose hypothesis has {config.min_inliers} inliers within "
                             f"{config.threshold_px} px ({0 if inliers is None else len(inliers)} found)")
    rvec, tvec, (residuals, jacobian, errors) = _refine_pnp(coords[index], pixels[index], K, rvec.reshape(3),
                                                            tvec.reshape(3), config)
    inlier = errors <= config.threshold_px
    if inlier.sum() < config.min_inliers:  # OpenCV's pose itself (refinement keeps min_inliers)
        raise PoseSolveError(f"no pose hypothesis has {config.min_inliers} inliers within "
                             f"{config.threshold_px} px ({int(inlier.sum())} found)")
    published = _published_jacobian(rvec.reshape(3), tvec.reshape(3))
    covariance_p = _m_estimator_covariance(residuals[inlier], jacobian.reshape(-1, 2, 6)[inlier],
                                           config.threshold_px)
    with np.errstate(all="ignore"):
        covariance = published @ covariance_p @ published.T
    return _result(coords, pixels, K, index, inlier, rvec, tvec, covariance)
