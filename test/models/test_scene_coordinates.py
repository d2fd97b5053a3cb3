"""models/scene_coordinates.py: the scene coordinate network's output grid and its float32 precision
under bfloat16 autocast."""

from __future__ import annotations

import pytest
import torch

from posenet_ros.models.scene_coordinates import SceneCoordinateConfig, SceneCoordinateNet, cell_pixels


def test_network_grid_matches_the_cell_pixels():
    for backbone in ("resnet_tiny", "resnet18"):
        model = SceneCoordinateNet(SceneCoordinateConfig(backbone=backbone)).eval()
        with torch.no_grad():
            coords = model(torch.rand(1, 3, 60, 84))
        assert coords.shape == (1, 3, 8, 11) and cell_pixels(60, 84).shape == (8, 11, 2)
    assert cell_pixels(60, 84)[-1, -1].tolist() == [83.0, 59.0]  # clamped into the image
    with pytest.raises(ValueError, match="needs a ResNet backbone"):
        SceneCoordinateConfig(backbone="mobilenet_v2")


def test_coordinates_keep_float32_precision_under_bfloat16_autocast():
    torch.manual_seed(0)
    model = SceneCoordinateNet(SceneCoordinateConfig(backbone="resnet_tiny", head_channels=32)).eval()
    model.set_scene_statistics(torch.tensor([3.0, 2.0, 1.0]), 3.0)
    with torch.no_grad():
        model.head[-1].bias.fill_(0.7)  # outputs where the bfloat16 grid is 2^-8 (1.2 cm at scale 3 m)
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = model(images)
    # A bfloat16 output layer is off by 7 mm (median); in float32 the hidden layers' rounding is left.
    assert float((reduced - exact).norm(dim=1).median()) < 1e-3
