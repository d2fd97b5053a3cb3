"""Quaternions, rotations, rigid poses and pinhole projection, in numpy and in torch.

Conventions (the package's, see docs/design.md):

- Quaternions are (w, x, y, z), scalar first (transforms3d's order), with the Hamilton product:
  `quat_multiply(q1, q2)` is the rotation q2 followed by q1, so
  `quat_to_matrix(quat_multiply(q1, q2)) == quat_to_matrix(q1) @ quat_to_matrix(q2)`.
  q and -q are the same rotation and every function here treats them so. Functions that return an
  orientation return it canonical: unit norm and w >= 0 (`quat_normalize`); `quat_multiply` and
  `quat_conjugate` are plain algebra and do not canonicalise.
- Rotation matrices act on column vectors: `v_world = R_world_from_cam @ v_cam`.
- Poses are 4x4 homogeneous rigid transforms named for what they map: `world_from_cam` takes points
  in the camera frame to the world frame (`p_world = world_from_cam @ p_cam`), so its translation is
  the camera position in the world. `pose_compose(a_from_b, b_from_c) -> a_from_c`.
- Camera frame: OpenCV (x right, y down, z forward). Pinhole intrinsics are a 3x3 matrix
  K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]] in pixels. Pixel (u, v) is column u, row v, and its centre
  is at integer coordinates (u, v): the top-left pixel's centre is (0, 0).
- Rotation vectors (so(3) tangent vectors) are axis * angle in radians; `quat_exp` / `quat_log` map
  between them and unit quaternions. `quat_log` returns the shortest one (angle in [0, pi]).
- Units: metres and radians; degrees only where a name says `_deg`.
- Shapes are in names and docstrings (q_N4, points_N3, T_44); a leading `...` is any batch shape,
  and batch shapes of several arguments broadcast.

Numpy functions take array-likes, compute in float64 unless given another floating dtype, and raise
ValueError for a wrong shape or a zero-norm / non-finite quaternion. The torch versions carry a
`_torch` suffix and have the same semantics; they work on any device and floating dtype, are
differentiable with finite gradients at zero rotation, and never inspect values (no host
synchronisation), so a zero quaternion gives meaningless output instead of an error.

The formulas the two share are written once, in the private functions below, on "arrays" that are
either numpy arrays or torch tensors (`_xp` returns the module, numpy or torch, of the inputs).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

__all__ = [
    "angular_error_deg",
    "angular_error_deg_torch",
    "backproject_depth",
    "backproject_depth_torch",
    "is_rotation_matrix",
    "matrix_to_quat",
    "matrix_to_quat_torch",
    "pose_compose",
    "pose_compose_torch",
    "pose_from_position_quat",
    "pose_from_position_quat_torch",
    "pose_invert",
    "pose_invert_torch",
    "position_quat_from_pose",
    "position_quat_from_pose_torch",
    "project_points",
    "project_points_torch",
    "quat_conjugate",
    "quat_conjugate_torch",
    "quat_exp",
    "quat_exp_torch",
    "quat_log",
    "quat_log_torch",
    "quat_multiply",
    "quat_multiply_torch",
    "quat_normalize",
    "quat_normalize_torch",
    "quat_rotate",
    "quat_rotate_torch",
    "quat_to_matrix",
    "quat_to_matrix_torch",
    "transform_points",
    "transform_points_torch",
    "translation_error",
    "translation_error_torch",
]

# Below this angle-like magnitude (radians, or sin of the half angle) exp and log use their Taylor
# series; the first omitted term is below 1e-16 relative there, and the series has finite gradients
# at exactly zero where the closed forms divide 0 by 0.
_SMALL = 1e-4


# --------------------------------------------------------------------------------------------------
# Shared kernels: numpy arrays or torch tensors in, the same type out. No validation here.
# --------------------------------------------------------------------------------------------------


def _xp(x: Any) -> Any:
    """The array module of `x`: torch for tensors, numpy otherwise."""
    return torch if isinstance(x, torch.Tensor) else np


def _cat(arrays: list[Any], axis: int) -> Any:
    if isinstance(arrays[0], torch.Tensor):
        return torch.cat(arrays, dim=axis)
    return np.concatenate(arrays, axis=axis)


def _safe_sqrt(x: Any) -> Any:
    """sqrt(x) for x >= 0, with gradient 0 (not inf or NaN) at x == 0."""
    xp = _xp(x)
    positive = x > 0
    return xp.where(positive, xp.sqrt(xp.where(positive, x, 1.0)), 0.0)


def _canonical_sign(q: Any) -> Any:
    """q or -q, whichever has w >= 0."""
    return _xp(q).where(q[..., :1] < 0, -q, q)


def _cross(a: Any, b: Any) -> Any:
    """Cross product over the last axis (size 3); batch shapes broadcast."""
    return _xp(a).stack(
        [
            a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
            a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
            a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0],
        ],
        -1,
    )


def _quat_multiply(q1: Any, q2: Any) -> Any:
    w1, x1, y1, z1 = (q1[..., i] for i in range(4))
    w2, x2, y2, z2 = (q2[..., i] for i in range(4))
    return _xp(q1).stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        -1,
    )


def _quat_conjugate(q: Any) -> Any:
    return _xp(q).stack([q[..., 0], -q[..., 1], -q[..., 2], -q[..., 3]], -1)


def _quat_rotate(q_unit: Any, v: Any) -> Any:
    """R(q) v for unit q, as v + 2w (u x v) + 2 u x (u x v) with u the vector part."""
    u = q_unit[..., 1:]
    t = 2.0 * _cross(u, v)
    return v + q_unit[..., :1] * t + _cross(u, t)


def _quat_to_matrix(q_unit: Any) -> Any:
    xp = _xp(q_unit)
    w, x, y, z = (q_unit[..., i] for i in range(4))
    return xp.stack(
        [
            xp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            xp.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            xp.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def _quat_exp(rotvec: Any) -> Any:
    """Canonical unit quaternion (cos(a/2), sin(a/2) * axis) of rotation vector axis * a."""
    xp = _xp(rotvec)
    theta_sq = xp.sum(rotvec * rotvec, -1)
    small = theta_sq < _SMALL**2
    theta = xp.sqrt(xp.where(small, 1.0, theta_sq))  # the 1.0 keeps the unused branch finite
    w = xp.where(small, 1.0 - theta_sq / 8.0, xp.cos(0.5 * theta))
    k = xp.where(small, 0.5 - theta_sq / 48.0, xp.sin(0.5 * theta) / theta)  # sin(a/2) / a
    q = xp.stack([w, k * rotvec[..., 0], k * rotvec[..., 1], k * rotvec[..., 2]], -1)
    return _canonical_sign(q)


def _quat_log(q_canonical: Any) -> Any:
    """Rotation vector of a unit quaternion with w >= 0 (so the angle 2*atan2(|v|, w) is <= pi)."""
    xp = _xp(q_canonical)
    w = q_canonical[..., 0]
    v = q_canonical[..., 1:]
    s_sq = xp.sum(v * v, -1)
    small = s_sq < _SMALL**2
    s = xp.sqrt(xp.where(small, 1.0, s_sq))  # placeholders keep the unused branches finite,
    w_small = xp.where(small, w, 1.0)  # so their gradients are not 0 * inf = NaN
    # angle / |v| = 2 atan(s / w) / s = 2 / w - 2 s^2 / (3 w^3) + O(s^4)
    ratio = xp.where(small, 2.0 / w_small - (2.0 / 3.0) * s_sq / w_small**3, 2.0 * xp.arctan2(s, w) / s)
    return ratio[..., None] * v


def _angular_error_deg(q1_unit: Any, q2_unit: Any) -> Any:
    xp = _xp(q1_unit)
    r = _quat_multiply(_quat_conjugate(q1_unit), q2_unit)
    s = _safe_sqrt(xp.sum(r[..., 1:] * r[..., 1:], -1))
    # |w| makes q and -q equal; atan2 keeps tiny angles accurate where acos(|w|) would lose them.
    return (360.0 / math.pi) * xp.arctan2(s, xp.abs(r[..., 0]))


def _pose_from_rotation_translation(R: Any, t: Any) -> Any:
    xp = _xp(R)
    batch = xp.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    top = _cat([xp.broadcast_to(R, (*batch, 3, 3)), xp.broadcast_to(t[..., None], (*batch, 3, 1))], -1)
    bottom = xp.zeros_like(top[..., :1, :])
    bottom[..., 3] = 1.0
    return _cat([top, bottom], -2)


def _pose_invert(T: Any) -> Any:
    R_inv = T[..., :3, :3].swapaxes(-1, -2)
    top = _cat([R_inv, -(R_inv @ T[..., :3, 3:4])], -1)
    return _cat([top, T[..., 3:4, :]], -2)


def _transform_points(T: Any, points: Any) -> Any:
    return points @ T[..., :3, :3].swapaxes(-1, -2) + T[..., None, :3, 3]


def _project_points(points_cam: Any, K: Any) -> tuple[Any, Any]:
    depth = points_cam[..., 2]
    uv = (points_cam @ K[..., :2, :].swapaxes(-1, -2)) / depth[..., None]
    return uv, depth


def _backproject_depth(depth: Any, K: Any, u: Any, v: Any) -> Any:
    """`u`, `v`: the (H, W) column and row coordinates of every pixel, in depth's type."""
    xp = _xp(depth)
    fx, skew, cx = (K[..., 0, i, None, None] for i in range(3))
    fy, cy = K[..., 1, 1, None, None], K[..., 1, 2, None, None]
    valid = xp.isfinite(depth) & (depth > 0)
    z = xp.where(valid, depth, float("nan"))
    y = (v - cy) / fy  # normalised image coordinates (K^-1 [u, v, 1]), then scaled by depth
    x = (u - cx - skew * y) / fx
    xz = x * z
    return xp.stack([xz, y * z, xp.broadcast_to(z, xz.shape)], -1)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _check_shape(x: Any, name: str, tail: tuple[int, ...]) -> None:
    if x.ndim < max(len(tail), 1) or tuple(x.shape[x.ndim - len(tail) :]) != tail:
        want = ", ".join(["..."] + [str(n) for n in tail])
        raise ValueError(f"{name} must have shape ({want}), got {tuple(x.shape)}")


