"""inference/temporal.py (smoothing): the causal smoother runs in float32 under reduced-precision
autocast, equals the whole-sequence smoothing, passes a block it does not smooth through, drops its
state after unknown places in a row; and the jitter metric."""

from __future__ import annotations

import numpy as np
import torch
from node_support import make_checkpoint, random_temporal

from posenet_ros.inference.temporal import (
    CausalSmoother,
    TemporalCalibration,
    smooth_sequence,
    temporal_jitter,
)
from posenet_ros.runtime.checkpoint import load_model


def test_the_smoother_runs_in_float32_inside_a_reduced_precision_autocast(tmp_path):
    """The Relocalizer's network may run under bfloat16 autocast; the temporal state must not."""
    model = load_model(make_checkpoint(tmp_path / "model.safetensors")).model
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(5, 1, model.head_dim, generator=generator)
    position = torch.randn(5, 1, 3, generator=generator)
    quat = torch.nn.functional.normalize(torch.randn(5, 1, 4, generator=generator), dim=-1)

    def run(autocast: bool) -> np.ndarray:
        smoother = CausalSmoother(random_temporal(8, model.head_dim), model, TemporalCalibration())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return np.concatenate([smoother.update(features[t], position[t], quat[t]).position_T3
                                   for t in range(5)])

    np.testing.assert_array_equal(run(True), run(False))
    whole = smooth_sequence(random_temporal(8, model.head_dim), model, TemporalCalibration(), features[:, 0],
                            position[:, 0], quat[:, 0], "causal")
    np.testing.assert_allclose(whole.position_T3, run(False), rtol=0, atol=1e-6)


def test_a_block_not_smoothed_passes_the_per_frame_one_through(tmp_path):
    model = load_model(make_checkpoint(tmp_path / "model.safetensors")).model
    temporal = random_temporal(0, model.head_dim)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(6, model.head_dim, generator=generator)
    position = torch.randn(6, 3, generator=generator)
    quat = torch.nn.functional.normalize(torch.randn(6, 4, generator=generator), dim=-1).abs()
    both = smooth_sequence(temporal, model, TemporalCalibration(), features, position, quat, "causal")
    calibration = TemporalCalibration(causal_rotation_smoothed=False, offline_position_smoothed=False)
    mixed = smooth_sequence(temporal, model, calibration, features, position, quat, "causal")
    np.testing.assert_array_equal(mixed.position_T3, both.position_T3)
    np.testing.assert_array_equal(mixed.covariance_T66, both.covariance_T66)
    np.testing.assert_allclose(mixed.quat_T4, quat.double().numpy(), rtol=0, atol=1e-7)
    assert np.abs(both.quat_T4 - mixed.quat_T4).max() > 1e-3
    offline = smooth_sequence(temporal, model, calibration, features, position, quat, "offline")
    metres = (model.position_mean + model.position_scale * position).double().numpy()
    np.testing.assert_allclose(offline.position_T3, metres, rtol=0, atol=1e-6)


def test_unknown_places_in_a_row_reset_the_causal_smoother(tmp_path):
    model = load_model(make_checkpoint(tmp_path / "model.safetensors")).model
    # After `reset_after_unknown` unknown frames in a row the state is dropped.
    smoother = CausalSmoother(random_temporal(0, 8), model, TemporalCalibration(), reset_after_unknown=2)
    inputs = (torch.randn(1, 8), torch.zeros(1, 3), torch.tensor([[1.0, 0, 0, 0]]))
    first = smoother.update(*inputs, known_place=True).position_T3
    smoother.update(*inputs, known_place=False)
    again = smoother.update(*inputs, known_place=False).position_T3  # second unknown: reset, then step
    np.testing.assert_allclose(again, first, rtol=0, atol=1e-12)


def test_jitter_is_zero_for_a_perfect_trajectory_and_grows_with_noise():
    rng = np.random.default_rng(0)
    position = np.cumsum(rng.normal(size=(50, 3)), axis=0)
    quat = np.tile([1.0, 0.0, 0.0, 0.0], (50, 1))
    sequences = ["a"] * 25 + ["b"] * 25
    assert temporal_jitter(position, quat, position, quat, sequences)["median_jitter_position_m"] == 0.0
    noisy = position + rng.normal(scale=0.1, size=position.shape)
    jitter = temporal_jitter(noisy, quat, position, quat, sequences)["median_jitter_position_m"]
    assert 0.1 < jitter < 0.25  # |n1 - n2| of two N(0, 0.1²) vectors: median about 0.15 m
