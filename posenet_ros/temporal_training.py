"""Training the temporal model on windows of consecutive frames: `posenet-ros train-temporal`.

Starts from a trained per-frame PoseNet checkpoint with its backbone frozen: the per-frame model's
inputs to the temporal model (CNN features, deterministic pose; `smoothing.per_frame_inputs`) are
computed once for every training frame. First the temporal model's relative-motion MLP is fitted to
the true motion between consecutive training frames (`stride` frames apart; `motion_epochs` full-batch
steps, the features passing a dropout `feature_dropout`) and frozen; then the filters are trained on
windows of `window` frames taken every `stride` frames (a stride > 1 trains on a faster platform) from
each sequence, with the motion MLP's estimates as their motion input.

On its own training frames the per-frame model is far more accurate than on new views, so a smoother
trained on those predictions would learn to trust them blindly. The input poses are therefore
perturbed with noise that is correlated along the window, as the per-frame errors on new views are
(an AR(1) process with coefficient `noise_correlation`, standard deviation `position_noise` in
scene-normalised units and `rotation_noise_deg`), the motion estimates with white noise
(`motion_noise`, `motion_rotation_noise_deg`; the motion MLP is overfit on its training pairs too),
the CNN features (when `model.feature_dim` > 0) pass a dropout (`feature_dropout`), and each window
may be shifted by a random translation (input and truth alike, `translation_augmentation`; the
filters read only pose differences, so this matters only to custom variants). The loss is the
heteroscedastic Gaussian negative log-likelihood of the true pose under the output (position in
normalised units, rotation vector in radians), summed over the causal, the backward and the offline
outputs.

After training, the covariance of each mode is calibrated on `val_split` when the data has it (one
scale per block making the mean NEES 3), and the model is stored in the checkpoint
(`checkpoint.store_temporal`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from posenet_ros.calibration import nees
from posenet_ros.checkpoint import load_model, store_temporal
from posenet_ros.data.bag_dataset import bag_config_for_checkpoint
from posenet_ros.data.dataset import PoseDataset, network_input, pose_vector
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.data.loading import load_frames
from posenet_ros.device import resolve_device
from posenet_ros.evaluation import eval_transform
from posenet_ros.geometry import quat_conjugate_torch, quat_exp_torch, quat_log_torch, quat_multiply_torch
from posenet_ros.models.posenet import PoseNet
from posenet_ros.models.temporal import (
    MOTION,
    TemporalConfig,
    TemporalModel,
    pair_motion_inputs,
    relative_motion,
)
from posenet_ros.smoothing import TemporalCalibration, smooth_sequence

logger = logging.getLogger(__name__)


@dataclass
class TemporalTrainConfig:
    seed: int = 0
    device: str = "auto"
    window: int = 16  # frames per training window
    stride: int = 1  # frames between consecutive window members
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    feature_dropout: float = 0.5
    position_noise: float = 0.2  # std of the input position noise, scene-normalised units
    rotation_noise_deg: float = 3.0  # std of the input rotation noise per axis
    noise_correlation: float = 0.8  # AR(1) coefficient of the noise between consecutive window frames
    translation_augmentation: float = 0.0  # std of a random shift of each window (scene-normalised units)
    motion_epochs: int = 300  # full-batch steps fitting the relative-motion MLP
    motion_lr: float = 1e-3
    motion_noise: float = 0.015  # std of the noise on the estimated motion, scene-normalised units per axis
    motion_rotation_noise_deg: float = 0.5  # std of the noise on the estimated rotation per axis
    train_split: str = "train"
    val_split: str = "val"  # calibration of the smoothed covariance; "" or missing: uncalibrated
    model: TemporalConfig = field(default_factory=TemporalConfig)

    def __post_init__(self) -> None:
        if self.window < 2 or self.stride < 1 or self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("train-temporal needs window >= 2, stride >= 1, epochs >= 1, batch_size >= 1 "
                             "and lr > 0")
        if not 0 <= self.noise_correlation < 1 or min(self.position_noise, self.rotation_noise_deg,
                                                      self.motion_noise, self.motion_rotation_noise_deg) < 0:
            raise ValueError("noise_correlation must be in [0, 1) and the noise levels >= 0")
        if self.motion_epochs < 0 or not self.motion_lr > 0:
            raise ValueError("train-temporal needs motion_epochs >= 0 and motion_lr > 0")


@dataclass
class FrameInputs:
    """Per-frame temporal inputs of N frames and their truth (float32 tensors on the device)."""

    features_NF: torch.Tensor
    position_norm_N3: torch.Tensor
    quat_N4: torch.Tensor
    true_position_norm_N3: torch.Tensor
    true_quat_N4: torch.Tensor
    sequences: list[list[int]]  # frame indices of each sequence, in time order


def compute_inputs(model: PoseNet, records: list[FrameRecord], config: dict[str, Any], device: torch.device,
                   batch_size: int = 32, progress: bool = False) -> FrameInputs:
    """Run the frozen per-frame model (dropout off) over `records` once."""
    from posenet_ros.smoothing import per_frame_inputs

    dataset = PoseDataset(records, eval_transform(config), with_depth=model.config.needs_depth)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    parts: dict[str, list[torch.Tensor]] = {"features": [], "position": [], "quat": []}
    with torch.inference_mode():
        for batch in tqdm(loader, desc="temporal inputs", unit="batch", disable=not progress, leave=False):
            images = network_input(batch, model.input_channels).to(device)
            features, position, quat = per_frame_inputs(model, images)
            parts["features"].append(features.float())
            parts["position"].append(position.float())
            parts["quat"].append(quat.float())
    poses = torch.from_numpy(np.stack([pose_vector(r.world_from_cam) for r in records])).float().to(device)
    by_sequence: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_sequence.setdefault(record.sequence, []).append(i)
    sequences = [sorted(members, key=lambda i: records[i].frame_index) for members in by_sequence.values()]
    true_quat = torch.where(poses[:, 3:4] < 0, -poses[:, 3:], poses[:, 3:])
    return FrameInputs(torch.cat(parts["features"]), torch.cat(parts["position"]), torch.cat(parts["quat"]),
                       model.normalise_position(poses[:, :3]).float(), true_quat, sequences)


def _windows(sequences: list[list[int]], window: int, stride: int) -> torch.Tensor:
    span = (window - 1) * stride + 1
    rows = [members[start:start + span:stride] for members in sequences
            for start in range(len(members) - span + 1)]
    if not rows:
        raise DatasetError(f"no training sequence has the {span} frames a window of {window} with stride "
                           f"{stride} needs")
    return torch.tensor(rows, dtype=torch.int64)


def _ar1_noise(shape: tuple[int, ...], correlation: float, std: float, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """Noise (B, T, K) following x_t = ρ x_{t-1} + √(1-ρ²) ε_t, stationary with standard deviation `std`."""
    innovations = torch.randn(shape, generator=generator).to(device)
    noise = torch.empty_like(innovations)
    noise[:, 0] = innovations[:, 0]
    for t in range(1, shape[1]):
        noise[:, t] = correlation * noise[:, t - 1] + math.sqrt(1 - correlation**2) * innovations[:, t]
    return std * noise


def fit_motion(temporal: TemporalModel, inputs: FrameInputs, config: TemporalTrainConfig,
               generator: torch.Generator) -> torch.Tensor:
    """Fit the temporal model's motion MLP to the true motion between training frames `stride` apart,
    freeze it, and return its estimates (N, 6) of the motion into each frame (zero for the first
    `stride` frames of a sequence)."""
    device = inputs.features_NF.device
    motion_N6 = torch.zeros(len(inputs.features_NF), MOTION, device=device)
    if temporal.motion is None:
        return motion_N6
    pairs = [(members[i - config.stride], members[i]) for members in inputs.sequences
             for i in range(config.stride, len(members))]
    if not pairs:
        return motion_N6
    a, b = (torch.tensor(column, device=device) for column in zip(*pairs, strict=True))
    target = relative_motion(inputs.true_position_norm_N3[a], inputs.true_quat_N4[a],
                             inputs.true_position_norm_N3[b], inputs.true_quat_N4[b])
    optimizer = torch.optim.Adam(temporal.motion.parameters(), lr=config.motion_lr, weight_decay=1e-4)
    keep = 1.0 - config.feature_dropout
    for _ in range(config.motion_epochs):
        shape = (len(a), inputs.features_NF.shape[1])
        masks = [(torch.rand(shape, generator=generator) < keep).to(device) / keep if keep < 1.0 else 1.0
                 for _ in range(2)]
        estimate = temporal.motion(pair_motion_inputs(inputs.features_NF[a] * masks[0],
                                                      inputs.features_NF[b] * masks[1]))
        loss = (estimate - target).square().sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    temporal.motion.requires_grad_(False)
    with torch.no_grad():
        motion_N6[b] = temporal.motion(pair_motion_inputs(inputs.features_NF[a], inputs.features_NF[b]))
    return motion_N6


def gaussian_nll(position_norm_pred: torch.Tensor, quat_pred: torch.Tensor, log_var_6: torch.Tensor,
                 position_norm_true: torch.Tensor, quat_true: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood (up to a constant) of the true poses; (..., 3), (..., 4), (..., 6)."""
    relative = quat_multiply_torch(quat_true, quat_conjugate_torch(quat_pred))
    rotation = quat_log_torch(torch.where(relative[..., :1] < 0, -relative, relative))
    error = torch.cat([position_norm_true - position_norm_pred, rotation], dim=-1)
    return 0.5 * (error.square() * torch.exp(-log_var_6) + log_var_6).sum(-1).mean()


