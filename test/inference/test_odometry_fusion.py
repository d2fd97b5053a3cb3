"""inference/odometry_fusion.py: the odometry-aided filter on simulated trajectories whose per-frame
errors follow its own model (an AR(1) bias in distance travelled plus white noise), and odometry with
its modelled random-walk noise: the fused poses are more accurate than the per-frame ones and their
covariance is calibrated; outliers are gated; the correlation length is recovered."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from posenet_ros.core.geometry import (
    matrix_to_quat,
    pose_from_position_quat,
    quat_conjugate,
    quat_exp,
    quat_log,
    quat_multiply,
)
from posenet_ros.inference.odometry_fusion import (
    FusionParameters,
    LearnedMotion,
    OdometryFusion,
    OdometryIncrement,
    OdometryNoise,
    RobotOdometry,
    fit_correlation_lengths,
)
from posenet_ros.inference.temporal import OdometryAidedSmoother
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.models.temporal import TemporalConfig, TemporalModel

BASE_FROM_CAM = pose_from_position_quat([0.2, 0.0, 0.5], quat_exp([-math.pi / 2, 0.0, 0.0]))
STEP_M = 0.1


def _trajectory(frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """world_from_base (4x4) of a base driving a wiggly path on the floor, STEP_M per frame."""
    poses, heading, position = [], 0.0, np.zeros(3)
    for _ in range(frames):
        heading += rng.normal(0.0, 0.05)
        position = position + STEP_M * np.array([math.cos(heading), math.sin(heading), 0.0])
        poses.append(pose_from_position_quat(position, quat_exp([0.0, 0.0, heading])))
    return poses


def _odometry(world_from_base: list[np.ndarray], noise: OdometryNoise, rng: np.random.Generator):
    odometry = [world_from_base[0]]
    for previous, current in itertools.pairwise(world_from_base):
        increment = np.linalg.inv(previous) @ current
        xi = rng.multivariate_normal(np.zeros(6), noise.base_covariance(increment))
        odometry.append(odometry[-1] @ increment @ pose_from_position_quat(xi[:3], quat_exp(xi[3:])))
    return odometry


def _per_frame(world_from_cam: list[np.ndarray], covariance: np.ndarray, share: float, length_m: float,
               rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-frame poses whose errors are an AR(1) bias (correlation exp(-STEP_M / length_m) per frame,
    variance share x covariance) plus white noise ((1 - share) x covariance)."""
    rho = math.exp(-STEP_M / length_m)
    std = np.sqrt(share * np.diag(covariance))
    bias = rng.normal(size=6) * std
    white = np.linalg.cholesky((1 - share) * covariance)
    out = []
    for pose in world_from_cam:
        bias = rho * bias + math.sqrt(1 - rho**2) * std * rng.normal(size=6)
        error = bias + white @ rng.normal(size=6)
        quat = quat_multiply(quat_exp(error[3:]), matrix_to_quat(pose[:3, :3]))
        out.append((pose[:3, 3] + error[:3], quat))
    return out


def _error(position, quat, pose) -> np.ndarray:
    rotation = quat_multiply(quat, quat_conjugate(matrix_to_quat(pose[:3, :3])))
    return np.concatenate([position - pose[:3, 3], quat_log(rotation if rotation[0] >= 0 else -rotation)])


