"""Scene coordinate regression (Shotton et al. CVPR 2013; DSAC*, Brachmann & Rother 2021; ACE,
Brachmann et al. 2023): a fully convolutional network predicting, for every cell of a grid over the
image, the 3D point of the scene seen there, in the map (world) frame, in metres.

images_B3HW (RGB in [0, 1]) -> the first stages of a ResNet backbone (conv1 ... layer2, output stride
8, torchvision parameter names under `encoder.`) -> a head of convolutions -> scene coordinates
coords_B3hw with h = ceil(H / 8), w = ceil(W / 8). Cell (i, j) belongs to the image pixel
(u, v) = (8 j + 4, 8 i + 4) (column, row; pixel centres at integers): `cell_pixels` gives them, and
training targets and the pose solver (inference/pose_solving.py) use exactly these pixels. Like ACE, the head
regresses coordinates relative to the scene: coords = scene_mean + scene_scale * output, the mean and
scale of the training camera positions held as buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from posenet_ros.models.backbones import BACKBONES, ResNetBackbone, build_backbone
from posenet_ros.models.posenet import IMAGENET_MEAN, IMAGENET_STD

STRIDE = 8  # pixels per output cell


@dataclass
class SceneCoordinateConfig:
    backbone: str = "resnet18"  # a ResNet: its stages up to layer2 (stride 8) are the encoder
    head_channels: int = 256  # width of the head's convolutions
    head_layers: int = 3  # 1x1 convolutions (with ReLU) after the head's first 3x3 convolution

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES or self.backbone == "mobilenet_v2":
            raise ValueError(f"scene coordinate regression needs a ResNet backbone, got {self.backbone!r}")
        if self.head_channels < 8 or self.head_layers < 0:
            raise ValueError("scr.head_channels must be >= 8 and scr.head_layers >= 0")

    @property
    def needs_depth(self) -> bool:
        """Scene coordinates are regressed from RGB alone (depth, when the data has it, only trains)."""
        return False


def cell_pixels(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """pixels_hw2: the (u, v) image pixel of each output cell of an H x W image, float32."""
    rows = torch.arange(-(-height // STRIDE), device=device, dtype=torch.float32) * STRIDE + STRIDE // 2
    cols = torch.arange(-(-width // STRIDE), device=device, dtype=torch.float32) * STRIDE + STRIDE // 2
    v, u = torch.meshgrid(rows.clamp(max=height - 1), cols.clamp(max=width - 1), indexing="ij")
    return torch.stack([u, v], dim=-1)


class SceneCoordinateNet(nn.Module):
    """forward(images_B3HW in [0, 1]) -> coords_B3hw, scene coordinates in metres (map frame)."""

    def __init__(self, config: SceneCoordinateConfig) -> None:
        super().__init__()
        self.config = config
        backbone = build_backbone(config.backbone)
        assert isinstance(backbone, ResNetBackbone)
        self.encoder = nn.Sequential()  # torchvision names: encoder.conv1, encoder.layer1, ...
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2"):
            self.encoder.add_module(name, getattr(backbone, name))
        channels = backbone.out_channels // 4  # layer2 has a quarter of layer4's channels
        layers: list[nn.Module] = [nn.Conv2d(channels, config.head_channels, 3, padding=1),
                                   nn.ReLU(inplace=True)]
        for _ in range(config.head_layers):
            layers += [nn.Conv2d(config.head_channels, config.head_channels, 1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(config.head_channels, 3, 1))
        self.head = nn.Sequential(*layers)
        with torch.no_grad():  # start near the scene's centre
            self.head[-1].weight.mul_(0.1)
            self.head[-1].bias.zero_()
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("scene_mean", torch.zeros(3))
        self.register_buffer("scene_scale", torch.ones(()))

    input_channels = 3

    def set_scene_statistics(self, mean_3: torch.Tensor, scale: float) -> None:
        """Coordinates are regressed as (coords - mean) / scale (metres)."""
        if not scale > 0:
            raise ValueError(f"scene scale must be positive, got {scale}")
        self.scene_mean.copy_(torch.as_tensor(mean_3, dtype=torch.float32))
        self.scene_scale.fill_(float(scale))

    def encode(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """The encoder's features (B, C, H/8, W/8) of RGB images in [0, 1]."""
        if images_B3HW.ndim != 4 or images_B3HW.shape[1] != 3:
            raise ValueError(f"the model takes (B, 3, H, W) RGB images, got {tuple(images_B3HW.shape)}")
        return self.encoder((images_B3HW - self.image_mean) / self.image_std)

    def forward(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        features = self.head[:-1](self.encode(images_B3HW))
        # The output layer runs in float32 under autocast: bfloat16 outputs (8 bits of mantissa) would
        # put the coordinates on a grid of about 1 cm (scene_scale 3 m).
        with torch.autocast(images_B3HW.device.type, enabled=False):
            output = self.head[-1](features.float())
        return self.scene_mean.view(1, 3, 1, 1) + self.scene_scale * output