def _calibrate(temporal: TemporalModel, model: PoseNet, inputs: FrameInputs,
               records: list[FrameRecord]) -> tuple[TemporalCalibration, dict[str, Any]]:
    """One scale per mode and block making the mean NEES of the validation frames 3."""
    from posenet_ros.calibration import pose_error_vectors

    values: dict[str, float] = {}
    report: dict[str, Any] = {}
    truth = np.stack([pose_vector(r.world_from_cam) for r in records])
    for mode in ("causal", "offline"):
        errors, covariances = [], []
        for members in inputs.sequences:
            index = torch.tensor(members, device=inputs.features_NF.device)
            smoothed = smooth_sequence(temporal, model, TemporalCalibration(), inputs.features_NF[index],
                                       inputs.position_norm_N3[index], inputs.quat_N4[index], mode)  # type: ignore[arg-type]
            errors.append(pose_error_vectors(smoothed.position_T3, smoothed.quat_T4, truth[members, :3],
                                             truth[members, 3:]))
            covariances.append(smoothed.covariance_T66)
        error, covariance = np.concatenate(errors), np.concatenate(covariances)
        for block in ("position", "rotation"):
            mean = float(np.mean(nees(error, covariance, block)))
            values[f"{mode}_{block}"] = max(mean / 3.0, 1e-12)
            report[f"{mode}_{block}_mean_nees_before"] = mean
    return TemporalCalibration(**values), report


