"""Applying a trained temporal model (`models/temporal.py`) to per-frame estimates, and measuring
temporal consistency.

- `per_frame_inputs`: what the temporal model reads per frame (CNN features, deterministic pose).
- `smooth_sequence`: a whole sequence at once, causal or offline (bidirectional).
- `CausalSmoother`: frame by frame with carried state, for the live node; reset on request (the
  pipeline resets it on a stamp gap) and after `reset_after_unknown` consecutive unknown-place frames.
- `OdometryAidedSmoother`: the causal mode when the robot's odometry is known: the Kalman filter of
  inference/odometry_fusion.py, predicting with the odometry, or with the temporal model's learned
  motion for a frame without odometry.
- `temporal_jitter`: the median frame-to-frame jitter, | predicted relative motion - true relative
  motion | between consecutive frames of a sequence (metres and degrees).

Smoothed covariances are diagonal: exp(log-variance) of the temporal model, position variances in
metres² (normalised variance x scene scale²), rotation variances in rad² about the world axes,
multiplied per block by the scales fitted on the validation split (`TemporalCalibration`). A block
that smoothing made less accurate on the validation split is passed through: the per-frame position
(or orientation) with the smoothed, calibrated variances.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from posenet_ros.core.geometry import angular_error_deg, quat_conjugate, quat_multiply
from posenet_ros.inference.odometry_fusion import (
    FilterState,
    FusedPose,
    FusionParameters,
    LearnedMotion,
    OdometryFusion,
    OdometryIncrement,
    OdometryNoise,
    RobotOdometry,
)
from posenet_ros.models.posenet import PoseNet
from posenet_ros.models.temporal import SmoothMode, State, TemporalModel, TemporalOutput


@dataclass
class TemporalCalibration:
    """Fitted on the validation split per mode and block: covariance scales of the smoothed poses
    (1.0 = uncalibrated), and whether the block is smoothed or the per-frame one passed through."""

    causal_position: float = 1.0
    causal_rotation: float = 1.0
    offline_position: float = 1.0
    offline_rotation: float = 1.0
    causal_position_smoothed: bool = True
    causal_rotation_smoothed: bool = True
    offline_position_smoothed: bool = True
    offline_rotation_smoothed: bool = True

    def scales(self, mode: SmoothMode) -> tuple[float, float]:
        return ((self.causal_position, self.causal_rotation) if mode == "causal"
                else (self.offline_position, self.offline_rotation))

    def smoothed(self, mode: SmoothMode) -> tuple[bool, bool]:
        """(position, rotation): whether each block takes the temporal model's output."""
        return ((self.causal_position_smoothed, self.causal_rotation_smoothed) if mode == "causal"
                else (self.offline_position_smoothed, self.offline_rotation_smoothed))


@dataclass
class SmoothedPoses:
    """T smoothed frames: position_T3 (metres, map), quat_T4 (unit wxyz, w >= 0), covariance_T66."""

    position_T3: np.ndarray
    quat_T4: np.ndarray
    covariance_T66: np.ndarray


def per_frame_inputs(model: PoseNet,
                     images_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features_BF, position_norm_B3, quat_B4) of the per-frame model with dropout off: the
    temporal model's inputs. The model's dropout mode is restored."""
    previous = model.dropout_mode
    try:
        model.set_dropout_mode("off")
        features = model.forward_features(images_BCHW)
        output = model.forward_head(features)
    finally:
        model.set_dropout_mode(previous)
    return features, output.position_norm_B3, output.quat_B4


def head_inputs(model: PoseNet, features_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(position_norm_B3, quat_B4) of the deterministic head on features already computed."""
    previous = model.dropout_mode
    try:
        output = model.set_dropout_mode("off").forward_head(features_BF)
    finally:
        model.set_dropout_mode(previous)
    return output.position_norm_B3, output.quat_B4


def _to_poses(output: TemporalOutput, position_mean_3: torch.Tensor, scale: float,
              calibration: TemporalCalibration, mode: SmoothMode, position_norm_T3: torch.Tensor,
              quat_T4: torch.Tensor) -> SmoothedPoses:
    """TemporalOutput of one sequence (1, T, ...) -> metres (position_mean_3 + scale x normalised
    position), unit quaternions, covariances; the blocks not smoothed in `mode` from the per-frame
    inputs (position_norm_T3, quat_T4)."""
    smooth_position, smooth_rotation = calibration.smoothed(mode)
    position_norm = output.position_norm_BT3[0] if smooth_position else position_norm_T3
    quat = output.quat_BT4[0] if smooth_rotation else quat_T4
    position = (position_mean_3 + scale * position_norm).double()
    variance = output.log_var_BT6[0].double().exp()
    position_scale, rotation_scale = calibration.scales(mode)
    factors = torch.tensor([scale**2 * position_scale] * 3 + [rotation_scale] * 3, dtype=torch.float64,
                           device=variance.device)
    covariance = torch.diag_embed(variance * factors)
    return SmoothedPoses(position.cpu().numpy(), quat.double().cpu().numpy(), covariance.cpu().numpy())


