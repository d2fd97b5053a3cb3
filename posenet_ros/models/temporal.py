"""Temporal smoothing of per-frame PoseNet estimates (VidLoc, Clark et al. CVPR 2017): recurrent
filters over the frames of a sequence that make the poses consistent in time.

Per frame t the inputs are the per-frame model's CNN features φ_t (its head input, dropout off) and
its deterministic pose: the position normalised by the scene (`PoseNet.normalise_position`) and the
unit quaternion (w, x, y, z), w >= 0.

The per-frame errors on new views are correlated over many frames (a bias along stretches of the
trajectory), so averaging the absolute poses alone removes little of them. The model therefore also
estimates the relative motion between consecutive frames from their features (`motion`: an MLP over
φ_t - φ_{t-1} and φ_t + φ_{t-1}, trained on the true relative motion; a visual odometry that
generalises to new views far better than differences of the per-frame poses), and runs a learned
filter: an LSTM cell that, per frame, predicts the pose from its previous output moved by the
estimated motion, and reads the innovation (the per-frame pose relative to that prediction), the
motion, the orientation and optionally the projected features (`feature_dim`). Its output corrects the
per-frame pose: position_norm = input position_norm + Δp, quat = exp(δ) ⊗ input quat (δ a rotation
vector about the world axes), plus per-axis log-variances (normalised position x, y, z; rotation about
the world axes, rad²) of the corrected pose; or, with `mixture_components` K > 1, K such Gaussians
and their weights (a mixture density output, as VidLoc's), of which the most probable is the estimate
(and the pose the filter carries to the next frame). The innovations make the filter independent of
where in the map it runs. The output layers start at zero, so an untrained temporal model returns the
per-frame poses.

Two modes:
- causal (live): the forward filter; `step` feeds one frame and carries the state (LSTM (h, c), the
  previous frame's features and output pose), so the node can run it frame by frame; running it over
  a whole sequence at once gives the same outputs;
- offline (bidirectional smoothing): a second filter runs backwards in time (the motion reversed), and
  an output layer combines both filters' states and innovations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from posenet_ros.core.geometry import (
    quat_conjugate_torch,
    quat_exp_torch,
    quat_log_torch,
    quat_multiply_torch,
)

SmoothMode = Literal["causal", "offline"]
OUTPUTS = 3 + 3 + 6  # Δ position_norm, rotation vector, log-variances (x, y, z, rx, ry, rz)
MOTION = 6  # relative motion between consecutive frames: Δ position_norm, world-frame rotation vector


@dataclass
class TemporalConfig:
    """Architecture of the temporal model (stored in the checkpoint)."""

    hidden: int = 64  # LSTM width per direction
    feature_dim: int = 0  # > 0: the per-frame CNN features, projected to this width, are inputs too
    # (0: none; with few training sequences the features let the LSTM memorise places)
    motion_hidden: int = 128  # width of the relative-motion MLP over consecutive features (0: no motion)
    # Gaussians in the output (VidLoc's mixture density output): 1 = one Gaussian per frame; K > 1 = a
    # mixture of K, trained on its likelihood; the most probable component is the estimate.
    mixture_components: int = 1

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.feature_dim < 0 or self.motion_hidden < 0 or self.mixture_components < 1:
            raise ValueError("temporal.hidden and temporal.mixture_components must be >= 1, "
                             "temporal.feature_dim and temporal.motion_hidden >= 0")


@dataclass
class TemporalOutput:
    """Smoothed poses of B sequences of T frames: position_norm_BT3 (scene-normalised), quat_BT4
    (unit, w >= 0), log_var_BT6 (normalised position x, y, z and rotation rx, ry, rz in rad²). With a
    mixture output these are the most probable component's, and `components` holds all K."""

    position_norm_BT3: torch.Tensor
    quat_BT4: torch.Tensor
    log_var_BT6: torch.Tensor
    components: MixtureComponents | None = None


@dataclass
class MixtureComponents:
    """The K Gaussians of a mixture output: position_norm_BTK3, quat_BTK4, log_var_BTK6 as in
    TemporalOutput, and log_weight_BTK (log-softmax of the component logits)."""

    position_norm_BTK3: torch.Tensor
    quat_BTK4: torch.Tensor
    log_var_BTK6: torch.Tensor
    log_weight_BTK: torch.Tensor