def train_temporal(model_path: str | Path, data_root: str | Path, config: TemporalTrainConfig, *,
                   progress: bool = True) -> dict[str, Any]:
    """Train the temporal model of the checkpoint at `model_path` on `data_root` and store it in the
    checkpoint (replacing an earlier one). Returns the training report."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    loaded = load_model(model_path, device)
    model = loaded.model
    if not isinstance(model, PoseNet):
        raise ValueError(f"{loaded.path}: temporal smoothing refines pose regression (PoseNet) models, not "
                         f"method {loaded.method!r}")
    bag = bag_config_for_checkpoint(loaded.config)  # a rosbag2 is read as the model was trained on it
    records = load_frames(data_root, config.train_split, bag=bag)
    inputs = compute_inputs(model, records, loaded.config, device, progress=progress)
    windows = _windows(inputs.sequences, config.window, config.stride)
    temporal = TemporalModel(config.model, model.head_dim).to(device)
    temporal.feature_dropout.p = config.feature_dropout
    generator = torch.Generator().manual_seed(config.seed)
    motion_N6 = fit_motion(temporal, inputs, config, generator)
    optimizer = torch.optim.Adam([p for p in temporal.parameters() if p.requires_grad], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    rotation_std = math.radians(config.rotation_noise_deg)
    turn_std = math.radians(config.motion_rotation_noise_deg)
    motion_std = torch.tensor([config.motion_noise] * 3 + [turn_std] * 3,
                              device=device)
    history = []
    temporal.train()
    for _ in tqdm(range(config.epochs), desc="train-temporal", unit="epoch", disable=not progress):
        order = torch.randperm(len(windows), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            index = windows[order[start:start + config.batch_size]].to(device)
            shape = (*index.shape, 3)
            shift = config.translation_augmentation * torch.randn(len(index), 1, 3,
                                                                  generator=generator).to(device)
            position_in = inputs.position_norm_N3[index] + shift + _ar1_noise(
                shape, config.noise_correlation, config.position_noise, generator, device)
            rotation_noise = _ar1_noise(shape, config.noise_correlation, rotation_std, generator, device)
            quat_in = quat_multiply_torch(quat_exp_torch(rotation_noise), inputs.quat_N4[index])
            quat_in = torch.where(quat_in[..., :1] < 0, -quat_in, quat_in)
            motion_in = motion_N6[index] + motion_std * torch.randn(*index.shape, MOTION,
                                                                    generator=generator).to(device)
            loss = torch.zeros((), device=device)
            outputs = temporal.offline_outputs(inputs.features_NF[index], position_in, quat_in, motion_in)
            for output in outputs:
                loss = loss + gaussian_nll(output.position_norm_BT3, output.quat_BT4, output.log_var_BT6,
                                           inputs.true_position_norm_N3[index] + shift,
                                           inputs.true_quat_N4[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        scheduler.step()
        history.append(total / batches)
    temporal.eval()
    calibration, calibration_report = TemporalCalibration(), {}
    val_records: list[FrameRecord] = []
    if config.val_split:
        try:
            val_records = load_frames(data_root, config.val_split, bag=bag)
        except DatasetError:
            logger.warning("no %r split in %s: the smoothed covariance stays uncalibrated", config.val_split,
                           data_root)
    if val_records:
        val_inputs = compute_inputs(model, val_records, loaded.config, device)
        calibration, calibration_report = _calibrate(temporal, model, val_inputs, val_records)
    report = {"windows": len(windows), "frames": len(records), "final_loss": history[-1], "loss": history,
              "calibration": dataclasses.asdict(calibration), **calibration_report}
    store_temporal(loaded.path, temporal, {"config": dataclasses.asdict(config.model),
                                           "calibration": dataclasses.asdict(calibration),
                                           "train": dataclasses.asdict(config), "report": report})
    return report
