"""RGB-D PoseNet (dual stream and early fusion): the depth encoding and its holes, the model's input
checks, pretrained filters for depth channels, the dataset's depth and hole augmentation, and the
Relocalizer's depth handling. The trained comparison with the RGB model is test_rgbd_acceptance.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from node_support import depth_frame, make_checkpoint, rgb_frame, stamp
from safetensors.torch import save_file

from posenet_ros.core.camera import FrameTransform
from posenet_ros.data.dataset import PoseDataset, hole_mask, network_input
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.models.backbones import build_backbone, load_pretrained
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.runtime.checkpoint import load_model
from posenet_ros.runtime.relocalizer import Relocalizer


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


def test_pretrained_rgb_filters_are_adapted_to_depth_channels(tmp_path):
    torch.manual_seed(0)
    rgb = build_backbone("resnet_tiny")
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    two = build_backbone("resnet_tiny", in_channels=2)
    five = build_backbone("resnet_tiny", in_channels=5)
    load_pretrained(two, path)
    load_pretrained(five, path)
    filters = rgb.conv1.weight.detach()
    mean = filters.mean(1, keepdim=True)
    torch.testing.assert_close(two.conv1.weight, mean.repeat(1, 2, 1, 1) * 1.5)
    torch.testing.assert_close(five.conv1.weight[:, :3], filters)
    torch.testing.assert_close(five.conv1.weight[:, 3:], mean.repeat(1, 2, 1, 1))
    torch.testing.assert_close(two.layer4[0].conv1.weight, rgb.layer4[0].conv1.weight)
    # The same value in every channel gives the RGB filters' response to a grey image.
    grey = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(two.conv1(grey.repeat(1, 2, 1, 1)), rgb.conv1(grey.repeat(1, 3, 1, 1)),
                                   rtol=1e-4, atol=1e-5)


def test_hole_mask_covers_the_share_in_blobs():
    rng = np.random.default_rng(0)
    for share in (0.0, 0.1, 0.3, 0.6):
        mask = hole_mask(48, 64, share, rng)
        assert mask.shape == (48, 64) and mask.dtype == bool
        assert abs(mask.mean() - share) < 0.01
    mask = hole_mask(48, 64, 0.3, rng)
    # Blobs, not salt and pepper: most holes have a hole as right-hand neighbour.
    assert (mask[:, 1:] & mask[:, :-1]).sum() / mask[:, :-1].sum() > 0.8


def _records(tmp_path, with_depth: bool) -> list[FrameRecord]:
    import cv2

    records = []
    for i in range(4):
        image_path = tmp_path / f"frame-{i}.color.png"
        cv2.imwrite(str(image_path), rgb_frame(i, 32, 24)[..., ::-1])
        depth_path = None
        if with_depth:
            depth_path = tmp_path / f"frame-{i}.depth.png"
            cv2.imwrite(str(depth_path), np.round(depth_frame(i, 32, 24) * 1000).astype(np.uint16))
        records.append(FrameRecord(image_path=image_path, depth_path=depth_path, world_from_cam=np.eye(4),
                                   intrinsics=None, sequence="seq", frame_index=i))
    return records


def test_dataset_depth_holes_and_network_input(tmp_path):
    records = _records(tmp_path, with_depth=True)
    plain = PoseDataset(records, FrameTransform(resize=None))[0]
    holed = PoseDataset(records, FrameTransform(resize=None, depth_holes=0.5), seed=3)
    shares = [float((holed[i]["depth"] == 0).float().mean()) for i in range(4)]
    assert all(0.0 <= s <= 0.51 for s in shares) and max(shares) > 0.05
    assert (plain["depth"] > 0).all()
    item = holed[1]
    assert torch.equal(holed[1]["depth"], item["depth"])  # a function of (seed, epoch, index)
    stacked = network_input(item, 4)
    assert stacked.shape == (4, 24, 32) and torch.equal(stacked[3:], item["depth"])
    assert torch.equal(network_input(item, 3), item["image"])
    # An RGB model's dataset need not read the depth; an RGB-D model's data must have it.
    assert "depth" not in PoseDataset(records, FrameTransform(resize=None), with_depth=False)[0]
    rgb_only = [dataclasses.replace(record, depth_path=None) for record in records]
    with pytest.raises(DatasetError, match=r"depth images are needed .* has none"):
        PoseDataset(rgb_only, FrameTransform(resize=None), with_depth=True)
    with pytest.raises(DatasetError, match="reads depth, but these frames have no depth"):
        network_input(PoseDataset(rgb_only, FrameTransform(resize=None))[0], 4)


def test_relocalizer_feeds_depth_to_an_rgbd_checkpoint(tmp_path):
    path = make_checkpoint(tmp_path / "model.safetensors", depth="early_fusion")
    assert load_model(path).model.config.depth == "early_fusion"
    relocalizer = Relocalizer(path, device="cpu")
    assert relocalizer.needs_depth
    rgb, depth = rgb_frame(0), depth_frame(0)
    with pytest.raises(ValueError, match="RGB-D model: it needs a depth image with every frame"):
        relocalizer.process(rgb, stamp_ns=stamp(0))
    with pytest.raises(ValueError, match="does not match the 40x30 px colour image"):
        relocalizer.process(rgb, depth[:20], stamp_ns=stamp(0))
    first = relocalizer.process(rgb, depth, stamp_ns=stamp(0))
    again = relocalizer.process(rgb, depth.astype(np.float64), stamp_ns=stamp(0))
    np.testing.assert_array_equal(first.position_3, again.position_3)
    holed = depth.copy()
    holed[hole_mask(30, 40, 0.3, np.random.default_rng(1))] = np.nan
    estimate = relocalizer.process(rgb, holed, stamp_ns=stamp(0))
    assert np.isfinite(estimate.position_3).all() and np.isfinite(estimate.covariance_66).all()
    # An RGB checkpoint ignores a depth image.
    rgb_model = Relocalizer(make_checkpoint(tmp_path / "rgb.safetensors"), device="cpu")
    assert not rgb_model.needs_depth
    np.testing.assert_array_equal(rgb_model.process(rgb, depth, stamp_ns=stamp(0)).position_3,
                                  rgb_model.process(rgb, stamp_ns=stamp(0)).position_3)
