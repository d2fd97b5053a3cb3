"""PoseNet (Kendall et al. ICCV 2015) with the variants the seed discusses.

images_BCHW -> backbone -> global average pool -> fully connected layer + ReLU (`feature_dim`) ->
[spatial LSTM head (Walch et al. ICCV 2017)] -> dropout -> position (3) and orientation (4,
normalised) [+ aleatoric log-variances].

The input has C = `input_channels` channels: RGB in [0, 1] (C = 3), followed for RGB-D models
(`depth` not "none") by depth in metres (C = 4; 0, NaN and inf are holes: a sensor's missing
pixels). RGB-D (the seed's dual-stream PoseNet):
- "dual_stream": the depth has its own backbone (`depth_backbone`, default the RGB one); the two
  pooled feature vectors are concatenated before the fully connected layer.
- "early_fusion": one backbone reads RGB and the encoded depth stacked as 5 channels.
The depth reaches a backbone as two channels: the encoded depth and a validity mask (1 valid,
0 hole). `depth_encoding` "inverse" (default) is s / d, a normalised disparity, which stays bounded
for far surfaces and is largest where geometry matters most, near the camera; "metric" is d / s.
s (`depth_scale`, metres, a buffer saved with the weights) is the median valid depth of the training
frames; encoded values are clipped to [0, 10] and holes are 0 in both channels.

- Positions are regressed normalised by the scene statistics held as buffers (`position_mean`,
  `position_scale`, saved with the weights): position = mean + scale * output.
- Orientation is the unit quaternion (w, x, y, z) of the `world_from_cam` rotation, returned with
  w >= 0 (q and -q are the same rotation).
- Dropout is an explicit mode, never tied to `train()` / `eval()`: "off" (deterministic), "train"
  (on while training) or "mc" (on for Monte-Carlo sampling). `backbone_dropout` > 0 adds dropout after
  every backbone stage (full-network MC dropout, as in Bayesian PoseNet); otherwise only the head
  is stochastic and `forward_features` / `forward_head` let the backbone run once per frame;
  `forward_samples` takes the head's dropout masks as an input (Monte-Carlo sampling as one
  deterministic function, the same in PyTorch, TorchScript, ONNX and a CUDA graph).
- `feature_covariance` (buffer, F x F with F the regressors' input width) is the posterior
  covariance of a Bayesian linear model on the training frames' features, (ΦᵀΦ + λI)⁻¹, fitted after
  training (`uncertainty.fit_feature_covariance`); φᵀ C φ is the last layer's epistemic variance of a
  frame with features φ, large for places unlike any training frame (the loop-closure score).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from posenet_ros.core.geometry import quat_normalize_torch
from posenet_ros.models.backbones import BACKBONES, ExplicitDropout, build_backbone, set_explicit_dropout

DropoutMode = Literal["off", "train", "mc"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_ENCODED_DEPTH = 10.0  # clip of the encoded depth (depth_scale / d or d / depth_scale)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    feature_dim: int = 1024  # width of the fully connected layer after pooling
    dropout: float = 0.5  # before the pose regressors (the seed: 0.5)
    head: Literal["fc", "spatial_lstm"] = "fc"
    lstm_hidden: int = 128  # spatial LSTM: hidden units per direction (4 directions)
    aleatoric: Literal["none", "isotropic", "per_axis"] = "none"  # log-variance outputs
    backbone_dropout: float = 0.0  # > 0: dropout after every backbone stage (full-network MC)
    depth: Literal["none", "dual_stream", "early_fusion"] = "none"  # RGB-D input (module docstring)
    depth_encoding: Literal["inverse", "metric"] = "inverse"
    depth_backbone: str = ""  # dual_stream: the depth stream's backbone; "" = the same as `backbone`
    # Ceilings of the aleatoric standard deviations (the log-variances approach them smoothly): per
    # position axis in units of the position scale (the training positions' RMS spread, so 1 is the
    # error of always answering the mean position), per rotation axis in degrees. A loss cannot then
    # give up on a pose component by inflating its variance: its error keeps a weight >= 1 / max σ².
    # inf: no ceiling (checkpoints written before the ceilings load so)
    max_sigma_position: float = 3.0
    max_sigma_rotation_deg: float = 60.0

    def __post_init__(self) -> None:
        for name in (self.backbone, self.depth_backbone or self.backbone):
            if name not in BACKBONES:
                raise ValueError(f"model backbone {name!r} is not one of {', '.join(BACKBONES)}")
        if self.feature_dim < 4:
            raise ValueError("model.feature_dim must be at least 4")
        for name in ("dropout", "backbone_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1)")
        if not (self.max_sigma_position > 0 and self.max_sigma_rotation_deg > 0):
            raise ValueError("model.max_sigma_position and max_sigma_rotation_deg must be > 0 (inf: no "
                             "ceiling, as in checkpoints written before them)")

    def log_var_ceilings(self, columns: int) -> torch.Tensor:
        """The log-variance ceilings (columns,) for K = 2 (position, rotation) or 6 (x, y, z, rx, ry, rz):
        log σ_max² with σ in units of the position scale and in radians."""
        position = 2.0 * math.log(self.max_sigma_position)
        rotation = 2.0 * math.log(math.radians(self.max_sigma_rotation_deg))
        half = columns // 2
        return torch.tensor([position] * half + [rotation] * half)

    @property
    def needs_depth(self) -> bool:
        """Whether the model reads a depth image with every frame."""
        return self.depth != "none"


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
    """PoseNet regressor. forward(images_BCHW) -> PoseOutput (C = `input_channels`: RGB in [0, 1], then
    depth in metres for RGB-D models)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.input_channels = 4 if config.needs_depth else 3
        self.backbone = build_backbone(config.backbone, config.backbone_dropout,
                                       in_channels=5 if config.depth == "early_fusion" else 3)
        self.depth_backbone = (build_backbone(config.depth_backbone or config.backbone,
                                              config.backbone_dropout, in_channels=2)
                               if config.depth == "dual_stream" else None)
        pooled = self.backbone.out_channels + (self.depth_backbone.out_channels if self.depth_backbone else 0)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(pooled, config.feature_dim)
        self.spatial_lstm = (SpatialLSTM(config.feature_dim, config.lstm_hidden)
                             if config.head == "spatial_lstm" else None)
        head_dim = self.spatial_lstm.out_dim if self.spatial_lstm is not None else config.feature_dim
        self.head_dim = head_dim
        self.dropout = ExplicitDropout(config.dropout)
        self.fc_position = nn.Linear(head_dim, 3)
        self.fc_quat = nn.Linear(head_dim, 4)
        log_var_dims = {"none": 0, "isotropic": 2, "per_axis": 6}[config.aleatoric]
        self.fc_log_var = nn.Linear(head_dim, log_var_dims) if log_var_dims else None
        self.log_var_ceiling: torch.Tensor | None = (config.log_var_ceilings(log_var_dims)
                                                     if log_var_dims else None)
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
        if config.needs_depth:
            self.register_buffer("depth_scale", torch.ones(()))
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

    def set_depth_scale(self, metres: float) -> None:
        """The depth normalisation of an RGB-D model: the median valid depth of the training frames."""
        if not self.config.needs_depth:
            raise ValueError("set_depth_scale: this model reads no depth (model.depth is 'none')")
        if not (math.isfinite(metres) and metres > 0):
            raise ValueError(f"depth scale must be a positive number of metres, got {metres}")
        self.depth_scale.fill_(float(metres))

    def encode_depth(self, depth_B1HW: torch.Tensor) -> torch.Tensor:
        """Depth in metres (holes 0, NaN or inf) -> (B, 2, H, W): the encoded depth and the validity
        mask (see the module docstring)."""
        valid = torch.isfinite(depth_B1HW) & (depth_B1HW > 0)
        depth = torch.where(valid, depth_B1HW, torch.ones_like(depth_B1HW))
        inverse = self.config.depth_encoding == "inverse"
        ratio = self.depth_scale / depth if inverse else depth / self.depth_scale
        encoded = torch.where(valid, ratio.clamp(0.0, MAX_ENCODED_DEPTH), torch.zeros_like(ratio))
        return torch.cat([encoded, valid.to(encoded.dtype)], dim=1)

    def forward_features(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        """Everything before the head dropout: images -> features (B, head_dim), the input of the
        regressors (after the spatial LSTM when there is one)."""
        if images_BCHW.ndim != 4 or images_BCHW.shape[1] != self.input_channels:
            kind = "RGB + depth" if self.config.needs_depth else "RGB"
            raise ValueError(f"the model takes (B, {self.input_channels}, H, W) images ({kind}), got "
                             f"{tuple(images_BCHW.shape)}")
        x = (images_BCHW[:, :3] - self.image_mean) / self.image_std
        depth = self.encode_depth(images_BCHW[:, 3:]) if self.config.needs_depth else None
        if depth is not None and self.depth_backbone is None:  # early fusion
            x = torch.cat([x, depth], dim=1)
        pooled = self.pool(self.backbone(x)).flatten(1)
        if depth is not None and self.depth_backbone is not None:
            pooled = torch.cat([pooled, self.pool(self.depth_backbone(depth)).flatten(1)], dim=1)
        x = torch.relu(self.fc(pooled))
        return self.spatial_lstm(x) if self.spatial_lstm is not None else x

    def forward_head(self, features_BF: torch.Tensor) -> PoseOutput:
        """Features (B, head_dim) -> poses; holds the head dropout (sampled in MC mode)."""
        x = self.dropout(features_BF)
        position_norm = self.fc_position(x)
        return PoseOutput(
            position_B3=self.position_mean + self.position_scale * position_norm,
            quat_B4=quat_normalize_torch(self.fc_quat(x)),
            position_norm_B3=position_norm,
            log_var_BK=self.bounded_log_var(self.fc_log_var(x)) if self.fc_log_var is not None else None,
        )

    def bounded_log_var(self, raw_BK: torch.Tensor) -> torch.Tensor:
        """The aleatoric log-variances, smoothly bounded above by the configured ceilings c: the raw
        value up to c - 1, then c - exp(-(raw - c + 1)), which continues it with slope 1 at c - 1 and
        approaches c (so a checkpoint's log-variances below c - 1 are exactly what they were)."""
        if not math.isfinite(self.config.max_sigma_position * self.config.max_sigma_rotation_deg):
            return raw_BK  # no ceiling (a checkpoint written before them)
        ceiling = self.log_var_ceiling.to(device=raw_BK.device, dtype=raw_BK.dtype)
        knee = ceiling - 1.0
        saturated = ceiling - torch.exp(-(torch.maximum(raw_BK, knee) - knee))
        return torch.where(raw_BK < knee, raw_BK, saturated)

    def forward(self, images_BCHW: torch.Tensor) -> PoseOutput:
        return self.forward_head(self.forward_features(images_BCHW))

    def forward_samples(self, images_BCHW: torch.Tensor,
                        masks_BNF: torch.Tensor) -> tuple[torch.Tensor, PoseOutput]:
        """Head Monte-Carlo dropout with explicit masks: the backbone once per image, the head over N
        masked copies of its features. masks_BNF (N samples per image, F = head_dim) are the dropout
        masks already scaled by 1 / (1 - p) (all ones: the deterministic head); the model's own dropout
        must be off. Returns features_BF and the head's outputs for the B * N rows (image-major).
        The exported network (export.py) is exactly this function."""
        features = self.forward_features(images_BCHW)
        masked = (features[:, None, :] * masks_BNF).reshape(-1, features.shape[-1])
        return features, self.forward_head(masked)
