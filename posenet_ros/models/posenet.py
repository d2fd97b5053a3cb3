"""PoseNet (Kendall et al. ICCV 2015) with the variants the seed discusses.

images_B3HW (RGB in [0, 1]) -> backbone -> global average pool -> fully connected layer + ReLU
(`feature_dim`) -> [spatial LSTM head (Walch et al. ICCV 2017)] -> dropout -> position (3) and
orientation (4, normalised) [+ aleatoric log-variances].

- Positions are regressed normalised by the scene statistics held as buffers (`position_mean`,
  `position_scale`, saved with the weights): position = mean + scale * output.
- Orientation is the unit quaternion (w, x, y, z) of the `world_from_cam` rotation, returned with
  w >= 0 (q and -q are the same rotation).
- Dropout is an explicit mode, never tied to `train()` / `eval()`: "off" (deterministic), "train"
  (on while training) or "mc" (on for Monte-Carlo sampling). `backbone_dropout` > 0 adds dropout after
  every backbone stage (full-network MC dropout, as in Bayesian PoseNet); otherwise only the head
  is stochastic and `forward_features` / `forward_head` let the backbone run once per frame.
- `feature_covariance` (buffer, F x F with F the regressors' input width) is the posterior
  covariance of a Bayesian linear model on the training frames' features, (ΦᵀΦ + λI)⁻¹, fitted after
  training (`uncertainty.fit_feature_covariance`); φᵀ C φ is the last layer's epistemic variance of a
  frame with features φ, large for places unlike any training frame (the loop-closure score).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from posenet_ros.geometry import quat_normalize_torch
from posenet_ros.models.backbones import BACKBONES, ExplicitDropout, build_backbone, set_explicit_dropout

DropoutMode = Literal["off", "train", "mc"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    feature_dim: int = 1024  # width of the fully connected layer after pooling
    dropout: float = 0.5  # before the pose regressors (the seed: 0.5)
    head: Literal["fc", "spatial_lstm"] = "fc"
    lstm_hidden: int = 128  # spatial LSTM: hidden units per direction (4 directions)
    aleatoric: Literal["none", "isotropic", "per_axis"] = "none"  # log-variance outputs
    backbone_dropout: float = 0.0  # > 0: dropout after every backbone stage (full-network MC)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"model.backbone {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        if self.feature_dim < 4:
            raise ValueError("model.feature_dim must be at least 4")
        for name in ("dropout", "backbone_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1)")


@dataclass
class PoseOutput:
    """Network outputs for a batch; positions in metres in the world frame."""

    position_B3: torch.Tensor
    quat_B4: torch.Tensor  # unit, w >= 0
    position_norm_B3: torch.Tensor  # (position - position_mean) / position_scale
    log_var_BK: torch.Tensor | None  # K = 2 (isotropic: position, orientation) or 6 (x, y, z, rx, ry, rz)


class SpatialLSTM(nn.Module):
    """Walch et al.'s structured feature correlation: the feature vector (B, F) is reshaped into a
    rows x cols grid read by bidirectional LSTMs along rows and along columns (four directions); the
    final hidden states are concatenated into (B, 4 * hidden)."""

    def __init__(self, feature_dim: int, hidden: int) -> None:
        super().__init__()
        rows = max(d for d in range(1, int(feature_dim**0.5) + 1) if feature_dim % d == 0)
        self.rows, self.cols = rows, feature_dim // rows
        self.lstm_rows = nn.LSTM(self.cols, hidden, batch_first=True, bidirectional=True)
        self.lstm_cols = nn.LSTM(self.rows, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 4 * hidden

    def forward(self, features_BF: torch.Tensor) -> torch.Tensor:
        grid = features_BF.reshape(-1, self.rows, self.cols)
        _, (h_rows, _) = self.lstm_rows(grid)  # h: (2 directions, B, hidden)
        _, (h_cols, _) = self.lstm_cols(grid.transpose(1, 2))
        return torch.cat([h_rows[0], h_rows[1], h_cols[0], h_cols[1]], dim=1)


class PoseNet(nn.Module):
    """PoseNet regressor. forward(images_B3HW in [0, 1]) -> PoseOutput."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone, config.backbone_dropout)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.backbone.out_channels, config.feature_dim)
        self.spatial_lstm = (SpatialLSTM(config.feature_dim, config.lstm_hidden)
                             if config.head == "spatial_lstm" else None)
        head_dim = self.spatial_lstm.out_dim if self.spatial_lstm is not None else config.feature_dim
        self.head_dim = head_dim
        self.dropout = ExplicitDropout(config.dropout)
        self.fc_position = nn.Linear(head_dim, 3)
        self.fc_quat = nn.Linear(head_dim, 4)
        log_var_dims = {"none": 0, "isotropic": 2, "per_axis": 6}[config.aleatoric]
        self.fc_log_var = nn.Linear(head_dim, log_var_dims) if log_var_dims else None
        with torch.no_grad():  # start at the mean position and the identity-ish orientation
            self.fc_position.weight.mul_(0.1)
            self.fc_position.bias.zero_()
            self.fc_quat.weight.mul_(0.1)
            self.fc_quat.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("position_mean", torch.zeros(3))
        self.register_buffer("position_scale", torch.ones(()))
        self.register_buffer("feature_covariance", torch.zeros(head_dim, head_dim))
        self._dropout_mode: DropoutMode = "off"

    @property
    def dropout_mode(self) -> DropoutMode:
        return self._dropout_mode

    def set_dropout_mode(self, mode: DropoutMode) -> PoseNet:
        """Switch every dropout of the model: 'off', 'train' or 'mc'. Returns self."""
        if mode not in ("off", "train", "mc"):
            raise ValueError(f"dropout mode must be 'off', 'train' or 'mc', got {mode!r}")
        set_explicit_dropout(self, mode != "off")
        self._dropout_mode = mode
        return self

    def set_position_statistics(self, mean_3: torch.Tensor, scale: float) -> None:
        """Scene normalisation: positions are regressed as (position - mean) / scale."""
        if not scale > 0:
            raise ValueError(f"position scale must be positive, got {scale}")
        self.position_mean.copy_(torch.as_tensor(mean_3, dtype=torch.float32))
        self.position_scale.fill_(float(scale))

    def normalise_position(self, position_B3: torch.Tensor) -> torch.Tensor:
        return (position_B3 - self.position_mean) / self.position_scale

    def forward_features(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Everything before the head dropout: images -> features (B, head_dim), the input of the
        regressors (after the spatial LSTM when there is one)."""
        x = (images_B3HW - self.image_mean) / self.image_std
        x = torch.relu(self.fc(self.pool(self.backbone(x)).flatten(1)))
        return self.spatial_lstm(x) if self.spatial_lstm is not None else x

    def forward_head(self, features_BF: torch.Tensor) -> PoseOutput:
        """Features (B, head_dim) -> poses; holds the head dropout (sampled in MC mode)."""
        x = self.dropout(features_BF)
        position_norm = self.fc_position(x)
        return PoseOutput(
            position_B3=self.position_mean + self.position_scale * position_norm,
            quat_B4=quat_normalize_torch(self.fc_quat(x)),
            position_norm_B3=position_norm,
            log_var_BK=self.fc_log_var(x) if self.fc_log_var is not None else None,
        )

    def forward(self, images_B3HW: torch.Tensor) -> PoseOutput:
        return self.forward_head(self.forward_features(images_B3HW))