def _run(seed: int, noise: OdometryNoise, outage: range = range(0)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    covariance = np.diag([0.2**2] * 3 + [math.radians(5.0)**2] * 3)
    bases = _trajectory(300, rng)
    cams = [base @ BASE_FROM_CAM for base in bases]
    odometry = _odometry(bases, noise, rng)
    measured = _per_frame(cams, covariance, 0.8, 1.0, rng)
    fusion = OdometryFusion(FusionParameters(bias_share=0.8, correlation_length_m=[1.0] * 6,
                                             learned_motion_std=[0.05] * 3 + [0.05] * 3))
    per_frame, fused, nees = [], [], []
    for k, ((position, quat), cam) in enumerate(zip(measured, cams, strict=True)):
        if k == 0:
            motion = None
        elif k in outage:  # a poor learned motion: the true one plus its modelled noise
            true = np.linalg.inv(cams[k - 1]) @ cam
            step = cams[k - 1][:3, :3] @ true[:3, 3]
            motion = LearnedMotion(step + rng.normal(0, 0.05, 3), np.zeros(3), np.full(6, 0.05**2))
        else:
            motion = OdometryIncrement.from_base(odometry[k - 1], odometry[k], BASE_FROM_CAM, noise)
        out = fusion.update(position, quat, covariance, motion)
        per_frame.append(_error(position, quat, cam))
        error = _error(out.position_3, out.quat_4, cam)
        fused.append(error)
        nees.append([error[:3] @ np.linalg.solve(out.covariance_66[:3, :3], error[:3]),
                     error[3:] @ np.linalg.solve(out.covariance_66[3:, 3:], error[3:])])
    return {"per_frame": np.array(per_frame), "fused": np.array(fused), "nees": np.array(nees)}


def _median(errors: np.ndarray, block: slice) -> float:
    return float(np.median(np.linalg.norm(errors[:, block], axis=1)))


@pytest.mark.parametrize("noise", [OdometryNoise(0.02, 1.0), OdometryNoise(0.05, 2.0)])
def test_fusion_is_more_accurate_and_calibrated_when_the_errors_follow_its_model(noise):
    runs = [_run(seed, noise) for seed in range(4)]
    per_frame = np.concatenate([run["per_frame"][50:] for run in runs])
    fused = np.concatenate([run["fused"][50:] for run in runs])
    nees = np.concatenate([run["nees"][50:] for run in runs])
    assert _median(fused, slice(0, 3)) <= 0.7 * _median(per_frame, slice(0, 3))
    assert _median(fused, slice(3, 6)) <= 0.7 * _median(per_frame, slice(3, 6))
    assert np.all((1.5 <= nees.mean(0)) & (nees.mean(0) <= 6.0)), nees.mean(0)


def test_without_odometry_for_a_while_the_learned_motion_carries_the_filter():
    full = _run(0, OdometryNoise(), outage=range(0))
    gap = _run(0, OdometryNoise(), outage=range(100, 120))
    assert np.all(np.isfinite(gap["fused"]))
    assert _median(gap["fused"][100:120], slice(0, 3)) <= _median(gap["per_frame"][100:120], slice(0, 3))
    assert np.array_equal(gap["fused"][:100], full["fused"][:100])


def test_an_outlier_is_gated_and_a_lost_track_restarts():
    fusion = OdometryFusion(FusionParameters(), max_rejections=2)
    covariance = np.diag([0.01] * 3 + [1e-3] * 3)
    still = OdometryIncrement(np.eye(4), np.eye(6) * 1e-8)
    identity = np.array([1.0, 0.0, 0.0, 0.0])
    assert fusion.update(np.zeros(3), identity, covariance, None).measurement_used
    far = np.array([5.0, 0.0, 0.0])
    for _ in range(2):
        out = fusion.update(far, identity, covariance, still)
        assert not out.measurement_used and np.linalg.norm(out.position_3) < 0.1
    restarted = fusion.update(far, identity, covariance, still)
    assert restarted.measurement_used
    np.testing.assert_allclose(restarted.position_3, far)


def test_the_camera_increment_is_the_base_increment_seen_from_the_camera():
    base_a = pose_from_position_quat([1.0, 2.0, 0.0], quat_exp([0.0, 0.0, 0.3]))
    base_b = pose_from_position_quat([1.5, 2.2, 0.0], quat_exp([0.0, 0.0, 0.5]))
    increment = OdometryIncrement.from_base(base_a, base_b, BASE_FROM_CAM, OdometryNoise(0.02, 1.0))
    expected = np.linalg.inv(base_a @ BASE_FROM_CAM) @ (base_b @ BASE_FROM_CAM)
    np.testing.assert_allclose(increment.cam_prev_from_cam, expected, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(increment.covariance_66) > 0)
    # position noise grows with the distance the base travelled (0.539 m): 0.02² x 0.539 per axis
    # of the base, and the rotation noise reaches the camera's position through the lever arm
    assert np.trace(increment.covariance_66[:3, :3]) >= 3 * 0.02**2 * np.hypot(0.5, 0.2)


def test_the_correlation_length_of_an_ar1_bias_is_recovered():
    rng = np.random.default_rng(0)
    errors, covariances, steps = [], [], []
    for _ in range(20):
        rho = math.exp(-STEP_M / 0.8)
        values = np.zeros((200, 6))
        for t in range(1, 200):
            values[t] = rho * values[t - 1] + math.sqrt(1 - rho**2) * rng.normal(size=6)
        errors.append(values * 0.3)
        covariances.append(np.tile(np.eye(6) * 0.09, (200, 1, 1)))
        steps.append(np.full(199, STEP_M))
    lengths = fit_correlation_lengths(errors, covariances, steps)
    # 20 sequences of 200 frames estimate a lag-1 correlation of 0.88 to about ±0.01, so L to about ±15%
    np.testing.assert_allclose(lengths, 0.8, rtol=0.25)


def test_after_an_odometry_gap_the_smoother_continues_from_its_last_frame_with_odometry():
    """The poses made on the learned motion during a gap are published but not kept: from the first
    frame with odometry again, the outputs are those of a stream that never had the gap's frames."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = PoseNet(ModelConfig(backbone="resnet_tiny", feature_dim=16)).eval()
    temporal = TemporalModel(TemporalConfig(hidden=4), model.head_dim).eval()
    bases = _trajectory(30, rng)
    cams = [base @ BASE_FROM_CAM for base in bases]
    odometry = _odometry(bases, OdometryNoise(), rng)
    covariance = np.diag([0.2**2] * 3 + [math.radians(5.0)**2] * 3)
    measured = _per_frame(cams, covariance, 0.8, 1.0, rng)
    features = torch.randn(30, 1, model.head_dim)

    def run(frames, gap):
        smoother = OdometryAidedSmoother(temporal, model, FusionParameters(), OdometryNoise())
        outputs = {}
        for k in frames:
            robot = None if k in gap else RobotOdometry(odometry[k], BASE_FROM_CAM)
            outputs[k] = smoother.update(features[k], *measured[k], covariance, robot)
        return outputs

    with_gap = run(range(30), gap=range(10, 20))
    skipped = run([*range(10), *range(20, 30)], gap=range(0))
    assert all(with_gap[k][1] for k in range(10, 20)) and not any(with_gap[k][1] for k in range(20, 30))
    for k in range(20, 30):
        np.testing.assert_allclose(with_gap[k][0].position_3, skipped[k][0].position_3, rtol=0, atol=1e-12)
        np.testing.assert_allclose(with_gap[k][0].covariance_66, skipped[k][0].covariance_66, atol=1e-15)
