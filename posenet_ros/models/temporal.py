"""Temporal smoothing of per-frame PoseNet estimates (VidLoc, Clark et al. CVPR 2017): an LSTM over
the frames of a sequence that learns the platform's dynamics and makes the poses consistent in time.

Per frame t the input is the per-frame model's CNN features φ_t (its head input, dropout off),
projected to `feature_dim`, and its deterministic pose: the position normalised by the scene
(`PoseNet.normalise_position`) and the unit quaternion (w, x, y, z), w >= 0. The output corrects that
pose: position_norm = input position_norm + Δp, quat = normalise(input quat + Δq), plus per-axis
log-variances (normalised position x, y, z; rotation about the world axes, rad²) of the corrected
pose. The output layers start at zero, so an untrained temporal model returns the per-frame poses.

Two modes share the input layer:
- causal (live): a forward LSTM; `step` feeds one frame and carries the (h, c) state, so the node can
  run it frame by frame; running it over a whole sequence at once gives the same outputs;
- offline (bidirectional smoothing): forward and backward LSTMs over the whole sequence, their
  states concatenated before the output layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from posenet_ros.geometry import quat_normalize_torch

SmoothMode = Literal["causal", "offline"]
OUTPUTS = 3 + 4 + 6  # Δ position_norm, Δ quaternion, log-variances (x, y, z, rx, ry, rz)


@dataclass
class TemporalConfig:
    """Architecture of the temporal model (stored in the checkpoint)."""

    hidden: int = 64  # LSTM width per direction
    feature_dim: int = 0  # > 0: the per-frame CNN features, projected to this width, are inputs too
    # (0: poses only; with few training sequences the features let the LSTM memorise places)

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.feature_dim < 0:
            raise ValueError("temporal.hidden must be >= 1 and temporal.feature_dim >= 0")


@dataclass
class TemporalOutput:
    """Smoothed poses of B sequences of T frames: position_norm_BT3 (scene-normalised), quat_BT4
    (unit, w >= 0), log_var_BT6 (normalised position x, y, z and rotation rx, ry, rz in rad²)."""

    position_norm_BT3: torch.Tensor
    quat_BT4: torch.Tensor
    log_var_BT6: torch.Tensor


State = tuple[torch.Tensor, torch.Tensor]  # LSTM (h, c), each (1, B, hidden)


class TemporalModel(nn.Module):
    """LSTM smoother over per-frame features and poses (see the module docstring)."""

    def __init__(self, config: TemporalConfig, cnn_feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.cnn_feature_dim = cnn_feature_dim
        self.project = nn.Linear(cnn_feature_dim, config.feature_dim) if config.feature_dim else None
        inputs = config.feature_dim + 7
        self.forward_lstm = nn.LSTM(inputs, config.hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(inputs, config.hidden, batch_first=True)
        self.causal_head = nn.Linear(config.hidden, OUTPUTS)
        self.offline_head = nn.Linear(2 * config.hidden, OUTPUTS)
        for head in (self.causal_head, self.offline_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.feature_dropout = nn.Dropout(0.0)  # set by training; identity in eval mode

    def _inputs(self, features_BTF: torch.Tensor, position_norm_BT3: torch.Tensor,
                quat_BT4: torch.Tensor) -> torch.Tensor:
        parts = [position_norm_BT3, quat_BT4]
        if self.project is not None:
            parts.insert(0, torch.relu(self.project(self.feature_dropout(features_BTF))))
        return torch.cat(parts, dim=-1)

    def _output(self, raw_BTK: torch.Tensor, position_norm_BT3: torch.Tensor,
                quat_BT4: torch.Tensor) -> TemporalOutput:
        quat = quat_normalize_torch(quat_BT4 + raw_BTK[..., 3:7])
        quat = torch.where(quat[..., :1] < 0, -quat, quat)
        return TemporalOutput(position_norm_BT3=position_norm_BT3 + raw_BTK[..., :3], quat_BT4=quat,
                              log_var_BT6=raw_BTK[..., 7:].clamp(-20.0, 20.0))

    def forward(self, features_BTF: torch.Tensor, position_norm_BT3: torch.Tensor, quat_BT4: torch.Tensor,
                mode: SmoothMode = "causal",
                state: State | None = None) -> tuple[TemporalOutput, State | None]:
        """Smooth B sequences of T frames. causal: returns the state after the last frame (pass it
        back to continue the sequence); offline: the whole sequence at once, state None."""
        x = self._inputs(features_BTF, position_norm_BT3, quat_BT4)
        forward, new_state = self.forward_lstm(x, state)
        if mode == "causal":
            return self._output(self.causal_head(forward), position_norm_BT3, quat_BT4), new_state
        if mode != "offline":
            raise ValueError(f"smoothing mode must be 'causal' or 'offline', got {mode!r}")
        if state is not None:
            raise ValueError("offline smoothing runs over whole sequences: no state can be passed")
        backward, _ = self.backward_lstm(x.flip(1))
        both = torch.cat([forward, backward.flip(1)], dim=-1)
        return self._output(self.offline_head(both), position_norm_BT3, quat_BT4), None

    def step(self, features_BF: torch.Tensor, position_norm_B3: torch.Tensor, quat_B4: torch.Tensor,
             state: State | None) -> tuple[TemporalOutput, State]:
        """One frame of B causal streams: outputs (B, 1, ...) and the state to pass with the next frame
        (None: the start of a stream)."""
        output, new_state = self.forward(features_BF[:, None], position_norm_B3[:, None], quat_B4[:, None],
                                         "causal", state)
        assert new_state is not None
        return output, new_state