def _as_float_array(x: ArrayLike, name: str, tail: tuple[int, ...]) -> np.ndarray:
    """`x` as a numpy array of a floating dtype (float64 unless already floating), shape-checked."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    _check_shape(x, name, tail)
    return x


def _check_float_tensor(x: torch.Tensor, name: str, tail: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    _check_shape(x, name, tail)
    return x


# --------------------------------------------------------------------------------------------------
# numpy
# --------------------------------------------------------------------------------------------------


def quat_normalize(q: ArrayLike) -> np.ndarray:
    """Canonical unit quaternion: q_4 or q_N4 / q_...4 (w, x, y, z) scaled to unit norm, w >= 0.

    At w == 0 both signs are the same rotation and the given one is kept. Raises ValueError for a
    zero-norm or non-finite quaternion.
    """
    q = _as_float_array(q, "q", (4,))
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.all(np.isfinite(norm) & (norm > 0)):
        raise ValueError("quaternion with zero or non-finite norm")
    return _canonical_sign(q / norm)


def quat_multiply(q1: ArrayLike, q2: ArrayLike) -> np.ndarray:
    """Hamilton product q1 * q2 of (..., 4) quaternions (w, x, y, z): rotation q2, then q1.

    Not normalised or sign-canonicalised (transforms3d.quaternions.qmult, batched).
    """
    return _quat_multiply(_as_float_array(q1, "q1", (4,)), _as_float_array(q2, "q2", (4,)))


def quat_conjugate(q: ArrayLike) -> np.ndarray:
    """Conjugate (w, -x, -y, -z) of (..., 4) quaternions; the inverse rotation for unit q."""
    return _quat_conjugate(_as_float_array(q, "q", (4,)))


def quat_rotate(q: ArrayLike, v: ArrayLike) -> np.ndarray:
    """Rotate vectors v_...3 (e.g. v_N3) by quaternions q_...4 (normalised first): R(q) @ v."""
    return _quat_rotate(quat_normalize(q), _as_float_array(v, "v", (3,)))


def quat_to_matrix(q: ArrayLike) -> np.ndarray:
    """Rotation matrices R_...33 of quaternions q_...4 (w, x, y, z), normalised first."""
    return _quat_to_matrix(quat_normalize(q))


def matrix_to_quat(R: ArrayLike) -> np.ndarray:
    """Canonical quaternions q_...4 (w, x, y, z; unit, w >= 0) of rotation matrices R_...33.

    Bar-Itzhack's method, as transforms3d.quaternions.mat2quat but batched: the eigenvector of the
    largest eigenvalue of a symmetric 4x4 matrix. For a matrix that is not exactly orthonormal it
    gives the quaternion of the nearest rotation.
    """
    R = _as_float_array(R, "R", (3, 3))
    if not np.all(np.isfinite(R)):
        raise ValueError("rotation matrix with non-finite entries")
    m = R.reshape(*R.shape[:-2], 9)
    qxx, qyx, qzx, qxy, qyy, qzy, qxz, qyz, qzz = (m[..., i] for i in range(9))
    K = np.zeros((*R.shape[:-2], 4, 4), dtype=R.dtype)  # lower triangle only; eigh reads that
    K[..., 0, 0] = qxx - qyy - qzz
    K[..., 1, 0] = qyx + qxy
    K[..., 1, 1] = qyy - qxx - qzz
    K[..., 2, 0] = qzx + qxz
    K[..., 2, 1] = qzy + qyz
    K[..., 2, 2] = qzz - qxx - qyy
    K[..., 3, 0] = qyz - qzy
    K[..., 3, 1] = qzx - qxz
    K[..., 3, 2] = qxy - qyx
    K[..., 3, 3] = qxx + qyy + qzz
    _, vectors = np.linalg.eigh(K / 3.0, UPLO="L")  # eigenvalues ascending: the last is the largest
    q_xyzw = vectors[..., :, -1]
    return quat_normalize(q_xyzw[..., [3, 0, 1, 2]])


def quat_log(q: ArrayLike) -> np.ndarray:
    """Rotation vectors rotvec_...3 (axis * angle, radians, angle in [0, pi]) of quaternions q_...4.

    q and -q give the same (shortest) rotation vector.
    """
    return _quat_log(quat_normalize(q))


def quat_exp(rotvec: ArrayLike) -> np.ndarray:
    """Canonical quaternions q_...4 (unit, w >= 0) of rotation vectors rotvec_...3 (axis * angle, rad).

    quat_log(quat_exp(r)) == r for |r| < pi; beyond, the shorter equivalent rotation comes back.
    """
    return _quat_exp(_as_float_array(rotvec, "rotvec", (3,)))


def pose_from_position_quat(t: ArrayLike, q: ArrayLike) -> np.ndarray:
    """4x4 pose T_...44 with translation t_...3 (metres) and rotation q_...4 (w, x, y, z).

    For a camera, t is its position and q its orientation in the world: T is world_from_cam.
    """
    return _pose_from_rotation_translation(quat_to_matrix(q), _as_float_array(t, "t", (3,)))


def position_quat_from_pose(T: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(t_...3, q_...4) of 4x4 poses T_...44: the translation and the canonical quaternion."""
    T = _as_float_array(T, "T", (4, 4))
    return T[..., :3, 3].copy(), matrix_to_quat(T[..., :3, :3])