def _output_layer(inputs: int, components: int) -> nn.Linear:
    """Per component OUTPUTS numbers, plus K logits when K > 1. Zero weights, so an untrained model
    returns the per-frame poses; the components' log-variance biases are spread over [-1, 1] so that
    their gradients differ from the first step (identical components would stay identical)."""
    layer = nn.Linear(inputs, components * OUTPUTS + (components if components > 1 else 0))
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    if components > 1:
        with torch.no_grad():
            spread = torch.linspace(-1.0, 1.0, components)
            layer.bias[:components * OUTPUTS].view(components, OUTPUTS)[:, 6:] = spread[:, None]
    return layer


def _top_component(raw_BR: torch.Tensor, components: int) -> torch.Tensor:
    """The raw outputs (..., OUTPUTS) of the most probable component (all of them when K = 1)."""
    if components == 1:
        return raw_BR
    per_component = raw_BR[..., :components * OUTPUTS].unflatten(-1, (components, OUTPUTS))
    top = raw_BR[..., components * OUTPUTS:].argmax(-1)
    return per_component.gather(-2, top[..., None, None].expand(*top.shape, 1, OUTPUTS)).squeeze(-2)


# Causal state: LSTM (h, c), each (B, hidden); the previous frame's features (B, F), output
# position_norm (B, 3) and quaternion (B, 4).
State = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _canonical(quat: torch.Tensor) -> torch.Tensor:
    return torch.where(quat[..., :1] < 0, -quat, quat)


def pair_motion_inputs(previous_NF: torch.Tensor, current_NF: torch.Tensor) -> torch.Tensor:
    """The motion MLP's input for consecutive frames' features."""
    return torch.cat([current_NF - previous_NF, current_NF + previous_NF], dim=-1)


def relative_motion(position_norm_a: torch.Tensor, quat_a: torch.Tensor, position_norm_b: torch.Tensor,
                    quat_b: torch.Tensor) -> torch.Tensor:
    """Motion (..., 6) from pose a to pose b: Δ position_norm and the rotation vector r (world axes)
    with quat_b = exp(r) ⊗ quat_a."""
    rotation = quat_log_torch(_canonical(quat_multiply_torch(quat_b, quat_conjugate_torch(quat_a))))
    return torch.cat([position_norm_b - position_norm_a, rotation], dim=-1)


class _Filter(nn.Module):
    """One direction: an LSTM cell over innovations and motion, and its output layer."""

    def __init__(self, inputs: int, hidden: int, components: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(inputs, hidden)
        self.head = _output_layer(hidden + 6, components)
        self.components = components

    def run(self, extra_BTE: torch.Tensor, position_norm_BT3: torch.Tensor, quat_BT4: torch.Tensor,
            motion_BT6: torch.Tensor, first_valid: bool, state: tuple | None
            ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], tuple]:
        """Per frame: hidden states, innovations (6) and raw outputs; `first_valid`: frame 0 has a
        predecessor (the previous pose in `state`)."""
        hidden_states, innovations, raws = [], [], []
        hc = None if state is None else (state[0], state[1])
        previous = None if state is None else (state[2], state[3])
        for t in range(position_norm_BT3.shape[1]):
            position, quat = position_norm_BT3[:, t], quat_BT4[:, t]
            has_previous = previous is not None and (t > 0 or first_valid)
            if has_previous:
                assert previous is not None
                predicted_position = previous[0] + motion_BT6[:, t, :3]
                turn = quat_exp_torch(motion_BT6[:, t, 3:])
                predicted_quat = _canonical(quat_multiply_torch(turn, previous[1]))
                innovation = relative_motion(predicted_position, predicted_quat, position, quat)
                motion = motion_BT6[:, t]
            else:
                innovation = position.new_zeros(position.shape[0], 6)
                motion = innovation
            flag = position.new_full((position.shape[0], 1), 1.0 if has_previous else 0.0)
            x = torch.cat([extra_BTE[:, t], innovation, motion, flag, quat], dim=-1)
            hc = self.cell(x, hc)
            raw = self.head(torch.cat([hc[0], innovation], dim=-1))
            top = _top_component(raw, self.components)
            out_position = position + top[:, :3]
            out_quat = _canonical(quat_multiply_torch(quat_exp_torch(top[:, 3:6]), quat))
            previous = (out_position, out_quat)
            hidden_states.append(hc[0])
            innovations.append(innovation)
            raws.append(raw)
        assert hc is not None and previous is not None
        return hidden_states, innovations, raws, (hc[0], hc[1], previous[0], previous[1])


