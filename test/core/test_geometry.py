"""core/geometry.py: transforms3d agreement, round trips, numpy/torch agreement,
gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transforms3d.axangles as taa
import transforms3d.quaternions as tq

import posenet_ros.core.geometry as g

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


def random_quats(rng: np.random.Generator, n: int) -> np.ndarray:
    """n uniformly random rotations as canonical quaternions, q_N4."""
    return g.quat_normalize(rng.normal(size=(n, 4)))


def random_rotvecs(rng: np.random.Generator, n: int, max_angle: float = math.pi - 1e-3) -> np.ndarray:
    """n rotation vectors with random axes and angles in [0, max_angle), rotvec_N3."""
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    return axes * rng.uniform(0.0, max_angle, size=(n, 1))


def random_poses(rng: np.random.Generator, n: int) -> np.ndarray:
    return g.pose_from_position_quat(rng.normal(scale=3.0, size=(n, 3)), random_quats(rng, n))


def t(x: np.ndarray, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


K_VGA = np.array([[525.0, 0.0, 319.5], [0.0, 520.0, 239.5], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------------------------
# numpy, against transforms3d
# ----------------------------------------------------------------------------------------------


def test_quat_normalize_unit_norm_and_positive_w() -> None:
    rng = np.random.default_rng(0)
    q_raw = rng.normal(scale=5.0, size=(100, 4))
    q = g.quat_normalize(q_raw)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, rtol=0, atol=1e-15)
    assert np.all(q[:, 0] >= 0)
    # Same rotation: q is +-q_raw / |q_raw|.
    sign = np.sign(q_raw[:, :1])
    np.testing.assert_allclose(q, sign * q_raw / np.linalg.norm(q_raw, axis=-1, keepdims=True), atol=1e-15)
    np.testing.assert_allclose(g.quat_normalize([-2.0, 0.0, 0.0, 0.0]), [1.0, 0.0, 0.0, 0.0])
    assert g.quat_normalize(np.array([1, 0, 0, 0])).dtype == np.float64
    assert g.quat_normalize(np.array([1, 0, 0, 0], dtype=np.float32)).dtype == np.float32


def test_quat_normalize_rejects_zero_and_bad_shape() -> None:
    with pytest.raises(ValueError, match="norm"):
        g.quat_normalize([[1.0, 0, 0, 0], [0.0, 0, 0, 0]])
    with pytest.raises(ValueError, match="norm"):
        g.quat_normalize([np.nan, 0, 0, 0])
    with pytest.raises(ValueError, match="shape"):
        g.quat_normalize([1.0, 0.0, 0.0])


def test_quat_multiply_conjugate_rotate_match_transforms3d() -> None:
    rng = np.random.default_rng(1)
    q1, q2 = random_quats(rng, 50), random_quats(rng, 50)
    v = rng.normal(size=(50, 3))
    np.testing.assert_allclose(
        g.quat_multiply(q1, q2), [tq.qmult(a, b) for a, b in zip(q1, q2, strict=True)], atol=1e-15
    )
    np.testing.assert_allclose(g.quat_conjugate(q1), [tq.qconjugate(a) for a in q1], atol=0)
    np.testing.assert_allclose(
        g.quat_rotate(q1, v), [tq.rotate_vector(b, a) for a, b in zip(q1, v, strict=True)], atol=1e-14
    )
    # Broadcasting: one quaternion, many vectors.
    np.testing.assert_allclose(g.quat_rotate(q1[0], v), [tq.rotate_vector(b, q1[0]) for b in v], atol=1e-14)


def test_quat_to_matrix_and_back_match_transforms3d() -> None:
    rng = np.random.default_rng(2)
    q = random_quats(rng, 100)
    R = g.quat_to_matrix(q)
    np.testing.assert_allclose(R, [tq.quat2mat(a) for a in q], atol=1e-15)
    assert np.all(g.is_rotation_matrix(R, tol=1e-12))
    expected = np.array([tq.mat2quat(m) for m in R])
    expected *= np.where(expected[:, :1] < 0, -1.0, 1.0)
    np.testing.assert_allclose(g.matrix_to_quat(R), expected, atol=1e-14)
    np.testing.assert_allclose(g.matrix_to_quat(R), q, atol=1e-14)


def test_quat_exp_log_match_transforms3d() -> None:
    rng = np.random.default_rng(3)
    rotvec = random_rotvecs(rng, 100)
    angles = np.linalg.norm(rotvec, axis=-1)
    expected = [tq.axangle2quat(r / a, a) for r, a in zip(rotvec, angles, strict=True)]
    np.testing.assert_allclose(g.quat_exp(rotvec), expected, atol=1e-15)
    q = random_quats(rng, 100)
    axes_angles = [tq.quat2axangle(a) for a in q]
    np.testing.assert_allclose(g.quat_log(q), [axis * angle for axis, angle in axes_angles], atol=1e-14)
    R = np.array([taa.axangle2mat(r / a, a) for r, a in zip(rotvec, angles, strict=True)])
    np.testing.assert_allclose(g.quat_to_matrix(g.quat_exp(rotvec)), R, atol=1e-14)


def test_quat_to_matrix_matches_hamilton_product_order() -> None:
    rng = np.random.default_rng(4)
    q1, q2 = random_quats(rng, 20), random_quats(rng, 20)
    np.testing.assert_allclose(
        g.quat_to_matrix(g.quat_multiply(q1, q2)), g.quat_to_matrix(q1) @ g.quat_to_matrix(q2), atol=1e-14
    )


# ----------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------


def test_matrix_quat_round_trips_including_half_turns() -> None:
    rng = np.random.default_rng(5)
    q = random_quats(rng, 200)
    np.testing.assert_allclose(g.matrix_to_quat(g.quat_to_matrix(q)), q, atol=1e-14)
    # Half turns (w = 0) are the sign-ambiguous case: compare matrices.
    axes = rng.normal(size=(20, 3))
    half_turns = g.quat_exp(math.pi * axes / np.linalg.norm(axes, axis=-1, keepdims=True))
    R = g.quat_to_matrix(half_turns)
    np.testing.assert_allclose(g.quat_to_matrix(g.matrix_to_quat(R)), R, atol=1e-14)
    np.testing.assert_allclose(g.quat_to_matrix_torch(g.matrix_to_quat_torch(t(R))).numpy(), R, atol=1e-14)


def test_matrix_to_quat_of_noisy_matrix_is_nearest_rotation() -> None:
    rng = np.random.default_rng(6)
    q = random_quats(rng, 10)
    noisy = g.quat_to_matrix(q) + rng.normal(scale=1e-7, size=(10, 3, 3))
    np.testing.assert_allclose(g.angular_error_deg(g.matrix_to_quat(noisy), q), 0.0, atol=1e-4)


def test_log_exp_round_trips() -> None:
    rng = np.random.default_rng(7)
    rotvec = random_rotvecs(rng, 200)
    rotvec[:5] *= 1e-9  # near zero
    rotvec[5] = 0.0
    np.testing.assert_allclose(g.quat_log(g.quat_exp(rotvec)), rotvec, rtol=0, atol=1e-13)
    q = random_quats(rng, 200)
    np.testing.assert_allclose(g.quat_exp(g.quat_log(q)), q, atol=1e-14)
    assert np.all(np.linalg.norm(g.quat_log(q), axis=-1) <= math.pi + 1e-12)


def test_exp_beyond_pi_gives_the_shorter_rotation() -> None:
    axis = np.array([0.0, 0.6, 0.8])
    q = g.quat_exp(1.5 * math.pi * axis)
    assert q[0] >= 0
    np.testing.assert_allclose(g.quat_log(q), -0.5 * math.pi * axis, atol=1e-14)


def test_small_angle_accuracy() -> None:
    rng = np.random.default_rng(8)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    for angle in [1e-6, 1e-9, 3e-5, 2e-4]:
        rotvec = angle * axis
        q = g.quat_exp(rotvec)
        np.testing.assert_allclose(g.quat_log(q), rotvec, rtol=1e-12)
        np.testing.assert_allclose(g.quat_log_torch(t(q)).numpy(), rotvec, rtol=1e-12)
        # Relative to a random (not identity) orientation as well.
        q0 = random_quats(rng, 1)[0]
        q1 = g.quat_multiply(q0, q)
        expected_deg = math.degrees(angle)
        assert g.angular_error_deg(q0, q1) == pytest.approx(expected_deg, rel=1e-7)
        assert g.angular_error_deg_torch(t(q0), t(q1)).item() == pytest.approx(expected_deg, rel=1e-7)
    # What acos would give at 1e-6 rad: visibly wrong, so the test above can tell the difference.
    q = g.quat_exp(1e-6 * axis)
    assert abs(math.degrees(2 * math.acos(min(1.0, q[0]))) - math.degrees(1e-6)) > 1e-9


def test_pose_compose_with_inverse_is_identity() -> None:
    rng = np.random.default_rng(9)
    T = random_poses(rng, 50)
    eye = np.broadcast_to(np.eye(4), T.shape)
    np.testing.assert_allclose(g.pose_compose(T, g.pose_invert(T)), eye, atol=1e-14)
    np.testing.assert_allclose(g.pose_compose(g.pose_invert(T), T), eye, atol=1e-14)
    np.testing.assert_allclose(g.pose_invert(T), np.linalg.inv(T), atol=1e-14)


def test_pose_compose_order_and_transform_points() -> None:
    rng = np.random.default_rng(10)
    a_from_b, b_from_c = random_poses(rng, 1)[0], random_poses(rng, 1)[0]
    points_c = rng.normal(size=(30, 3))
    a_from_c = g.pose_compose(a_from_b, b_from_c)
    np.testing.assert_allclose(
        g.transform_points(a_from_c, points_c),
        g.transform_points(a_from_b, g.transform_points(b_from_c, points_c)),
        atol=1e-13,
    )
    homogeneous = np.concatenate([points_c, np.ones((30, 1))], axis=-1)
    np.testing.assert_allclose(
        g.transform_points(a_from_c, points_c), (homogeneous @ a_from_c.T)[:, :3], atol=1e-13
    )


def test_pose_position_quat_round_trip_and_camera_position() -> None:
    rng = np.random.default_rng(11)
    position = rng.normal(size=(20, 3))
    q = random_quats(rng, 20)
    world_from_cam = g.pose_from_position_quat(position, q)
    assert world_from_cam.shape == (20, 4, 4)
    np.testing.assert_allclose(world_from_cam[:, 3], np.broadcast_to([0.0, 0.0, 0.0, 1.0], (20, 4)))
    t_back, q_back = g.position_quat_from_pose(world_from_cam)
    np.testing.assert_allclose(t_back, position, atol=0)
    np.testing.assert_allclose(q_back, q, atol=1e-14)
    # The camera centre (origin of the camera frame) lands at the position in the world.
    origin = np.zeros((1, 3))
    np.testing.assert_allclose(g.transform_points(world_from_cam[3], origin)[0], position[3], atol=1e-15)
    # A single pose from single inputs.
    assert g.pose_from_position_quat([1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 0.0]).shape == (4, 4)


def test_project_known_point_and_behind_camera() -> None:
    uv, depth = g.project_points([[0.0, 0.0, 2.0], [1.0, -0.5, 2.0]], K_VGA)
    np.testing.assert_allclose(uv, [[319.5, 239.5], [319.5 + 525.0 / 2, 239.5 - 520.0 / 4]])
    np.testing.assert_allclose(depth, [2.0, 2.0])
    _, depth = g.project_points([[0.0, 0.0, -1.0]], K_VGA)
    assert depth[0] < 0


def test_project_of_backproject_is_the_pixel_grid() -> None:
    rng = np.random.default_rng(12)
    height, width = 6, 8
    depth = rng.uniform(0.5, 8.0, size=(height, width))
    K = K_VGA.copy()
    K[0, 1] = 0.7  # skew
    points = g.backproject_depth(depth, K)
    assert points.shape == (height, width, 3)
    np.testing.assert_allclose(points[..., 2], depth, atol=0)
    uv, z = g.project_points(points.reshape(-1, 3), K)
    v, u = np.mgrid[:height, :width]
    np.testing.assert_allclose(uv.reshape(height, width, 2), np.stack([u, v], -1), rtol=0, atol=1e-9)
    np.testing.assert_allclose(z.reshape(height, width), depth)
    # Pixel (u=2, v=1) centre with a pinhole (no skew) K: x = (2 - cx) / fx * d.
    p = g.backproject_depth(depth, K_VGA)[1, 2]
    np.testing.assert_allclose(
        p, [(2 - 319.5) / 525.0 * depth[1, 2], (1 - 239.5) / 520.0 * depth[1, 2], depth[1, 2]]
    )


def test_backproject_invalid_depth_is_nan() -> None:
    depth = np.full((3, 4), 2.0)
    depth[0, 0], depth[1, 1], depth[2, 2], depth[2, 3] = 0.0, np.nan, np.inf, -1.0
    points = g.backproject_depth(depth, K_VGA)
    invalid = np.zeros((3, 4), dtype=bool)
    invalid[0, 0] = invalid[1, 1] = invalid[2, 2] = invalid[2, 3] = True
    assert np.all(np.isnan(points[invalid]))
    assert np.all(np.isfinite(points[~invalid]))
    points_t = g.backproject_depth_torch(t(depth), t(K_VGA)).numpy()
    np.testing.assert_array_equal(np.isnan(points_t), np.isnan(points))


def test_backproject_batched_depth_and_intrinsics() -> None:
    rng = np.random.default_rng(13)
    depth = rng.uniform(1.0, 3.0, size=(2, 4, 5))
    K = np.stack([K_VGA, K_VGA * [[2.0], [2.0], [1.0]]])
    points = g.backproject_depth(depth, K)
    assert points.shape == (2, 4, 5, 3)
    np.testing.assert_allclose(points[1], g.backproject_depth(depth[1], K[1]))
    assert g.backproject_depth(depth[0], K).shape == (2, 4, 5, 3)


# ----------------------------------------------------------------------------------------------
# q and -q, known angles, errors
# ----------------------------------------------------------------------------------------------


def test_q_and_minus_q_are_the_same_rotation() -> None:
    rng = np.random.default_rng(14)
    q = random_quats(rng, 50)
    np.testing.assert_allclose(g.angular_error_deg(q, -q), 0.0, atol=1e-12)
    np.testing.assert_allclose(g.quat_to_matrix(-q), g.quat_to_matrix(q), atol=0)
    np.testing.assert_allclose(g.quat_log(-q), g.quat_log(q), atol=0)
    np.testing.assert_allclose(g.quat_normalize(-q), q, atol=0)
    qt = t(q)
    torch.testing.assert_close(g.angular_error_deg_torch(qt, -qt), torch.zeros(50, dtype=torch.float64))
    torch.testing.assert_close(g.quat_to_matrix_torch(-qt), g.quat_to_matrix_torch(qt))
    torch.testing.assert_close(g.quat_log_torch(-qt), g.quat_log_torch(qt))


def test_angular_error_of_known_rotations() -> None:
    identity = np.array([1.0, 0.0, 0.0, 0.0])
    cases = [
        (g.quat_exp([0.0, 0.0, math.pi / 2]), 90.0),
        (g.quat_exp([math.pi, 0.0, 0.0]), 180.0),
        (g.quat_exp([0.0, math.radians(30.0), 0.0]), 30.0),
        (g.quat_exp([0.0, 0.0, -math.radians(1.0)]), 1.0),
        (identity, 0.0),
    ]
    for q, expected in cases:
        assert g.angular_error_deg(identity, q) == pytest.approx(expected, abs=1e-12)
        assert g.angular_error_deg(q, identity) == pytest.approx(expected, abs=1e-12)
        assert g.angular_error_deg_torch(t(identity), t(q)).item() == pytest.approx(expected, abs=1e-12)
    # 90 deg about z, written out: (cos 45, 0, 0, sin 45); a rotation of 270 deg is 90 deg away too.
    c = math.sqrt(0.5)
    assert g.angular_error_deg([1, 0, 0, 0], [c, 0, 0, c]) == pytest.approx(90.0, abs=1e-12)
    assert g.angular_error_deg([1, 0, 0, 0], [-c, 0, 0, c]) == pytest.approx(90.0, abs=1e-12)
    # Between two non-identity orientations: 10 deg about x then 20 more about x.
    qa, qb = g.quat_exp([math.radians(10.0), 0, 0]), g.quat_exp([math.radians(30.0), 0, 0])
    assert g.angular_error_deg(qa, qb) == pytest.approx(20.0, abs=1e-12)
    # +100 deg and -100 deg about z are 160 deg apart (the relative quaternion has w < 0).
    qa, qb = g.quat_exp([0, 0, math.radians(100.0)]), g.quat_exp([0, 0, -math.radians(100.0)])
    assert g.angular_error_deg(qa, qb) == pytest.approx(160.0, abs=1e-12)
    assert g.angular_error_deg_torch(t(qa), t(qb)).item() == pytest.approx(160.0, abs=1e-12)
    # Batched, with broadcasting.
    errors = g.angular_error_deg(identity, np.stack([q for q, _ in cases]))
    np.testing.assert_allclose(errors, [e for _, e in cases], atol=1e-12)


def test_angular_error_matches_transforms3d_on_random_pairs() -> None:
    rng = np.random.default_rng(19)
    q1, q2 = random_quats(rng, 200), random_quats(rng, 200)
    expected = []
    for a, b in zip(q1, q2, strict=True):
        _, angle = tq.quat2axangle(tq.qmult(tq.qconjugate(a), b))
        expected.append(math.degrees(min(angle, 2 * math.pi - angle)))
    np.testing.assert_allclose(g.angular_error_deg(q1, q2), expected, rtol=0, atol=1e-9)
    assert np.max(expected) > 120.0  # the sample includes relative quaternions with w < 0


def test_translation_error() -> None:
    assert g.translation_error([0.0, 0.0, 0.0], [3.0, 4.0, 0.0]) == pytest.approx(5.0)
    np.testing.assert_allclose(
        g.translation_error([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [1.0, 1.0, 2.0]), [1.0, np.sqrt(6)]
    )
    assert g.translation_error_torch(t([0.0, 0.0, 0.0]), t([3.0, 4.0, 0.0])).item() == pytest.approx(5.0)


def test_is_rotation_matrix() -> None:
    rng = np.random.default_rng(15)
    R = g.quat_to_matrix(random_quats(rng, 3))
    assert g.is_rotation_matrix(R[0]) is True
    assert g.is_rotation_matrix(np.diag([1.0, 1.0, -1.0])) is False  # reflection
    assert g.is_rotation_matrix(2.0 * np.eye(3)) is False
    assert g.is_rotation_matrix(R[0] + 1e-3) is False
    assert g.is_rotation_matrix(R[0] + 1e-3, tol=1e-2) is True
    np.testing.assert_array_equal(g.is_rotation_matrix(np.stack([R[1], -R[2]])), [True, False])


# ----------------------------------------------------------------------------------------------
# torch: agreement with numpy on random batches, any device and dtype
# ----------------------------------------------------------------------------------------------


def test_torch_matches_numpy(device: torch.device, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(16)
    n = 64
    tol = TOL[dtype]
    q1_raw, q2_raw = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    v = rng.normal(size=(n, 3))
    rotvec = random_rotvecs(rng, n)
    T1, T2 = random_poses(rng, n), random_poses(rng, n)
    points = rng.normal(size=(n, 10, 3)) + np.array([0.0, 0.0, 5.0])
    depth = rng.uniform(0.5, 5.0, size=(3, 5, 7))

    def check(actual: torch.Tensor, expected: np.ndarray, scale: float = 1.0) -> None:
        assert actual.device.type == device.type
        assert actual.dtype == dtype
        np.testing.assert_allclose(actual.cpu().double().numpy(), expected, rtol=tol, atol=tol * scale)

    def tt(x: np.ndarray) -> torch.Tensor:
        return t(x, device, dtype)

    check(g.quat_normalize_torch(tt(q1_raw)), g.quat_normalize(q1_raw))
    check(g.quat_multiply_torch(tt(q1_raw), tt(q2_raw)), g.quat_multiply(q1_raw, q2_raw), scale=10)
    check(g.quat_conjugate_torch(tt(q1_raw)), g.quat_conjugate(q1_raw))
    check(g.quat_rotate_torch(tt(q1_raw), tt(v)), g.quat_rotate(q1_raw, v), scale=10)
    check(g.quat_to_matrix_torch(tt(q1_raw)), g.quat_to_matrix(q1_raw))
    R = g.quat_to_matrix(q1_raw)
    check(g.matrix_to_quat_torch(tt(R)), g.matrix_to_quat(R), scale=10)
    check(g.quat_exp_torch(tt(rotvec)), g.quat_exp(rotvec))
    check(g.quat_log_torch(tt(q1_raw)), g.quat_log(q1_raw), scale=10)
    check(g.angular_error_deg_torch(tt(q1_raw), tt(q2_raw)), g.angular_error_deg(q1_raw, q2_raw), scale=1e3)
    check(g.translation_error_torch(tt(v), tt(rotvec)), g.translation_error(v, rotvec), scale=10)
    check(g.pose_compose_torch(tt(T1), tt(T2)), g.pose_compose(T1, T2), scale=10)
    check(g.pose_invert_torch(tt(T1)), g.pose_invert(T1), scale=10)
    check(g.pose_from_position_quat_torch(tt(v), tt(q1_raw)), g.pose_from_position_quat(v, q1_raw))
    t_torch, q_torch = g.position_quat_from_pose_torch(tt(T1))
    t_np, q_np = g.position_quat_from_pose(T1)
    check(t_torch, t_np)
    check(q_torch, q_np, scale=10)
    check(g.transform_points_torch(tt(T1), tt(points)), g.transform_points(T1, points), scale=30)
    uv_torch, depth_torch = g.project_points_torch(tt(points), tt(K_VGA))
    uv_np, depth_np = g.project_points(points, K_VGA)
    check(uv_torch, uv_np, scale=1e3)
    check(depth_torch, depth_np)
    check(g.backproject_depth_torch(tt(depth), tt(K_VGA)), g.backproject_depth(depth, K_VGA), scale=10)


def test_torch_round_trips(device: torch.device, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(17)
    tol = 100 * TOL[dtype]
    q = t(random_quats(rng, 100), device, dtype)
    torch.testing.assert_close(g.matrix_to_quat_torch(g.quat_to_matrix_torch(q)), q, rtol=0, atol=tol)
    torch.testing.assert_close(g.quat_exp_torch(g.quat_log_torch(q)), q, rtol=0, atol=tol)
    T = t(random_poses(rng, 20), device, dtype)
    eye = torch.eye(4, device=device, dtype=dtype).expand(20, 4, 4)
    torch.testing.assert_close(g.pose_compose_torch(T, g.pose_invert_torch(T)), eye, rtol=0, atol=tol * 10)
    depth = t(rng.uniform(0.5, 5.0, size=(4, 6)), device, dtype)
    uv, z = g.project_points_torch(
        g.backproject_depth_torch(depth, t(K_VGA, device, dtype)).reshape(-1, 3), t(K_VGA, device, dtype)
    )
    v, u = torch.meshgrid(
        torch.arange(4, device=device, dtype=dtype),
        torch.arange(6, device=device, dtype=dtype),
        indexing="ij",
    )
    torch.testing.assert_close(uv.reshape(4, 6, 2), torch.stack([u, v], -1), rtol=0, atol=1e3 * TOL[dtype])
    torch.testing.assert_close(z.reshape(4, 6), depth)


def test_torch_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        g.quat_to_matrix_torch(torch.zeros(5, 3))
    with pytest.raises(TypeError, match="floating"):
        g.quat_to_matrix_torch(torch.zeros(5, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="shape"):
        g.backproject_depth_torch(torch.ones(5), torch.eye(3))


# ----------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------


def _double(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


def test_gradcheck_away_from_singularities() -> None:
    rng = np.random.default_rng(18)
    rotvec = random_rotvecs(rng, 6, max_angle=3.0)
    rotvec[0] = [0.3, -0.2, 0.1]
    assert torch.autograd.gradcheck(g.quat_exp_torch, (_double(rotvec),))
    q = g.quat_exp(rotvec) * 1.7  # not unit: the normalisation is differentiated too
    assert torch.autograd.gradcheck(g.quat_log_torch, (_double(q),))
    assert torch.autograd.gradcheck(g.quat_to_matrix_torch, (_double(q),))
    assert torch.autograd.gradcheck(g.matrix_to_quat_torch, (_double(g.quat_to_matrix(q)),))
    q2 = g.quat_multiply(g.quat_exp(random_rotvecs(rng, 6, max_angle=2.0) + 0.1), q)
    assert torch.autograd.gradcheck(g.angular_error_deg_torch, (_double(q), _double(q2)))
    assert torch.autograd.gradcheck(g.quat_rotate_torch, (_double(q), _double(rng.normal(size=(6, 3)))))
    K = K_VGA.copy()
    points = rng.normal(size=(6, 3)) + np.array([0.0, 0.0, 4.0])
    assert torch.autograd.gradcheck(g.project_points_torch, (_double(points), _double(K)))
    assert torch.autograd.gradcheck(g.pose_invert_torch, (_double(random_poses(rng, 3)),))


def test_quat_exp_gradient_at_zero_rotation() -> None:
    rotvec = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    jacobian = torch.autograd.functional.jacobian(g.quat_exp_torch, rotvec)
    assert torch.isfinite(jacobian).all()
    expected = torch.cat([torch.zeros(1, 3), 0.5 * torch.eye(3)]).double()  # d(w, xyz)/d rotvec
    torch.testing.assert_close(jacobian, expected)
    assert torch.autograd.gradcheck(g.quat_exp_torch, (rotvec,))
    for dtype in DTYPES:
        rotvec = torch.zeros(4, 3, dtype=dtype, requires_grad=True)
        g.quat_to_matrix_torch(g.quat_exp_torch(rotvec)).sum().backward()
        assert torch.isfinite(rotvec.grad).all()


def test_quat_log_and_angular_error_gradients_at_identity() -> None:
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    jacobian = torch.autograd.functional.jacobian(g.quat_log_torch, identity)
    expected = torch.cat([torch.zeros(3, 1), 2.0 * torch.eye(3)], dim=1).double()  # d rotvec / d(w, xyz)
    torch.testing.assert_close(jacobian, expected)
    q1 = torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    q2 = q1.detach().clone().requires_grad_(True)
    error = g.angular_error_deg_torch(q1, q2)
    error.sum().backward()
    assert error.item() == 0.0
    assert torch.isfinite(q1.grad).all() and torch.isfinite(q2.grad).all()
    # matrix_to_quat at the identity (a pose loss on matrices starts there).
    eye = torch.eye(3, dtype=torch.float64, requires_grad=True)
    g.matrix_to_quat_torch(eye).sum().backward()
    assert torch.isfinite(eye.grad).all()


def test_angular_error_gradient_points_the_right_way() -> None:
    # The error between identity and a rotation of angle a about z is a degrees; d/da = 180/pi.
    angle = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    q = torch.stack([torch.cos(angle / 2), torch.zeros(()), torch.zeros(()), torch.sin(angle / 2)])
    error = g.angular_error_deg_torch(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64), q)
    (grad,) = torch.autograd.grad(error, angle)
    assert error.item() == pytest.approx(math.degrees(0.3), rel=1e-12)
    assert grad.item() == pytest.approx(180.0 / math.pi, rel=1e-10)


# --- quaternion means (Markley) ---------------------------------------------------------------


def quat_z(degrees: float) -> np.ndarray:
    half = np.radians(degrees) / 2
    return np.array([np.cos(half), 0.0, 0.0, np.sin(half)])


def test_quat_average_ignores_signs_and_averages_symmetric_rotations() -> None:
    q = np.array([0.5, 0.5, -0.5, 0.5])
    np.testing.assert_allclose(g.quat_average([q, -q, q]), q, atol=1e-12)
    symmetric = np.stack([quat_z(30.0), -quat_z(-30.0), quat_z(10.0), quat_z(-10.0)])
    np.testing.assert_allclose(g.quat_average(symmetric), [1.0, 0.0, 0.0, 0.0], atol=1e-12)


def test_quat_average_torch_ignores_sign_and_recovers_the_centre():
    rng = np.random.default_rng(0)
    centre = random_quats(rng, 1)[0]
    perturbations = g.quat_exp(rng.normal(scale=0.05, size=(200, 3)))
    samples = g.quat_multiply(perturbations, centre)
    samples[::2] *= -1  # q and -q are the same rotation
    mean = g.quat_average_torch(torch.from_numpy(samples)[None])[0].numpy()
    centre = centre if centre[0] >= 0 else -centre
    assert mean[0] >= 0
    assert np.degrees(2 * np.arccos(min(1.0, abs(mean @ centre)))) < 0.5
