"""inference/calibration.py: NEES, coverage, the per-block calibration fit (scale and novelty), and
the error vectors in the covariance's convention."""

import math

import numpy as np
import pytest
import torch

from posenet_ros.core.geometry import quat_exp, quat_multiply
from posenet_ros.inference.calibration import (
    coverage,
    fit_block_calibration,
    nees,
    pose_error_vectors,
    spearman,
)
from posenet_ros.inference.uncertainty import UncertaintyConfig, calibrated


def random_quat(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_nees_fit_and_coverage_on_gaussian_errors():
    rng = np.random.default_rng(3)
    true_cov = np.diag([0.04, 0.09, 0.01, 1e-4, 4e-4, 9e-4])
    errors = rng.multivariate_normal(np.zeros(6), true_cov, size=4000)
    stated = np.broadcast_to(4.0 * true_cov, (4000, 6, 6))  # four times too pessimistic
    for block in ("position", "rotation"):  # no training frames: one scale, the mean NEES over 3
        scale, novelty = fit_block_calibration(nees(errors, stated, block), np.zeros(4000), [], [], 3, 0.0)
        assert scale == pytest.approx(0.25, rel=0.05) and novelty == 0.0
    values = nees(errors, np.broadcast_to(true_cov, (4000, 6, 6)), "pose")
    assert values.mean() == pytest.approx(6.0, rel=0.05)
    result = coverage(values, 6)
    for k in (1, 2, 3):
        assert result[f"within_{k}sigma"] == pytest.approx(result[f"expected_{k}sigma"], abs=0.03)
    assert spearman(np.arange(10.0), np.arange(10.0) ** 2) == pytest.approx(1.0)


def test_calibration_learns_how_the_error_grows_with_novelty():
    # Errors whose variance is 0.5 · exp(1.5 · score) times the stated covariance (identity): seen
    # frames score low, held-out frames higher and spread out.
    rng = np.random.default_rng(5)
    score_train, score_val = rng.normal(-1.0, 0.3, 3000), rng.normal(0.5, 0.6, 3000)

    def errors(score):
        return rng.normal(size=(len(score), 3)) * np.sqrt(0.5 * np.exp(1.5 * score))[:, None]

    stated = np.broadcast_to(np.eye(6), (3000, 6, 6))
    nees_val = nees(np.pad(errors(score_val), ((0, 0), (0, 3))), stated, "position")
    nees_train = nees(np.pad(errors(score_train), ((0, 0), (0, 3))), stated, "position")
    scale, novelty = fit_block_calibration(nees_val, score_val, nees_train, score_train, 3, 0.0)
    assert novelty == pytest.approx(1.5, abs=0.1) and scale == pytest.approx(0.5, rel=0.1)
    # A constant-error world has no novelty; NaN scores or NEES are left out.
    flat = nees(rng.normal(size=(3000, 6)), stated, "position")
    scale, novelty = fit_block_calibration(np.r_[flat[:1500], np.nan], np.r_[score_val[:1500], 0.0],
                                           flat[1500:], np.r_[score_train[1501:], np.nan], 3, 0.0)
    assert novelty < 0.05 and scale == pytest.approx(1.0, rel=0.1)

    config = UncertaintyConfig(position_scale=2.0, rotation_scale=3.0, position_novelty=1.0,
                               rotation_novelty=0.0, score_reference=0.5)
    position, rotation = config.block_factors(torch.tensor([0.5, 1.5, math.nan, 1e6], dtype=torch.float64))
    np.testing.assert_allclose(position.numpy()[:3], [2.0, 2.0 * math.e, 2.0])  # NaN score: scale alone
    assert math.isfinite(float(position[3])) and torch.all(rotation == 3.0)
    scaled = calibrated(torch.eye(6, dtype=torch.float64).expand(4, 6, 6), position, rotation)
    assert float(scaled[1, 0, 0]) == pytest.approx(2.0 * math.e)
    assert float(scaled[1, 5, 5]) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="novelty"):
        UncertaintyConfig(position_novelty=-1.0)


def test_pose_error_vectors_follow_the_covariance_convention():
    rng = np.random.default_rng(4)
    estimate_q = random_quat(rng, 5)
    delta = rng.normal(scale=0.1, size=(5, 3))
    true_q = quat_multiply(quat_exp(delta), estimate_q)
    errors = pose_error_vectors(np.zeros((5, 3)), estimate_q, np.ones((5, 3)), true_q)
    np.testing.assert_allclose(errors[:, :3], 1.0)
    np.testing.assert_allclose(errors[:, 3:], delta, atol=1e-9)
