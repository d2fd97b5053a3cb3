"""models/temporal.py (VidLoc-style LSTM): the causal step equals the whole-sequence run, an untrained
model passes the per-frame poses through, and the mixture output (its most probable component,
trained on its likelihood, kept in the checkpoint)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from node_support import make_checkpoint, random_temporal

from posenet_ros.models.temporal import MixtureComponents, TemporalConfig, TemporalModel, TemporalOutput
from posenet_ros.runtime.checkpoint import load_model, store_temporal
from posenet_ros.training.temporal import output_nll


@pytest.mark.parametrize(("feature_dim", "components"), [(0, 1), (8, 1), (0, 3)])
def test_causal_steps_equal_the_whole_sequence(feature_dim, components):
    temporal = random_temporal(feature_dim, components=components)
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
    temporal = random_temporal(0, components=3)
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
