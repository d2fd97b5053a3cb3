"""Uncertainty: MC-dropout sampling, quaternion averaging, the 6x6 covariance, the heteroscedastic
loss, NEES calibration and the loop-closure flag (units; the trained-model acceptance is in
test_uncertainty_acceptance.py)."""

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
from posenet_ros.inference.loop_closure import (
    LoopClosureConfig,
    LoopClosureDetector,
    calibrate_thresholds,
    roc_auc,
    run_detector,
)
from posenet_ros.inference.uncertainty import (
    PoseSamples,
    UncertaintyConfig,
    aleatoric_covariance,
    average_quaternions,
    calibrated,
    estimate,
    fit_feature_covariance,
    head_dropout_masks,
    rotation_deviations,
    sample_poses,
    summarise,
)
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.runtime.checkpoint import CheckpointError, load_model, save_checkpoint, store_calibration
from posenet_ros.training.losses import LossConfig, PoseLoss, aleatoric_nll


def small_model(**kwargs) -> PoseNet:
    torch.manual_seed(0)
    config = ModelConfig(backbone="resnet_tiny", feature_dim=64, dropout=0.3, **kwargs)
    return PoseNet(config).eval()


def random_quat(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_quaternion_mean_ignores_sign_and_recovers_the_centre():
    rng = np.random.default_rng(0)
    centre = random_quat(rng, 1)[0]
    perturbations = quat_exp(rng.normal(scale=0.05, size=(200, 3)))
    samples = quat_multiply(perturbations, centre)
    samples[::2] *= -1  # q and -q are the same rotation
    mean = average_quaternions(torch.from_numpy(samples)[None])[0].numpy()
    centre = centre if centre[0] >= 0 else -centre
    assert mean[0] >= 0
    assert np.degrees(2 * np.arccos(min(1.0, abs(mean @ centre)))) < 0.5


def test_rotation_deviations_are_left_perturbations_about_world_axes():
    rng = np.random.default_rng(1)
    mean = torch.from_numpy(random_quat(rng, 3))
    delta = torch.from_numpy(rng.normal(scale=0.3, size=(3, 5, 3)))
    from posenet_ros.core.geometry import quat_exp_torch, quat_multiply_torch

    samples = quat_multiply_torch(quat_exp_torch(delta), mean[:, None, :].expand(3, 5, 4))
    torch.testing.assert_close(rotation_deviations(samples, mean), delta)


def test_summary_recovers_a_known_6d_covariance():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(6, 6)) * np.array([0.3, 0.3, 0.3, 0.02, 0.02, 0.02])[:, None]
    true_cov = A @ A.T
    draws = rng.multivariate_normal(np.zeros(6), true_cov, size=20000)
    centre_q = random_quat(rng, 1)[0]
    quats = quat_multiply(quat_exp(draws[:, 3:]), centre_q)
    samples = PoseSamples(position_BN3=torch.from_numpy(draws[None, :, :3] + [1.0, 2.0, 3.0]),
                          quat_BN4=torch.from_numpy(quats[None]), log_var_BNK=None)
    result = summarise(samples, position_scale_m=1.0, config=UncertaintyConfig())
    covariance = result.covariance_B66[0].numpy()
    np.testing.assert_allclose(covariance, covariance.T)
    np.testing.assert_allclose(covariance, true_cov, atol=0.03 * np.abs(true_cov).max())
    np.testing.assert_allclose(result.position_B3[0].numpy(), [1, 2, 3], atol=0.02)
    assert np.linalg.eigvalsh(covariance).min() > 0


def test_aleatoric_term_and_calibration_scaling():
    log_var = torch.log(torch.tensor([[[0.01, 0.04]], [[0.01, 0.04]]]))  # isotropic, B=2, N=1
    cov = aleatoric_covariance(log_var, position_scale_m=2.0, batch=2, dtype=torch.float64, device="cpu")
    np.testing.assert_allclose(torch.diagonal(cov[0]).numpy(), [0.04] * 3 + [0.04] * 3, rtol=1e-6)
    full = torch.eye(6, dtype=torch.float64)[None] + 0.5
    scaled = calibrated(full, 4.0, 9.0)
    assert float(scaled[0, 0, 0]) == pytest.approx(6.0) and float(scaled[0, 5, 5]) == pytest.approx(13.5)
    assert float(scaled[0, 0, 5]) == pytest.approx(0.5 * 6.0)  # cross terms by the geometric mean
    assert torch.linalg.eigvalsh(scaled).min() > 0


def test_mc_sampling_is_seeded_stochastic_and_leaves_no_trace():
    model = small_model()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with torch.inference_mode():
        a = sample_poses(model, images, 8, seed=5)
        b = sample_poses(model, images, 8, seed=5)
        c = sample_poses(model, images, 8, seed=6)
        plain_1 = model(images).position_B3
        plain_2 = model(images).position_B3
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG stream is untouched
    assert model.dropout_mode == "off"
    torch.testing.assert_close(a.position_BN3, b.position_BN3, rtol=0, atol=0)
    assert not torch.equal(a.position_BN3, c.position_BN3)
    assert a.position_BN3.shape == (2, 8, 3) and a.quat_BN4.shape == (2, 8, 4)
    assert a.position_BN3[:, 1:].sub(a.position_BN3[:, :1]).abs().max() > 1e-6  # samples differ
    torch.testing.assert_close(plain_1, plain_2, rtol=0, atol=0)  # dropout really off


