"""Temporal smoothing (VidLoc-style LSTM): the causal step equals the whole-sequence run, a stamp gap
resets the live state, and, trained on the session's synthetic model (conftest.py), the smoothed poses
of the held-out test loops against the per-frame ones."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from node_support import TYPES, image, make_checkpoint, rgb_frame, stamp

from posenet_ros.cli import main
from posenet_ros.data.loading import load_frames
from posenet_ros.inference.temporal import (
    CausalSmoother,
    TemporalCalibration,
    smooth_sequence,
    temporal_jitter,
)
from posenet_ros.models.temporal import MixtureComponents, TemporalConfig, TemporalModel, TemporalOutput
from posenet_ros.node.dds_node import load_settings
from posenet_ros.node.pipeline import RelocalizationPipeline, build_relocalizer
from posenet_ros.ros.conversions import bool_msg
from posenet_ros.runtime.checkpoint import load_model, store_temporal
from posenet_ros.runtime.relocalizer import Relocalizer
from posenet_ros.training.temporal import FrameInputs, measured_motion_noise, output_nll


def _random_temporal(feature_dim: int, cnn_feature_dim: int = 64, components: int = 1) -> TemporalModel:
    torch.manual_seed(1)
    config = TemporalConfig(hidden=16, feature_dim=feature_dim, mixture_components=components)
    temporal = TemporalModel(config, cnn_feature_dim)
    with torch.no_grad():
        for head in (temporal.causal_head, temporal.offline_head):
            head.weight.normal_(0.0, 0.3)
    return temporal.eval()


@pytest.mark.parametrize(("feature_dim", "components"), [(0, 1), (8, 1), (0, 3)])
def test_causal_steps_equal_the_whole_sequence(feature_dim, components):
    temporal = _random_temporal(feature_dim, components=components)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 12, 64, generator=generator)
    position = torch.randn(1, 12, 3, generator=generator)
    quat = torch.nn.functional.normalize(torch.randn(1, 12, 4, generator=generator), dim=-1)
    with torch.no_grad():
        whole, _ = temporal(features, position, quat, "causal")
        state, steps = None, []
        for t in range(12):
            output, state = temporal.step(features[:, t], position[:, t], quat[:, t], state)
            steps.append(output)
        offline, _ = temporal(features, position, quat, "offline")
    torch.testing.assert_close(torch.cat([s.position_norm_BT3 for s in steps], 1), whole.position_norm_BT3,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([s.quat_BT4 for s in steps], 1), whole.quat_BT4,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([s.log_var_BT6 for s in steps], 1), whole.log_var_BT6,
                               rtol=1e-5, atol=1e-6)
    # The offline (bidirectional) mode sees the future: its first frame differs from the causal one.
    assert not torch.allclose(offline.position_norm_BT3[:, 0], whole.position_norm_BT3[:, 0])
    # An untrained model (zero output layers) returns the per-frame poses.
    config = TemporalConfig(hidden=16, feature_dim=feature_dim, mixture_components=components)
    fresh, _ = TemporalModel(config, 64)(features, position, quat)
    torch.testing.assert_close(fresh.position_norm_BT3, position)


def test_a_mixture_output_is_its_most_probable_component_and_trains_on_its_likelihood(tmp_path):
    temporal = _random_temporal(0, components=3)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 10, 64, generator=generator)
    true_position = torch.cumsum(0.05 * torch.randn(2, 10, 3, generator=generator), dim=1)
    true_quat = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(2, 10, 4)
    # Per-frame poses: the truth with a bias that jumps between two values (a two-mode error).
    position = true_position + torch.where(torch.rand(2, 10, 1, generator=generator) < 0.5, 0.3, -0.3)
    output, _ = temporal(features, position, true_quat, "causal")
    mixture = output.components
    assert mixture is not None and mixture.position_norm_BTK3.shape == (2, 10, 3, 3)
    top = mixture.log_weight_BTK.argmax(-1)[..., None, None]
    torch.testing.assert_close(output.position_norm_BT3, mixture.position_norm_BTK3.gather(
        2, top.expand(2, 10, 1, 3)).squeeze(2))
    torch.testing.assert_close(torch.logsumexp(mixture.log_weight_BTK, -1), torch.zeros(2, 10))
    # Identical components: the mixture's likelihood is the single Gaussian's.
    same = TemporalOutput(output.position_norm_BT3, output.quat_BT4, output.log_var_BT6)
    stacked = MixtureComponents(*(x[..., None, :].expand(*x.shape[:2], 3, x.shape[-1]) for x in (
        same.position_norm_BT3, same.quat_BT4, same.log_var_BT6)), torch.full((2, 10, 3), -math.log(3)))
    as_mixture = dataclasses.replace(same, components=stacked)
    torch.testing.assert_close(output_nll(as_mixture, true_position, true_quat),
                               output_nll(same, true_position, true_quat))
    # Training on the likelihood lowers it; the checkpoint keeps the mixture.
    optimizer = torch.optim.Adam(temporal.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = sum(output_nll(out, true_position, true_quat)
                   for out in temporal.offline_outputs(features, position, true_quat))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 1.0
    path = make_checkpoint(tmp_path / "model.safetensors")
    store_temporal(path, temporal.eval(), {"config": dataclasses.asdict(temporal.config), "calibration": {}})
    loaded = load_model(path).temporal
    assert loaded is not None and loaded.config.mixture_components == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(features, position, true_quat, "offline")[0].position_norm_BT3,
                                   temporal(features, position, true_quat, "offline")[0].position_norm_BT3)


def test_the_smoother_runs_in_float32_inside_a_reduced_precision_autocast(tmp_path):
    """The Relocalizer's network may run under bfloat16 autocast; the temporal state must not."""
    model = load_model(make_checkpoint(tmp_path / "model.safetensors")).model
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(5, 1, model.head_dim, generator=generator)
    position = torch.randn(5, 1, 3, generator=generator)
    quat = torch.nn.functional.normalize(torch.randn(5, 1, 4, generator=generator), dim=-1)

    def run(autocast: bool) -> np.ndarray:
        smoother = CausalSmoother(_random_temporal(8, model.head_dim), model, TemporalCalibration())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return np.concatenate([smoother.update(features[t], position[t], quat[t]).position_T3
                                   for t in range(5)])

    np.testing.assert_array_equal(run(True), run(False))
    whole = smooth_sequence(_random_temporal(8, model.head_dim), model, TemporalCalibration(), features[:, 0],
                            position[:, 0], quat[:, 0], "causal")
    np.testing.assert_allclose(whole.position_T3, run(False), rtol=0, atol=1e-6)