def _float32(tensor: torch.Tensor) -> torch.autocast:
    """Autocast off on the tensor's device: the temporal model and its state stay float32 whatever
    precision the caller's network ran in (an LSTM state carried in bfloat16 drifts)."""
    return torch.autocast(tensor.device.type, enabled=False)


def smooth_sequence(temporal: TemporalModel, model: PoseNet, calibration: TemporalCalibration,
                    features_TF: torch.Tensor, position_norm_T3: torch.Tensor, quat_T4: torch.Tensor,
                    mode: SmoothMode) -> SmoothedPoses:
    """Smooth one sequence of T frames (in time order) at once, on the temporal model's device."""
    device = _device(temporal)
    features, position_norm, quat = (x.to(device, torch.float32)
                                     for x in (features_TF, position_norm_T3, quat_T4))
    with torch.inference_mode(), _float32(features):
        output, _ = temporal(features[None], position_norm[None], quat[None], mode)
    return _to_poses(output, model.position_mean.to(device), float(model.position_scale), calibration, mode,
                     position_norm, quat)


def _device(temporal: TemporalModel) -> torch.device:
    return next(temporal.parameters()).device


class CausalSmoother:
    """The causal temporal model over one live stream of frames (`update` per frame, in order), on the
    temporal model's device (the inputs are moved there)."""

    def __init__(self, temporal: TemporalModel, model: PoseNet, calibration: TemporalCalibration,
                 reset_after_unknown: int = 10) -> None:
        self.temporal, self.calibration = temporal, calibration
        self._device = _device(temporal)
        self._position_mean = model.position_mean.detach().to(self._device)
        self._position_scale = float(model.position_scale)
        self.reset_after_unknown = reset_after_unknown
        self._state: State | None = None
        self._unknown_streak = 0

    def reset(self) -> None:
        """Forget the stream (a stamp gap, a new sequence, or on request)."""
        self._state = None
        self._unknown_streak = 0

    def update(self, features_1F: torch.Tensor, position_norm_13: torch.Tensor, quat_14: torch.Tensor,
               known_place: bool = True) -> SmoothedPoses:
        """Smooth the next frame of the stream. After `reset_after_unknown` consecutive frames of an
        unknown place (0: never) the state is dropped first, so a relocalization after getting lost
        does not drag the old trajectory along."""
        self._unknown_streak = 0 if known_place else self._unknown_streak + 1
        if self.reset_after_unknown and self._unknown_streak >= self.reset_after_unknown:
            self._state = None
        features, position_norm, quat = (x.to(self._device, torch.float32)
                                         for x in (features_1F, position_norm_13, quat_14))
        with torch.inference_mode(), _float32(features):
            output, self._state = self.temporal.step(features, position_norm, quat, self._state)
        return _to_poses(output, self._position_mean, self._position_scale, self.calibration, "causal",
                         position_norm, quat)


