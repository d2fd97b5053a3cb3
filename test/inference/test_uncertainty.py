"""inference/uncertainty.py: MC-dropout sampling, quaternion averaging, the 6x6 covariance and its
calibrated scaling. The heteroscedastic loss is tested in training/test_losses.py, NEES calibration in
test_calibration.py, the loop-closure flag in test_loop_closure.py; the trained-model acceptance
(calibrate, then eval) in evaluation/test_calibrate.py."""


import numpy as np
import pytest
import torch

from posenet_ros.core.geometry import quat_exp, quat_multiply
from posenet_ros.inference.uncertainty import (
    PoseSamples,
    UncertaintyConfig,
    aleatoric_covariance,
    calibrated,
    estimate,
    fit_feature_covariance,
    head_dropout_masks,
    rotation_deviations,
    sample_poses,
    summarise,
)
from posenet_ros.models.posenet import ModelConfig, PoseNet


def small_model(**kwargs) -> PoseNet:
    torch.manual_seed(0)
    config = ModelConfig(backbone="resnet_tiny", feature_dim=64, dropout=0.3, **kwargs)
    return PoseNet(config).eval()


def random_quat(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


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
