"""training/pose_regression.py: the yardstick of "not learning a component" (the mean pose's error per
component) and the per-epoch check that warns about components whose training error stays near it."""

import logging
import math

import numpy as np
import pytest

from posenet_ros.core.geometry import pose_from_position_quat, quat_exp
from posenet_ros.models.posenet import ModelConfig
from posenet_ros.runtime.train_config import LossConfig, TrainConfig
from posenet_ros.training.pose_regression import PoseRegressionTraining, chance_errors


def yaw_poses(yaw_deg: np.ndarray, positions_N3: np.ndarray) -> np.ndarray:
    return np.array([pose_from_position_quat(p, quat_exp([0.0, 0.0, math.radians(y)]))
                     for p, y in zip(positions_N3, yaw_deg, strict=True)])


def test_chance_errors_are_the_mean_pose_errors_per_component():
    rng = np.random.default_rng(0)
    yaw = rng.uniform(90.0, 180.0, 400)
    positions = rng.normal(size=(400, 3)) * [2.0, 1.0, 0.0]
    poses = yaw_poses(yaw, positions)
    rms = chance_errors(poses, positions.mean(axis=0), 1.5)
    np.testing.assert_allclose(rms[:3], positions.std(axis=0) / 1.5, rtol=1e-6)
    assert math.degrees(rms[5]) == pytest.approx(np.std(yaw), rel=0.02)  # uniform: 90 / sqrt(12)
    assert rms[3] < 1e-6 and rms[4] < 1e-6  # no roll or pitch in these poses


def test_a_component_near_chance_is_reported_and_warned_about(caplog):
    method = PoseRegressionTraining()
    method.chance_rms = np.array([1.0, 1.0, 1.0, 0.01, 0.01, 0.45])
    config = TrainConfig(epochs=8, model=ModelConfig(aleatoric="per_axis"),
                         loss=LossConfig(kind="aleatoric", warmup_epochs=2))
    learning = {f"sq_err_{k}": v for k, v in zip(["x", "y", "z", "rot_x", "rot_y", "rot_z"],
                                                 [0.04, 0.04, 0.04, 1e-6, 1e-6, 0.01], strict=True)}
    stuck = {**learning, "sq_err_rot_z": 0.44 ** 2}
    with caplog.at_level(logging.WARNING):
        assert method.check_epoch(config, 5, learning)["not_learned"] == ""
        # rot_x hardly varies in the training poses: 0.5° against 0.6° by the mean pose is no alarm
        assert method.check_epoch(config, 5, {**learning, "sq_err_rot_x": 0.009 ** 2})["not_learned"] == ""
        early = method.check_epoch(config, 1, stuck)  # still warming up: reported only later
        row = method.check_epoch(config, 5, stuck)
    assert early["not_learned"] == ""
    assert row["not_learned"] == "rot_z"
    assert row["rms_rot_z"] == pytest.approx(math.degrees(0.44))
    assert row["rms_x"] == pytest.approx(0.2)
    assert len(caplog.records) == 1 and "rot_z" in caplog.records[0].getMessage()
    assert "25°" in caplog.records[0].getMessage() and "26°" in caplog.records[0].getMessage()


def test_the_aleatoric_loss_warms_up_with_the_linear_loss():
    method = PoseRegressionTraining()
    config = TrainConfig(epochs=10, model=ModelConfig(aleatoric="per_axis"),
                         loss=LossConfig(kind="aleatoric", warmup_epochs=3))
    assert [method.loss_kind(config, e) for e in range(5)] == ["linear"] * 3 + ["aleatoric"] * 2
    learned = TrainConfig(epochs=10, loss=LossConfig(kind="learned", warmup_epochs=3))
    assert method.loss_kind(learned, 0) == "learned"