def test_a_block_not_smoothed_passes_the_per_frame_one_through(tmp_path):
    model = load_model(make_checkpoint(tmp_path / "model.safetensors")).model
    temporal = _random_temporal(0, model.head_dim)
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


def test_motion_noise_is_measured_per_axis_on_held_out_sequences():
    temporal = TemporalModel(TemporalConfig(hidden=4), 8)
    with torch.no_grad():
        for parameter in temporal.motion.parameters():
            parameter.zero_()  # the motion estimate is 0: its error is minus the true motion
    generator = torch.Generator().manual_seed(0)
    steps = torch.cumsum(torch.randn(2, 40, 3, generator=generator), dim=1) * 0.01  # correlated motion
    position = torch.cumsum(steps, dim=1).reshape(80, 3)
    identity = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(80, 1)
    inputs = FrameInputs(torch.randn(80, 8, generator=generator), position, identity, position, identity,
                         [list(range(40)), list(range(40, 80))])
    std, correlation = measured_motion_noise(temporal, inputs, stride=1)
    motion = steps[:, 1:]
    torch.testing.assert_close(std[:3], motion.square().mean((0, 1)).sqrt())
    assert torch.all(std[3:] == 0) and torch.all(correlation[:3] > 0.8)
    assert measured_motion_noise(temporal, inputs, stride=20) is None  # two frames per sequence: no pairs