def test_head_sampling_matches_per_sample_forward_passes():
    model = small_model()
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        samples = sample_poses(model, images, 4, seed=0)
        # The same masks applied one pass at a time: batching changes nothing but speed.
        masks = head_dropout_masks(1, 4, model.head_dim, model.config.dropout, 0, images.device)[0]
        features = model.forward_features(images)
        one_by_one = torch.cat([model.forward_head(features * mask).position_B3 for mask in masks])
    torch.testing.assert_close(samples.position_BN3[0], one_by_one)
    kept = masks > 0
    assert 0.55 < kept.float().mean() < 0.85  # p = 0.3 of the small model
    torch.testing.assert_close(masks[kept], torch.full_like(masks[kept], 1 / 0.7))  # scaled by 1 / (1 - p)


def test_full_network_sampling_needs_backbone_dropout():
    with pytest.raises(ValueError, match="backbone_dropout"):
        sample_poses(small_model(), torch.rand(1, 3, 32, 32), 4, mode="full")
    model = small_model(backbone_dropout=0.1)
    with torch.inference_mode():
        full = sample_poses(model, torch.rand(1, 3, 32, 32), 4, mode="full", seed=0)
    assert full.position_BN3.std(dim=1).max() > 0


def test_estimate_gives_psd_covariance_and_finite_score():
    model = small_model(aleatoric="per_axis")
    with torch.inference_mode():
        unfitted = estimate(model, torch.rand(3, 3, 32, 32), UncertaintyConfig(mc_samples=4))
        assert torch.isnan(unfitted.score_B).all()  # no feature memory yet: no known place
        model.feature_covariance.copy_(fit_feature_covariance(torch.rand(100, model.head_dim)))
        result = estimate(model, torch.rand(3, 3, 32, 32), UncertaintyConfig(mc_samples=16))
        deterministic = estimate(model, torch.rand(3, 3, 32, 32), UncertaintyConfig(mc_samples=0))
    assert torch.linalg.eigvalsh(result.covariance_B66).min() > 0
    assert torch.isfinite(result.score_B).all()
    torch.testing.assert_close(result.quat_B4.norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert torch.isfinite(deterministic.score_B).all() and torch.isinf(deterministic.mc_spread_B).all()
    assert torch.equal(deterministic.epistemic_B66, torch.zeros_like(deterministic.epistemic_B66))


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


def test_loop_closure_hysteresis():
    detector = LoopClosureDetector(LoopClosureConfig(enter_score=0.0, leave_score=1.0, min_frames=3))
    scores = [-1, -1, 5, -1, -1, -1, 0.5, 0.5, 2, 2, 0.9, 2, 2, 2, -1]
    flags = [detector.update(s) for s in scores]
    assert flags == [False, False, False, False, False, True, True, True, True, True, True, True, True,
                     False, False]
    detector.reset()
    assert not detector.update(-5)
    nan_detector = LoopClosureDetector(LoopClosureConfig(enter_score=0.0, leave_score=1.0, min_frames=1))
    assert nan_detector.update(-1) and not nan_detector.update(float("nan"))
    # Sequences run independently.
    per_sequence = run_detector(LoopClosureConfig(0.0, 0.0, 2), [-1, -1, -1, -1], ["a", "b", "a", "b"])
    assert per_sequence.tolist() == [False, False, True, True]
    with pytest.raises(ValueError):
        LoopClosureConfig(enter_score=2.0, leave_score=1.0)


def test_threshold_calibration_and_roc_auc():
    config = calibrate_thresholds(np.arange(101.0), 90, 99, 2)
    assert (config.enter_score, config.leave_score, config.min_frames) == (90.0, 99.0, 2)
    assert roc_auc([0, 1, 2], [3, 4]) == 1.0
    assert roc_auc([3, 4], [0, 1, 2]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    with pytest.raises(ValueError, match="finite"):
        calibrate_thresholds([float("inf")])


def test_calibration_round_trips_through_the_checkpoint(tmp_path):
    model = small_model()
    path = save_checkpoint(tmp_path / "model.safetensors", model, {"model": {"backbone": "resnet_tiny",
                                                                             "feature_dim": 64}},
                           np.zeros((1, 7)))
    loaded = load_model(path)
    assert not loaded.calibrated and loaded.uncertainty == UncertaintyConfig()
    store_calibration(path, UncertaintyConfig(mc_samples=8, position_scale=2.5, rotation_scale=0.5),
                      LoopClosureConfig(enter_score=-3.0, leave_score=-2.0, min_frames=4), {"frames": 10})
    loaded = load_model(path)
    assert loaded.calibrated
    assert loaded.uncertainty.position_scale == 2.5 and loaded.uncertainty.mc_samples == 8
    assert loaded.loop_closure == LoopClosureConfig(enter_score=-3.0, leave_score=-2.0, min_frames=4)
    torch.testing.assert_close(loaded.model.fc_position.weight, model.fc_position.weight)

    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={**loaded.metadata, "uncertainty": '{"mc_samples": -4}'})
    with pytest.raises(CheckpointError, match="calibration"):
        load_model(path)
