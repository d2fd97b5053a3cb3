"""models/posenet.py: outputs, explicit dropout modes, heads, and the RGB-D PoseNet (dual stream and
early fusion): four input channels, the depth encoding and its holes. (Checkpoints:
runtime/test_checkpoint.py.)"""

import math

import pytest
import torch

from posenet_ros.models.posenet import ModelConfig, PoseNet


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


def _model(depth: str, encoding: str = "inverse") -> PoseNet:
    torch.manual_seed(0)
    model = PoseNet(ModelConfig(backbone="resnet_tiny", feature_dim=32, depth=depth, depth_encoding=encoding))
    model.set_depth_scale(2.0)
    return model.eval()


@pytest.mark.parametrize("depth", ["dual_stream", "early_fusion"])
def test_rgbd_models_read_four_channels_and_use_the_depth(depth):
    model = _model(depth)
    assert model.input_channels == 4 and model.config.needs_depth
    assert "depth_scale" in dict(model.named_buffers())
    assert (model.depth_backbone is not None) == (depth == "dual_stream")
    generator = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 32, 32, generator=generator)
    depth_map = 0.5 + 3.0 * torch.rand(2, 1, 32, 32, generator=generator)
    with torch.no_grad():
        near = model(torch.cat([rgb, depth_map], 1)).position_B3
        far = model(torch.cat([rgb, 2.0 * depth_map], 1)).position_B3
    assert torch.isfinite(near).all() and not torch.allclose(near, far)
    with pytest.raises(ValueError, match=r"takes \(B, 4, H, W\) images \(RGB \+ depth\)"):
        model(rgb)
    with pytest.raises(ValueError, match=r"takes \(B, 3, H, W\) images \(RGB\)"):
        _rgb = PoseNet(ModelConfig(backbone="resnet_tiny", feature_dim=32))
        _rgb(torch.cat([rgb, depth_map], 1))


@pytest.mark.parametrize("encoding", ["inverse", "metric"])
def test_depth_encoding_and_holes(encoding):
    model = _model("dual_stream", encoding)
    depth = torch.tensor([[[[1.0, 2.0, 4.0, 0.0, float("nan"), float("inf"), -1.0, 1e-4]]]])
    encoded = model.encode_depth(depth)
    assert encoded.shape == (1, 2, 1, 8) and torch.isfinite(encoded).all()
    expected = [2.0, 1.0, 0.5] if encoding == "inverse" else [0.5, 1.0, 2.0]  # scale 2 m
    torch.testing.assert_close(encoded[0, 0, 0, :3], torch.tensor(expected))
    torch.testing.assert_close(encoded[0, 1, 0], torch.tensor([1.0, 1, 1, 0, 0, 0, 0, 1]))
    assert encoded[0, 0, 0, 3:7].abs().max() == 0  # holes: 0 in both channels
    assert 0 <= encoded[0, 0, 0, 7] <= 10  # clipped
    with pytest.raises(ValueError, match="positive number of metres"):
        model.set_depth_scale(0.0)
    with pytest.raises(ValueError, match="reads no depth"):
        PoseNet(ModelConfig(backbone="resnet_tiny", feature_dim=32)).set_depth_scale(1.0)


def test_aleatoric_log_variances_are_bounded_by_the_configured_sigmas():
    torch.manual_seed(0)
    model = PoseNet(ModelConfig(backbone="resnet_tiny", feature_dim=16, aleatoric="per_axis",
                                max_sigma_position=0.5, max_sigma_rotation_deg=10.0))
    raw = torch.tensor([[-12.0, 0.0, 60.0, -12.0, 0.0, 60.0]])
    bounded = model.bounded_log_var(raw)
    ceilings = torch.tensor([2 * math.log(0.5)] * 3 + [2 * math.log(math.radians(10.0))] * 3)
    assert torch.all(bounded <= ceilings + 1e-6)
    assert torch.allclose(bounded[0, [2, 5]], ceilings[[2, 5]], atol=1e-4)  # huge -> the ceiling
    assert torch.equal(bounded[0, [0, 3]], raw[0, [0, 3]])  # below the ceiling - 1: unchanged
    knee = ceilings - 1.0  # continuous with slope 1 at the knee
    values = torch.stack([knee - 1e-3, knee + 1e-3]).requires_grad_(True)
    out = model.bounded_log_var(values)
    assert torch.allclose(out[1] - out[0], torch.full((6,), 2e-3), atol=1e-5)
    out.sum().backward()
    assert torch.all(values.grad > 0.99)
    with torch.no_grad():  # the model's own outputs obey the bound whatever the layer says
        model.fc_log_var.bias.fill_(100.0)
    output = model.set_dropout_mode("off")(torch.rand(2, 3, 32, 32))
    assert torch.all(output.log_var_BK <= ceilings + 1e-6)
