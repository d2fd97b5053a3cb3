"""PoseNet model and checkpoints: outputs, explicit dropout modes, heads, and checkpoint errors."""

import numpy as np
import pytest
import torch

from posenet_ros.core.config import config_to_dict
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.runtime.checkpoint import CheckpointError, load_model, save_checkpoint


def make_model(**kw) -> PoseNet:
    torch.manual_seed(0)
    model = PoseNet(ModelConfig(backbone="mobilenet_v2", feature_dim=64, **kw))
    model.set_position_statistics(torch.tensor([1.0, 2.0, 3.0]), 2.0)
    return model.eval()


def test_outputs_are_metric_positions_and_canonical_unit_quaternions():
    model = make_model()
    out = model(torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    assert out.position_B3.shape == (3, 3) and out.log_var_BK is None
    assert torch.allclose(out.position_B3, torch.tensor([1.0, 2.0, 3.0]) + 2.0 * out.position_norm_B3)
    assert torch.allclose(out.quat_B4.norm(dim=1), torch.ones(3)) and (out.quat_B4[:, 0] >= 0).all()


def test_dropout_is_an_explicit_mode_not_train_or_eval():
    model = make_model()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    model.train()  # batch-norm statistics change in train(); compare in eval() for the dropout effect
    model.eval().set_dropout_mode("off")
    a, b = model(x).position_B3, model(x).position_B3
    assert torch.equal(a, b)
    model.set_dropout_mode("mc")
    torch.manual_seed(3)
    c = model(x).position_B3
    torch.manual_seed(3)
    d = model(x).position_B3
    e = model(x).position_B3
    assert torch.equal(c, d) and not torch.allclose(c, e)
    with pytest.raises(ValueError, match="dropout mode"):
        model.set_dropout_mode("on")


def test_head_only_sampling_matches_the_full_forward():
    model = make_model(head="spatial_lstm", lstm_hidden=8, aleatoric="per_axis")
    x = torch.rand(2, 3, 64, 64)
    full = model(x)
    features = model.forward_features(x)
    assert features.shape == (2, model.head_dim) == (2, 4 * 8)  # after the spatial LSTM
    assert torch.allclose(model.forward_head(features).position_B3, full.position_B3)
    assert full.log_var_BK.shape == (2, 6)


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = make_model()
    config = {"model": config_to_dict(model.config)}
    path = save_checkpoint(tmp_path / "model.safetensors", model, config, np.zeros((4, 7)))
    assert (tmp_path / "config.json").is_file()
    loaded = load_model(tmp_path)
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(loaded.model(x).position_B3, model(x).position_B3)
    assert loaded.model.dropout_mode == "off" and not loaded.model.training
    assert loaded.map_poses_N7.shape == (4, 7)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors: not a readable"):
        load_model(truncated)
    pickle = tmp_path / "model.pth"
    torch.save(model.state_dict(), pickle)
    with pytest.raises(CheckpointError, match=r"model\.pth: not a readable"):
        load_model(pickle)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_model(tmp_path / "missing.safetensors")
    # Weights of one architecture with the configuration of another.
    other = tmp_path / "other.safetensors"
    resnet_config = {"model": config_to_dict(ModelConfig(backbone="resnet18"))}
    save_checkpoint(other, model, resnet_config, np.zeros((1, 7)))
    with pytest.raises(CheckpointError, match="do not fit the stored architecture"):
        load_model(other)