class OdometryAidedSmoother:
    """The causal mode with odometry over one live stream of frames (`update` per frame, in order).

    Per frame the per-frame pose and its calibrated covariance are fused with the motion since the
    previous frame: the odometry's when this frame and the previous one have it (odom_from_base at
    their stamps, `noise` its error model), else the temporal model's learned motion from the two
    frames' features, with the error the training measured for it on held-out sequences
    (`FusionParameters.learned_motion_std`). When the odometry comes back after frames without it, the
    filter goes back to its state at the last frame that had odometry and moves it by the odometry's
    increment across the gap (the robot's odometry kept integrating while its messages were missing;
    an odometry that restarted from elsewhere is caught by the filter's innovation gate): the poses
    published on the learned motion in between are not kept in its history. Reset like
    `CausalSmoother`."""

    def __init__(self, temporal: TemporalModel, model: PoseNet, parameters: FusionParameters,
                 noise: OdometryNoise, reset_after_unknown: int = 10) -> None:
        self.temporal, self.filter, self.noise = temporal, OdometryFusion(parameters), noise
        self._device = _device(temporal)
        self._position_scale = float(model.position_scale)
        self._motion_variance = np.square(np.asarray(parameters.learned_motion_std, dtype=np.float64))
        self.reset_after_unknown = reset_after_unknown
        self.reset()

    def reset(self) -> None:
        """Forget the stream (a stamp gap, a new sequence, or on request)."""
        self.filter.reset()
        self._previous_features: torch.Tensor | None = None
        self._last_odometry: np.ndarray | None = None  # odom_from_base at the last frame with odometry
        self._before_gap: FilterState | None = None  # the filter then, while frames without odometry follow
        self._unknown_streak = 0

    def learned_motion(self, previous_1F: torch.Tensor, features_1F: torch.Tensor) -> LearnedMotion:
        """The temporal model's estimate of the motion between two frames, in metres and radians."""
        with torch.inference_mode(), _float32(features_1F):
            motion = self.temporal.estimate_motion(features_1F[:, None], previous_1F)[0, 0]
        motion = motion.double().cpu().numpy()
        return LearnedMotion(self._position_scale * motion[:3], motion[3:], self._motion_variance)

    def update(self, features_1F: torch.Tensor, position_3: np.ndarray, quat_4: np.ndarray,
               covariance_66: np.ndarray, odometry: RobotOdometry | None,
               known_place: bool = True) -> tuple[FusedPose, bool]:
        """Fuse the next frame: its head input features_1F, per-frame pose (metres, wxyz) and covariance
        (6, 6), and the robot's odometry at its stamp (None when there is none). Returns the fused pose
        and whether the learned motion stood in for missing odometry."""
        self._unknown_streak = 0 if known_place else self._unknown_streak + 1
        if self.reset_after_unknown and self._unknown_streak >= self.reset_after_unknown:
            self.filter.reset()
            self._last_odometry = self._before_gap = None
        features = features_1F.to(self._device, torch.float32)
        motion: OdometryIncrement | LearnedMotion | None = None
        fell_back = False
        if odometry is not None and self._last_odometry is not None and self.filter.started:
            if self._before_gap is not None:
                self.filter.restore(self._before_gap)
            motion = OdometryIncrement.from_base(self._last_odometry, odometry.odom_from_base,
                                                 odometry.base_from_cam, self.noise)
        elif self.filter.started and self._previous_features is not None:
            if self._last_odometry is not None and self._before_gap is None:  # a gap starts
                self._before_gap = self.filter.snapshot()
            motion, fell_back = self.learned_motion(self._previous_features, features), True
        fused = self.filter.update(position_3, quat_4, covariance_66, motion)
        self._previous_features = features
        if odometry is not None:
            self._last_odometry = np.array(odometry.odom_from_base, dtype=np.float64)
            self._before_gap = None
        return fused, fell_back


def temporal_jitter(position_pred_N3: np.ndarray, quat_pred_N4: np.ndarray, position_true_N3: np.ndarray,
                    quat_true_N4: np.ndarray, sequences: Sequence[str]) -> dict[str, float]:
    """Median frame-to-frame jitter over consecutive frames of the same sequence (frames in time
    order): position |Δp_pred - Δp_true| (metres) and the angle of the relative rotation between the
    predicted and the true frame-to-frame rotations (degrees). Frames without a pose (NaN) break the
    chain. NaN with fewer than two consecutive frames."""
    sequences = list(sequences)
    position_pred, position_true = np.asarray(position_pred_N3), np.asarray(position_true_N3)
    quat_pred, quat_true = np.asarray(quat_pred_N4), np.asarray(quat_true_N4)
    posed = np.isfinite(position_pred).all(axis=1) & np.isfinite(quat_pred).all(axis=1)
    same = np.array([a == b for a, b in itertools.pairwise(sequences)], dtype=bool) & posed[1:] & posed[:-1]
    if not same.any():
        return {"median_jitter_position_m": float("nan"), "median_jitter_rotation_deg": float("nan")}
    later, earlier = np.flatnonzero(same) + 1, np.flatnonzero(same)
    step_pred = position_pred[later] - position_pred[earlier]
    step_true = position_true[later] - position_true[earlier]
    relative_pred = quat_multiply(quat_pred[later], quat_conjugate(quat_pred[earlier]))
    relative_true = quat_multiply(quat_true[later], quat_conjugate(quat_true[earlier]))
    position = np.linalg.norm(step_pred - step_true, axis=1)
    rotation = angular_error_deg(relative_pred, relative_true)
    return {"median_jitter_position_m": float(np.median(position)),
            "median_jitter_rotation_deg": float(np.median(rotation))}
