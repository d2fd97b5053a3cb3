"""training/losses.py: the seed's pose losses (values on known inputs, q/-q invariance, learned
weights, reprojection) and the heteroscedastic (aleatoric) loss."""

import math

import pytest
import torch

from posenet_ros.core.geometry import pose_from_position_quat_torch, quat_exp_torch
from posenet_ros.training.losses import (
    LossConfig,
    PoseLoss,
    aleatoric_nll,
    quaternion_distance,
    reprojection_loss,
    sample_depth_points,
)

Q_ID = torch.tensor([[1.0, 0.0, 0.0, 0.0]])


def test_linear_sum_matches_the_formula():
    loss = PoseLoss(LossConfig(kind="linear", beta=10.0))
    x_true, x_pred = torch.zeros(1, 3), torch.tensor([[3.0, 4.0, 0.0]])
    q_pred = torch.tensor([[2.0, 0.0, 0.0, 2.0]])  # normalised: (1, 0, 0, 1) / sqrt(2)
    value, terms = loss(x_pred, q_pred, x_true, Q_ID)
    expected_q = math.sqrt((1 - 1 / math.sqrt(2)) ** 2 + 0.5)
    assert math.isclose(terms["l_x"], 5.0, rel_tol=1e-5)
    assert math.isclose(float(value), 5.0 + 10.0 * expected_q, rel_tol=1e-5)


def test_q_and_minus_q_are_the_same_rotation():
    q = torch.nn.functional.normalize(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    assert torch.allclose(quaternion_distance(q, -q), torch.zeros(8), atol=1e-5)
    assert torch.allclose(quaternion_distance(q, 3 * q, norm="l1"), torch.zeros(8), atol=1e-5)


def test_learned_weighting_formula_and_gradients_reach_s():
    loss = PoseLoss(LossConfig(kind="learned", init_s_x=0.5, init_s_q=-2.0, max_s_x=1.0, max_s_q=0.0))
    x_pred = torch.tensor([[0.0, 0.0, 2.0]])
    value, _ = loss(x_pred, Q_ID, torch.zeros(1, 3), Q_ID)
    assert math.isclose(float(value.detach()), 2.0 * math.exp(-0.5) + 0.5 + 0.0 - 2.0, rel_tol=1e-4)
    value.backward()
    assert math.isclose(float(loss.s_x.grad), 1.0 - 2.0 * math.exp(-0.5), rel_tol=1e-4)
    assert math.isclose(float(loss.s_q.grad), 1.0, rel_tol=1e-4)  # 1 - Lq exp(-s_q) with Lq = 0


def test_reprojection_is_zero_for_the_true_pose_and_grows_with_the_error():
    depth = torch.full((2, 1, 12, 16), 2.0)
    K = torch.tensor([[20.0, 0, 7.5], [0, 20.0, 5.5], [0, 0, 1]]).expand(2, 3, 3)
    points, valid = sample_depth_points(depth, K, 50, torch.Generator().manual_seed(0))
    assert valid.all() and torch.allclose(points[..., 2], torch.full((2, 50), 2.0))
    position, quat = torch.tensor([[1.0, 2.0, 0.5]] * 2), quat_exp_torch(torch.tensor([[0.1, -0.2, 0.3]] * 2))
    world_from_cam = pose_from_position_quat_torch(position, quat)
    config = LossConfig(reprojection_robust="l1")
    errors = []
    for offset in (0.0, 0.02, 0.1):
        shifted = position + torch.tensor([offset, 0.0, 0.0])
        errors.append(float(reprojection_loss(world_from_cam, shifted, quat, points, valid, K, config)))
    assert errors[0] < 1e-3
    # A sideways shift of d metres moves points at 2 m depth by f * d / 2 pixels.
    assert math.isclose(errors[1], 20 * 0.02 / 2, rel_tol=0.05)
    assert errors[2] > errors[1]


def test_sample_depth_points_skips_invalid_depth():
    depth = torch.zeros(1, 1, 4, 4)
    depth[0, 0, 1, 2] = 1.5
    K = torch.eye(3)[None]
    points, valid = sample_depth_points(depth, K, 3, torch.Generator().manual_seed(0))
    assert valid.sum() == 1
    assert torch.allclose(points[valid], torch.tensor([[2.0 * 1.5, 1.0 * 1.5, 1.5]]))


def test_heteroscedastic_loss_is_minimised_at_the_squared_error():
    position_error = torch.tensor([[0.3, -0.2, 0.1]])
    true_quat = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    predicted_quat = torch.tensor([[math.cos(0.05), math.sin(0.05), 0.0, 0.0]])  # 0.1 rad about x
    log_var = torch.zeros(1, 6, requires_grad=True)
    optimizer = torch.optim.Adam([log_var], lr=0.05)
    for _ in range(1500):
        optimizer.zero_grad()
        aleatoric_nll(position_error, predicted_quat, torch.zeros(1, 3), true_quat, log_var).backward()
        optimizer.step()
    expected = torch.log(torch.tensor([0.09, 0.04, 0.01, 0.01, 1e-8, 1e-8]))
    torch.testing.assert_close(log_var.detach()[0, :4], expected[:4], atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="aleatoric"):
        PoseLoss(LossConfig(kind="aleatoric"))(torch.zeros(1, 3), true_quat, torch.zeros(1, 3), true_quat)


def test_learned_weights_cannot_weight_a_component_away():
    """ŝq above its ceiling is projected onto it: the orientation term keeps weight exp(-max_s_q), and
    ŝq keeps its gradient, so it comes down once the orientation error is small."""
    config = LossConfig(kind="learned", init_s_x=0.0, init_s_q=8.0, max_s_q=-1.75)
    loss = PoseLoss(config)
    q_pred = torch.tensor([[1.0, 0.0, 0.0, 1.0]], requires_grad=True)  # 90° from the truth
    value, terms = loss(torch.zeros(1, 3), q_pred, torch.zeros(1, 3), Q_ID)
    l_q = terms["l_q"]
    assert terms["s_q"] == pytest.approx(-1.75)
    assert float(value.detach()) == pytest.approx(l_q * math.exp(1.75) - 1.75, rel=1e-5)
    value.backward()
    assert q_pred.grad.abs().max() > 1.0  # the rotation still drives the network (5.8 x its gradient)
    assert float(loss.s_q) == pytest.approx(-1.75)
    assert float(loss.s_q.grad) == pytest.approx(1.0 - l_q * math.exp(1.75), rel=1e-5)  # pushes up: held
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.1)
    for _ in range(3):  # a small orientation error: ŝq leaves its ceiling
        optimizer.zero_grad()
        value, terms = loss(torch.zeros(1, 3), Q_ID * 1.0, torch.zeros(1, 3), Q_ID)
        value.backward()
        optimizer.step()
    assert terms["s_q"] < -1.75 - 0.1


def test_squared_component_errors_name_the_axis_that_is_wrong():
    yaw_error = quat_exp_torch(torch.tensor([[0.0, 0.0, 0.5]]))
    _, terms = PoseLoss(LossConfig(kind="linear"))(torch.tensor([[0.0, 2.0, 0.0]]), yaw_error,
                                                   torch.zeros(1, 3), Q_ID)
    assert terms["sq_err_y"] == pytest.approx(4.0)
    assert terms["sq_err_rot_z"] == pytest.approx(0.25, rel=1e-4)
    assert terms["sq_err_x"] == terms["sq_err_z"] == 0.0
    assert terms["sq_err_rot_x"] == pytest.approx(0.0, abs=1e-10)