class TemporalModel(nn.Module):
    """Learned motion-aided filters over per-frame poses (see the module docstring)."""

    def __init__(self, config: TemporalConfig, cnn_feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.cnn_feature_dim = cnn_feature_dim
        self.project = nn.Linear(cnn_feature_dim, config.feature_dim) if config.feature_dim else None
        self.motion = (nn.Sequential(nn.Linear(2 * cnn_feature_dim, config.motion_hidden), nn.ReLU(),
                                     nn.Linear(config.motion_hidden, MOTION))
                       if config.motion_hidden else None)
        inputs = config.feature_dim + 6 + MOTION + 1 + 4
        components = config.mixture_components
        self.forward_filter = _Filter(inputs, config.hidden, components)
        self.backward_filter = _Filter(inputs, config.hidden, components)
        self.offline_head = _output_layer(2 * config.hidden + 12, components)
        self.feature_dropout = nn.Dropout(0.0)  # set by training; identity in eval mode

    @property
    def causal_head(self) -> nn.Linear:
        return self.forward_filter.head

    def estimate_motion(self, features_BTF: torch.Tensor,
                        previous_BF: torch.Tensor | None = None) -> torch.Tensor:
        """Relative motion (B, T, 6) into each frame from the one before (`previous_BF` before frame 0;
        none: zero motion there)."""
        batch, frames = features_BTF.shape[:2]
        if self.motion is None or (frames == 1 and previous_BF is None):
            return features_BTF.new_zeros(batch, frames, MOTION)
        first = features_BTF[:, :1] if previous_BF is None else previous_BF[:, None]
        previous = torch.cat([first, features_BTF[:, :-1]], dim=1)
        motion = self.motion(pair_motion_inputs(previous, features_BTF))
        if previous_BF is None:
            motion = torch.cat([torch.zeros_like(motion[:, :1]), motion[:, 1:]], dim=1)
        return motion

    def _extra(self, features_BTF: torch.Tensor) -> torch.Tensor:
        if self.project is None:
            return features_BTF.new_zeros(*features_BTF.shape[:2], 0)
        return torch.relu(self.project(self.feature_dropout(features_BTF)))

    def _output(self, raw_BTR: torch.Tensor, position_norm_BT3: torch.Tensor,
                quat_BT4: torch.Tensor) -> TemporalOutput:
        """The corrected poses of the raw outputs (the most probable component's, and all K)."""
        def corrected(raw: torch.Tensor, position: torch.Tensor, quat: torch.Tensor):
            turned = _canonical(quat_multiply_torch(quat_exp_torch(raw[..., 3:6]), quat))
            return position + raw[..., :3], turned, raw[..., 6:].clamp(-20.0, 20.0)

        k = self.config.mixture_components
        output = TemporalOutput(*corrected(_top_component(raw_BTR, k), position_norm_BT3, quat_BT4))
        if k > 1:
            per_component = raw_BTR[..., :k * OUTPUTS].unflatten(-1, (k, OUTPUTS))
            output.components = MixtureComponents(
                *corrected(per_component, position_norm_BT3[..., None, :], quat_BT4[..., None, :]),
                log_weight_BTK=torch.log_softmax(raw_BTR[..., k * OUTPUTS:], dim=-1))
        return output

    def forward(self, features_BTF: torch.Tensor, position_norm_BT3: torch.Tensor, quat_BT4: torch.Tensor,
                mode: SmoothMode = "causal", state: State | None = None,
                motion_BT6: torch.Tensor | None = None) -> tuple[TemporalOutput, State | None]:
        """Smooth B sequences of T frames. causal: returns the state after the last frame (pass it
        back to continue the sequence); offline: the whole sequence at once, state None.
        `motion_BT6`: the relative motion into each frame (frame 0: ignored without a state) instead
        of the motion MLP's estimate (training)."""
        if mode not in ("causal", "offline"):
            raise ValueError(f"smoothing mode must be 'causal' or 'offline', got {mode!r}")
        if mode == "offline" and state is not None:
            raise ValueError("offline smoothing runs over whole sequences: no state can be passed")
        if motion_BT6 is None:
            motion_BT6 = self.estimate_motion(features_BTF, None if state is None else state[2])
        extra = self._extra(features_BTF)
        forward_state = None if state is None else (state[0], state[1], state[3], state[4])
        hidden, innovation, raw, (h, c, position, quat) = self.forward_filter.run(
            extra, position_norm_BT3, quat_BT4, motion_BT6, state is not None, forward_state)
        if mode == "causal":
            output = self._output(torch.stack(raw, 1), position_norm_BT3, quat_BT4)
            return output, (h, c, features_BTF[:, -1], position, quat)
        offline, _ = self._offline(hidden, innovation, features_BTF, position_norm_BT3, quat_BT4, motion_BT6,
                                   extra)
        return offline, None

    def offline_outputs(self, features_BTF: torch.Tensor, position_norm_BT3: torch.Tensor,
                        quat_BT4: torch.Tensor, motion_BT6: torch.Tensor | None = None
                        ) -> tuple[TemporalOutput, TemporalOutput, TemporalOutput]:
        """(causal, backward filter, offline) outputs of whole sequences (training)."""
        if motion_BT6 is None:
            motion_BT6 = self.estimate_motion(features_BTF)
        extra = self._extra(features_BTF)
        hidden, innovation, raw, _ = self.forward_filter.run(extra, position_norm_BT3, quat_BT4, motion_BT6,
                                                             False, None)
        causal = self._output(torch.stack(raw, 1), position_norm_BT3, quat_BT4)
        offline, backward = self._offline(hidden, innovation, features_BTF, position_norm_BT3, quat_BT4,
                                          motion_BT6, extra)
        return causal, backward, offline

    def _offline(self, hidden: list[torch.Tensor], innovation: list[torch.Tensor], features_BTF: torch.Tensor,
                 position_norm_BT3: torch.Tensor, quat_BT4: torch.Tensor, motion_BT6: torch.Tensor,
                 extra_BTE: torch.Tensor) -> tuple[TemporalOutput, TemporalOutput]:
        """(offline output, backward filter output): the backward filter runs over the sequence
        reversed in time (the motion reversed); the offline layer reads both filters' states and
        innovations."""
        forward_hidden, forward_innovation = hidden, innovation
        reversed_motion = torch.cat([torch.zeros_like(motion_BT6[:, :1]), -motion_BT6.flip(1)[:, :-1]], dim=1)
        hidden, innovation, raw, _ = self.backward_filter.run(
            extra_BTE.flip(1), position_norm_BT3.flip(1), quat_BT4.flip(1), reversed_motion, False, None)
        backward = self._output(torch.stack(raw, 1).flip(1), position_norm_BT3, quat_BT4)
        both = torch.cat([torch.stack(forward_hidden, 1), torch.stack(hidden, 1).flip(1),
                          torch.stack(forward_innovation, 1), torch.stack(innovation, 1).flip(1)], dim=-1)
        return self._output(self.offline_head(both), position_norm_BT3, quat_BT4), backward

    def step(self, features_BF: torch.Tensor, position_norm_B3: torch.Tensor, quat_B4: torch.Tensor,
             state: State | None) -> tuple[TemporalOutput, State]:
        """One frame of B causal streams: outputs (B, 1, ...) and the state to pass with the next frame
        (None: the start of a stream)."""
        output, new_state = self.forward(features_BF[:, None], position_norm_B3[:, None], quat_B4[:, None],
                                         "causal", state)
        assert new_state is not None
        return output, new_state