def pose_compose(a_from_b: ArrayLike, b_from_c: ArrayLike) -> np.ndarray:
    """a_from_c = a_from_b @ b_from_c for 4x4 poses (..., 4, 4)."""
    return _as_float_array(a_from_b, "a_from_b", (4, 4)) @ _as_float_array(b_from_c, "b_from_c", (4, 4))


def pose_invert(T: ArrayLike) -> np.ndarray:
    """b_from_a of rigid 4x4 poses a_from_b (..., 4, 4): [R^T, -R^T t; 0 0 0 1]."""
    return _pose_invert(_as_float_array(T, "T", (4, 4)))


def angular_error_deg(q1: ArrayLike, q2: ArrayLike) -> np.ndarray:
    """Rotation angle in degrees, in [0, 180], between orientations q1_...4 and q2_...4.

    2 * atan2(|vec(r)|, |w(r)|) of the relative quaternion r = conj(q1) * q2: q and -q are the same
    rotation (error 0), and angles down to ~1e-12 rad keep full relative precision.
    """
    return _angular_error_deg(quat_normalize(q1), quat_normalize(q2))


def translation_error(t1: ArrayLike, t2: ArrayLike) -> np.ndarray:
    """Euclidean distance (metres) between positions t1_...3 and t2_...3."""
    return np.linalg.norm(_as_float_array(t1, "t1", (3,)) - _as_float_array(t2, "t2", (3,)), axis=-1)


