"""inference/metrics.py: pose errors, the metrics table (medians, means, within-threshold shares and
their names), and the mean-pose and nearest-neighbour baselines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from posenet_ros.inference.metrics import (
    image_descriptor,
    mean_pose_baseline,
    nearest_neighbour_baseline,
    pose_errors,
    pose_metrics,
    threshold_key,
    threshold_label,
)


def quat_z(angle_deg: float) -> np.ndarray:
    half = math.radians(angle_deg) / 2.0
    return np.array([math.cos(half), 0.0, 0.0, math.sin(half)])


def test_pose_metrics_on_hand_made_errors() -> None:
    position = [0.01, 0.02, 0.1, 0.2]
    orientation = [1.0, 10.0, 2.0, 3.0]
    metrics = pose_metrics(position, orientation, thresholds=((0.05, 5.0), (0.5, 20.0), (0.15, 2.0)))
    assert metrics["frames"] == 4
    assert metrics["median_position_error_m"] == pytest.approx(0.06)
    assert metrics["median_orientation_error_deg"] == pytest.approx(2.5)
    assert metrics["mean_position_error_m"] == pytest.approx(0.0825)
    assert metrics["mean_orientation_error_deg"] == pytest.approx(4.0)
    assert metrics["within_0.05m_5deg"] == pytest.approx(0.25)  # only frame 0: frame 1 is 10°
    assert metrics["within_0.5m_20deg"] == pytest.approx(1.0)
    assert metrics["within_0.15m_2deg"] == pytest.approx(0.5)  # frames 0 and 2 (2° counts)
    assert all(isinstance(value, (int, float)) for value in metrics.values())
    json.dumps(metrics)  # plain Python numbers


def test_threshold_bounds_are_inclusive_and_names_are_stable() -> None:
    metrics = pose_metrics([0.05, 0.0500001], [5.0, 0.0])
    assert list(metrics) == ["frames", "median_position_error_m", "median_orientation_error_deg",
                             "mean_position_error_m", "mean_orientation_error_deg", "within_0.05m_5deg"]
    assert metrics["within_0.05m_5deg"] == pytest.approx(0.5)
    assert threshold_key(0.05, 5.0) == "within_0.05m_5deg"
    assert threshold_key(0.25, 2.5) == "within_0.25m_2.5deg"
    assert threshold_label(0.05, 5.0) == "5cm/5°"
    assert threshold_label(2.0, 10.0) == "2m/10°"


def test_pose_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        pose_metrics([], [])
    with pytest.raises(ValueError, match="equal length"):
        pose_metrics([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        pose_metrics([0.1], [1.0], thresholds=((-1.0, 5.0),))


def test_pose_errors_treat_q_and_minus_q_as_equal() -> None:
    q = np.array([[0.5, 0.5, -0.5, 0.5], quat_z(30.0)])
    position = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    shifted = position + np.array([[0.0, 0.3, 0.4], [0.0, 0.0, 0.0]])
    position_error, orientation_error = pose_errors(position, -q, shifted, q)
    np.testing.assert_allclose(orientation_error, [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(position_error, [0.5, 0.0])
    _, ninety = pose_errors(position[:1], quat_z(0.0)[None], position[:1], quat_z(90.0)[None])
    assert ninety[0] == pytest.approx(90.0)


def test_mean_pose_baseline_known_answers() -> None:
    train_positions = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 3.0, 0.0], [1.0, -3.0, 0.0]])
    train_quats = np.stack([quat_z(20.0), -quat_z(-20.0), quat_z(0.0), -quat_z(0.0)])
    true_positions = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [4.0, 4.0, 0.0]])
    true_quats = np.stack([quat_z(90.0), -quat_z(0.0), quat_z(-45.0)])
    position_error, orientation_error = mean_pose_baseline(train_positions, train_quats, true_positions,
                                                           true_quats)
    np.testing.assert_allclose(position_error, [1.0, 0.0, 5.0], atol=1e-12)
    np.testing.assert_allclose(orientation_error, [90.0, 0.0, 45.0], atol=1e-9)
    with pytest.raises(ValueError):
        mean_pose_baseline(np.zeros((0, 3)), np.zeros((0, 4)), true_positions, true_quats)


def test_nearest_neighbour_baseline_answers_the_pose_of_the_most_similar_training_image():
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)
    train_positions = np.arange(15, dtype=float).reshape(5, 3)
    train_quats = np.tile([1.0, 0.0, 0.0, 0.0], (5, 1))
    # Test frames: training images 3 and 1, brighter and with noise (the descriptor ignores brightness).
    test_images = [np.clip(train_images[i].astype(int) * 0.8 + 30 + rng.normal(0, 4, (48, 64, 3)), 0, 255)
                   .astype(np.uint8) for i in (3, 1)]
    descriptor = image_descriptor(train_images[0])
    assert descriptor.shape == (16 * 12,) and abs(descriptor.mean()) < 1e-9
    assert np.linalg.norm(descriptor) == pytest.approx(1.0)
    positions_true = train_positions[[3, 1]] + [[0.3, 0.4, 0.0], [0.0, 0.0, 1.0]]
    turned = [math.cos(0.05), 0.0, 0.0, math.sin(0.05)]  # 5.73° about z
    position_error, orientation_error = nearest_neighbour_baseline(
        [image_descriptor(i) for i in train_images], train_positions, train_quats,
        [image_descriptor(i) for i in test_images], positions_true, [turned, [1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(position_error, [0.5, 1.0])
    np.testing.assert_allclose(orientation_error, [math.degrees(0.1), 0.0], atol=1e-6)