def test_a_stamp_gap_and_unknown_places_reset_the_state(tmp_path):
    path = make_checkpoint(tmp_path / "model.safetensors")
    model = load_model(path).model
    store_temporal(path, _random_temporal(0, model.head_dim), {
        "config": {"hidden": 16, "feature_dim": 0}, "calibration": vars(TemporalCalibration())})
    settings = load_settings(None, str(path), ["reset_gap:=1.0"])

    def run(indices: list[int | str]) -> list:
        pipeline = RelocalizationPipeline(settings, build_relocalizer(settings), TYPES,
                                          lambda name, msg: None, queue_size=None)
        estimates = []
        for index in indices:
            if index == "reset":  # a std_msgs/Bool true on relocalization/reset
                pipeline.on_reset(bool_msg(TYPES, True))
                continue
            pipeline.on_image(image(index))
            estimates.append(pipeline.process_next(timeout=0))
        return estimates

    assert build_relocalizer(settings).smoother is not None
    # Frames 0, 1, 2 then frame 40 (4 s later, past reset_gap): frame 40 is answered as by a fresh node.
    with_gap = run([0, 1, 2, 40])
    fresh = run([40])
    np.testing.assert_allclose(with_gap[3].position_3, fresh[0].position_3, rtol=0, atol=1e-12)
    # Without a gap the history changes the answer.
    continuous = run([37, 38, 39, 40])
    assert np.abs(continuous[3].position_3 - fresh[0].position_3).max() > 1e-6
    # A reset requested on relocalization/reset (true) acts like a gap; false changes nothing.
    requested = run([37, 38, 39, "reset", 40])
    np.testing.assert_allclose(requested[3].position_3, fresh[0].position_3, rtol=0, atol=1e-12)
    # smoothing off: the per-frame pose; the smoothed covariance is the temporal model's diagonal.
    plain = Relocalizer(path, smoothing=False).process(rgb_frame(40), stamp_ns=stamp(40))
    smoothed = Relocalizer(path).process(rgb_frame(40), stamp_ns=stamp(40))
    assert np.abs(plain.position_3 - smoothed.position_3).max() > 1e-6
    assert np.count_nonzero(smoothed.covariance_66 - np.diag(np.diag(smoothed.covariance_66))) == 0
    # After `reset_after_unknown` unknown frames in a row the state is dropped.
    smoother = CausalSmoother(_random_temporal(0, 8), model, TemporalCalibration(), reset_after_unknown=2)
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


@pytest.fixture(scope="module")
def smoothed(trained_scene, trained_copy) -> dict[str, dict]:
    scene, run = trained_scene[0], trained_copy("temporal")
    assert main(["train-temporal", "--quiet", "--model", str(run), "--data", str(scene), "device=cpu"]) == 0
    results = {}
    for mode in ("off", "causal", "offline"):
        out = run.parent / f"eval_{mode}"
        assert main(["eval", "--quiet", "--model", str(run), "--data", str(scene), "--out", str(out),
                     "--mc-samples", "0", "--smooth", mode]) == 0
        results[mode] = json.loads((out / "metrics.json").read_text())["overall"]
    results["run"], results["scene"] = run, scene
    return results


def test_smoothing_lowers_error_and_jitter_on_held_out_frames(smoothed):
    for mode in ("off", "causal", "offline"):
        values = smoothed[mode]
        print(f"{mode:<8} median {values['median_position_error_m']:.4f} m "
              f"{values['median_orientation_error_deg']:.2f}°, "
              f"jitter {values['median_jitter_position_m']:.4f} m "
              f"{values['median_jitter_rotation_deg']:.3f}°")
    off, causal, offline = smoothed["off"], smoothed["causal"], smoothed["offline"]
    assert smoothed["off"]["frames"] == len(load_frames(smoothed["scene"], "test"))
    assert causal["median_jitter_position_m"] <= 0.7 * off["median_jitter_position_m"]
    assert offline["median_jitter_position_m"] <= 0.7 * off["median_jitter_position_m"]
    assert offline["median_position_error_m"] <= causal["median_position_error_m"]
    assert offline["median_position_error_m"] <= 0.9 * off["median_position_error_m"]
    # The issue asks the causal model for 10% lower median position error: 0.1966 -> 0.1699 m here
    # (-14%). On the scenes of seeds 1 and 2 it is -7% and -8%: the motion MLP's correlated errors
    # limit it (README, "Temporal smoothing (video localisation)").
    assert causal["median_position_error_m"] <= 0.9 * off["median_position_error_m"]
    # Smoothing made the orientation less accurate on the val loop, so it is passed through.
    for mode in (causal, offline):
        assert mode["median_orientation_error_deg"] <= 1.02 * off["median_orientation_error_deg"]
    assert math.isfinite(offline["median_jitter_rotation_deg"])


def test_replay_smooths_as_eval_does(smoothed):
    run, scene = smoothed["run"], smoothed["scene"]
    bag = run.parent / "bag"
    assert main(["make-bag", "--quiet", str(scene), str(bag), "--split", "test"]) == 0
    for replay_mode, eval_mode in (("node", "causal"), ("offline", "offline"), ("off", "off")):
        out = run.parent / f"replay_{replay_mode}"
        assert main(["replay", "--quiet", str(bag), "--model", str(run), "--out", str(out),
                     "--mc-samples", "0", "--smooth", replay_mode]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["smoothing"] == eval_mode and metrics["frames"] == smoothed["off"]["frames"]
        for key in ("median_position_error_m", "median_jitter_position_m"):
            if key in metrics:
                assert metrics[key] == pytest.approx(smoothed[eval_mode][key], abs=1e-5)