def transform_points(T: ArrayLike, points: ArrayLike) -> np.ndarray:
    """Apply 4x4 poses T_...44 (a_from_b) to points_...N3 in frame b; returns points_...N3 in frame a.

    Points need a point axis: a single point is (1, 3).
    """
    return _transform_points(_as_float_array(T, "T", (4, 4)), _as_float_array(points, "points", (3,)))


def project_points(points_cam: ArrayLike, K: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of points_cam_...N3 (OpenCV camera frame, metres) with K_...33.

    Returns (uv_...N2 in pixels, column then row, pixel centres at integers; depth_...N = z in
    metres). uv is meaningless for depth <= 0 (inf or NaN at 0): mask with depth > 0.
    """
    points_cam = _as_float_array(points_cam, "points_cam", (3,))
    with np.errstate(divide="ignore", invalid="ignore"):
        return _project_points(points_cam, _as_float_array(K, "K", (3, 3)))


def backproject_depth(depth: ArrayLike, K: ArrayLike) -> np.ndarray:
    """Camera-frame points points_cam_...HW3 (OpenCV frame, metres) of a depth image depth_...HW.

    depth is the z coordinate in metres (not the distance along the ray); pixel (u, v) is column u,
    row v with its centre at (u, v), so project_points gives back (u, v). Zero, negative or non-finite
    depth gives NaN points. K_...33 is a pinhole matrix with last row (0, 0, 1).
    """
    depth = _as_float_array(depth, "depth", ())
    if depth.ndim < 2:
        raise ValueError(f"depth must have shape (..., H, W), got {depth.shape}")
    K = _as_float_array(K, "K", (3, 3))
    height, width = depth.shape[-2:]
    rows, cols = np.arange(height, dtype=depth.dtype), np.arange(width, dtype=depth.dtype)
    v, u = np.meshgrid(rows, cols, indexing="ij")
    return _backproject_depth(depth, K, u, v)


def is_rotation_matrix(R: ArrayLike, tol: float = 1e-6) -> bool | np.ndarray:
    """Whether R_33 (or each of R_...33) is a rotation: |R^T R - I| <= tol entrywise, |det R - 1| <= tol.

    A bool for a single matrix, a bool array of the batch shape otherwise.
    """
    R = _as_float_array(R, "R", (3, 3))
    orthonormal = np.max(np.abs(R.swapaxes(-1, -2) @ R - np.eye(3)), axis=(-2, -1)) <= tol
    proper = np.abs(np.linalg.det(R) - 1.0) <= tol
    ok = orthonormal & proper
    return bool(ok) if ok.ndim == 0 else ok


# --------------------------------------------------------------------------------------------------
# torch: same semantics, any device and floating dtype, differentiable
# --------------------------------------------------------------------------------------------------


def quat_normalize_torch(q: torch.Tensor) -> torch.Tensor:
    """Canonical unit quaternions q_...4 (w, x, y, z): unit norm, w >= 0. A zero q stays zero."""
    _check_float_tensor(q, "q", (4,))
    norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return _canonical_sign(q / norm.clamp_min(torch.finfo(q.dtype).tiny))


def quat_multiply_torch(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Hamilton product q1 * q2 of (..., 4) quaternions: rotation q2, then q1. Not canonicalised."""
    return _quat_multiply(_check_float_tensor(q1, "q1", (4,)), _check_float_tensor(q2, "q2", (4,)))


def quat_conjugate_torch(q: torch.Tensor) -> torch.Tensor:
    """Conjugate (w, -x, -y, -z) of (..., 4) quaternions."""
    return _quat_conjugate(_check_float_tensor(q, "q", (4,)))


def quat_rotate_torch(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors v_...3 by quaternions q_...4 (normalised first): R(q) @ v."""
    return _quat_rotate(quat_normalize_torch(q), _check_float_tensor(v, "v", (3,)))


def quat_to_matrix_torch(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices R_...33 of quaternions q_...4 (w, x, y, z), normalised first."""
    return _quat_to_matrix(quat_normalize_torch(q))


def matrix_to_quat_torch(R: torch.Tensor) -> torch.Tensor:
    """Canonical quaternions q_...4 (unit, w >= 0) of rotation matrices R_...33.

    pytorch3d's method: 2|w|, 2|x|, 2|y|, 2|z| from the diagonal, four candidate quaternions from the
    off-diagonal sums and differences each divided by one of them, and the candidate whose divisor is
    largest (best conditioned) is taken. Differentiable; expects a rotation matrix (up to rounding).
    """
    _check_float_tensor(R, "R", (3, 3))
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = R.reshape(*R.shape[:-2], 9).unbind(-1)
    q_abs = _safe_sqrt(
        torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    )
    # Row i is the quaternion times 4 * q_i (its i-th entry is q_abs_i^2 = 4 q_i^2).
    candidates = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], -1),
        ],
        -2,
    )
    # The floor only guards the rows that are not chosen (the chosen divisor is >= 1).
    candidates = candidates / (2.0 * q_abs[..., None].clamp_min(0.1))
    best = q_abs.argmax(dim=-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    return quat_normalize_torch(q)


def quat_log_torch(q: torch.Tensor) -> torch.Tensor:
    """Shortest rotation vectors rotvec_...3 (axis * angle, rad) of q_...4; finite gradient at 0."""
    return _quat_log(quat_normalize_torch(q))


def quat_exp_torch(rotvec: torch.Tensor) -> torch.Tensor:
    """Canonical quaternions q_...4 of rotation vectors rotvec_...3; finite gradient at zero."""
    return _quat_exp(_check_float_tensor(rotvec, "rotvec", (3,)))


def pose_from_position_quat_torch(t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """4x4 poses T_...44 with translation t_...3 (metres) and rotation q_...4 (e.g. world_from_cam)."""
    return _pose_from_rotation_translation(quat_to_matrix_torch(q), _check_float_tensor(t, "t", (3,)))


def position_quat_from_pose_torch(T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_...3, q_...4) of 4x4 poses T_...44: the translation and the canonical quaternion."""
    _check_float_tensor(T, "T", (4, 4))
    return T[..., :3, 3].clone(), matrix_to_quat_torch(T[..., :3, :3])


def pose_compose_torch(a_from_b: torch.Tensor, b_from_c: torch.Tensor) -> torch.Tensor:
    """a_from_c = a_from_b @ b_from_c for 4x4 poses (..., 4, 4)."""
    _check_float_tensor(a_from_b, "a_from_b", (4, 4))
    return a_from_b @ _check_float_tensor(b_from_c, "b_from_c", (4, 4))


def pose_invert_torch(T: torch.Tensor) -> torch.Tensor:
    """b_from_a of rigid 4x4 poses a_from_b (..., 4, 4)."""
    return _pose_invert(_check_float_tensor(T, "T", (4, 4)))


def angular_error_deg_torch(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Rotation angle (degrees, [0, 180]) between q1_...4 and q2_...4; q and -q are equal.

    Differentiable; at zero error the gradient is 0 (a subgradient) instead of NaN.
    """
    return _angular_error_deg(quat_normalize_torch(q1), quat_normalize_torch(q2))


def translation_error_torch(t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """Euclidean distance (metres) between positions t1_...3 and t2_...3."""
    diff = _check_float_tensor(t1, "t1", (3,)) - _check_float_tensor(t2, "t2", (3,))
    return _safe_sqrt((diff * diff).sum(-1))


def transform_points_torch(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply 4x4 poses T_...44 (a_from_b) to points_...N3 in frame b; returns points_...N3 in frame a."""
    return _transform_points(_check_float_tensor(T, "T", (4, 4)), _check_float_tensor(points, "points", (3,)))


def project_points_torch(points_cam: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(uv_...N2 pixels, depth_...N metres) of points_cam_...N3 with K_...33; mask depth > 0.

    No clamping of the depth: a loss that needs it (reprojection) clamps before calling.
    """
    _check_float_tensor(points_cam, "points_cam", (3,))
    return _project_points(points_cam, _check_float_tensor(K, "K", (3, 3)))


def backproject_depth_torch(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points points_cam_...HW3 of depth_...HW (z in metres); invalid depth -> NaN."""
    _check_float_tensor(depth, "depth", ())
    if depth.ndim < 2:
        raise ValueError(f"depth must have shape (..., H, W), got {tuple(depth.shape)}")
    _check_float_tensor(K, "K", (3, 3))
    height, width = depth.shape[-2:]
    rows = torch.arange(height, dtype=depth.dtype, device=depth.device)
    cols = torch.arange(width, dtype=depth.dtype, device=depth.device)
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    return _backproject_depth(depth, K, u, v)


def quat_average(quats_N4: ArrayLike) -> np.ndarray:
    """Average orientation of unit quaternions (w, x, y, z) as a canonical quaternion (4,), w >= 0.

    Markley et al.'s eigenvector method: the eigenvector of the largest eigenvalue of sum q q^T,
    which ignores the signs of the inputs (q and -q count the same).
    """
    q = quat_normalize(np.asarray(quats_N4, dtype=np.float64).reshape(-1, 4))
    if len(q) == 0:
        raise ValueError("quat_average needs at least one quaternion")
    _, vectors = np.linalg.eigh(q.T @ q)
    return quat_normalize(vectors[:, -1])


def quat_average_torch(quat_BN4: torch.Tensor) -> torch.Tensor:
    """Mean rotation of N unit quaternions per row, quat_B4 with w >= 0 (Markley et al. 2007).

    The eigenvector of the largest eigenvalue of Σ q qᵀ: the rotation minimising the summed squared
    chordal distance; q and -q contribute the same, so no hemisphere alignment is needed.
    """
    moments_B44 = quat_BN4.transpose(-1, -2) @ quat_BN4
    _, vectors = torch.linalg.eigh(moments_B44)
    mean = vectors[..., :, -1]
    return torch.where(mean[..., :1] < 0, -mean, mean)
