"""config/ekf_relocalization.yaml, robot_localization's ekf_node parameters, read as rcl reads them
for the node ekf_filter_node, against what relocalize_node really publishes: the pose topic it fuses
is the node's output, its frames are the node's defaults, it fuses only the pose variables the node's
covariance covers, it publishes map -> odom (so the node must not), and its Mahalanobis gate is the
chi-square quantile its comment says."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chi2

from posenet_ros.node.parameters import NODE_PARAMETERS, read_parameters_file
from posenet_ros.node.pipeline import OUTPUTS

REPO = Path(__file__).resolve().parents[2]
EKF_CONFIG = REPO / "config" / "ekf_relocalization.yaml"
NODE_DEFAULTS = {spec.name: spec.default for spec in NODE_PARAMETERS}
# robot_localization's state vector, the order of every *_config list and covariance.
STATE = ("x", "y", "z", "roll", "pitch", "yaw", "vx", "vy", "vz", "vroll", "vpitch", "vyaw", "ax", "ay", "az")


@pytest.fixture(scope="module", params=["/", "/robot1"])
def ekf(request) -> dict:
    return read_parameters_file(EKF_CONFIG, "ekf_filter_node", request.param)


def fused(config: list[bool]) -> set[str]:
    assert len(config) == len(STATE) and all(isinstance(flag, bool) for flag in config)
    return {name for name, flag in zip(STATE, config, strict=True) if flag}


def test_it_fuses_the_topic_the_node_publishes_in_the_nodes_frames(ekf):
    # Relative names: in a namespace both nodes resolve them there.
    assert ekf["pose0"] == OUTPUTS["pose"].name == "relocalized_pose"
    assert ekf["odom0"] == "odom"
    assert ekf["map_frame"] == ekf["world_frame"] == NODE_DEFAULTS["map_frame"]
    assert ekf["base_link_frame"] == NODE_DEFAULTS["base_frame"]
    assert ekf["odom_frame"] == NODE_DEFAULTS["odom_frame"]


def test_the_ekf_publishes_map_to_odom_and_the_node_by_default_does_not(ekf):
    assert ekf["publish_tf"] is True
    assert NODE_DEFAULTS["publish_tf"] is False and NODE_DEFAULTS["tf_mode"] == "map_odom"


def test_a_ground_robot_fuses_the_planar_pose_absolutely_and_odometry_as_velocities(ekf):
    assert ekf["two_d_mode"] is True
    assert fused(ekf["pose0_config"]) == {"x", "y", "yaw"}
    assert ekf["pose0_differential"] is False and ekf["pose0_relative"] is False
    # Odometry only as velocities: its drifting pose is not a second absolute pose.
    odometry = fused(ekf["odom0_config"])
    assert odometry == {"vx", "vy", "vyaw"}
    assert not odometry & set(STATE[:6])


def test_the_mahalanobis_gate_is_the_chi_square_quantile_of_the_fused_pose_values(ekf):
    degrees_of_freedom = len(fused(ekf["pose0_config"]))
    assert ekf["pose0_rejection_threshold"] == pytest.approx(
        math.sqrt(chi2.ppf(0.999, degrees_of_freedom)), abs=0.005)


def test_lagged_poses_are_replayed_and_the_first_pose_can_pass_the_gate(ekf):
    assert ekf["smooth_lagged_data"] is True and ekf["history_length"] > 0.0
    covariance = np.array(ekf["initial_estimate_covariance"], dtype=float).reshape(len(STATE), len(STATE))
    np.testing.assert_array_equal(covariance, covariance.T)
    assert np.all(np.linalg.eigvalsh(covariance) > 0.0)
    # A robot anywhere within 10 m of the origin, at any yaw: its first pose is within the gate.
    position_sigma, yaw_sigma = math.sqrt(covariance[0, 0]), math.sqrt(covariance[5, 5])
    assert 10.0 / position_sigma < ekf["pose0_rejection_threshold"]
    assert math.pi / yaw_sigma < ekf["pose0_rejection_threshold"]
    assert ekf["sensor_timeout"] > 0.0 and ekf["frequency"] > 0.0
