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
scene-normalised units and `rotation_noise_deg`) plus, on a share `outlier_rate` of the frames, a far
larger error (`outlier_position_noise`, `outlier_rotation_deg`: new views sometimes get a pose far
off, e.g. a yaw error of tens of degrees), the motion estimates with noise of the size and
correlation of the motion MLP's errors on `val_split` (`measured_motion_noise`: the MLP is overfit on
its training pairs; without a val split, `motion_noise`, `motion_rotation_noise_deg` and
`motion_noise_correlation`), the CNN features (when `model.feature_dim` > 0) pass a dropout
(`feature_dropout`), and each window may be shifted by a random translation (input and truth alike,
`translation_augmentation`; the filters read only pose differences, so this matters only to custom
variants). The loss is the heteroscedastic Gaussian negative log-likelihood of the true pose under the
output (position in normalised units, rotation vector in radians), summed over the causal, the
backward and the offline outputs.

After training, each mode is calibrated on `val_split` when the data has it: per block, the smoothed
block is used only if it has a lower median error there than the per-frame one (else the per-frame
block is passed through), and one covariance scale makes the block's mean NEES 3. Then the model is
stored in the checkpoint (`checkpoint.store_temporal`).
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

from posenet_ros.core.device import resolve_device
from posenet_ros.core.geometry import (
    quat_conjugate_torch,
    quat_exp_torch,
    quat_log_torch,
    quat_multiply_torch,
)
from posenet_ros.core.progress import progress_bar
from posenet_ros.data.bag_dataset import bag_config_for_checkpoint
from posenet_ros.data.dataset import PoseDataset, network_input, pose_vector
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.predict import predict
from posenet_ros.inference.calibration import BLOCKS, nees, pose_error_vectors
from posenet_ros.inference.odometry_fusion import FusionParameters, fit_correlation_lengths
from posenet_ros.inference.temporal import TemporalCalibration, per_frame_inputs, smooth_sequence
from posenet_ros.models.posenet import PoseNet
from posenet_ros.models.temporal import (
    MOTION,
    TemporalConfig,
    TemporalModel,
    TemporalOutput,
    pair_motion_inputs,
    relative_motion,
)
from posenet_ros.runtime.checkpoint import LoadedModel, load_model, store_temporal
from posenet_ros.runtime.train_config import TrainConfig

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
    outlier_rate: float = 0.05  # share of the input poses that get an outlier error on top
    outlier_position_noise: float = 0.5  # std of an outlier's position error, scene-normalised units
    outlier_rotation_deg: float = 20.0  # std of an outlier's rotation error per axis
    translation_augmentation: float = 0.0  # std of a random shift of each window (scene-normalised units)
    motion_epochs: int = 300  # full-batch steps fitting the relative-motion MLP
    motion_lr: float = 1e-3
    motion_noise: float = 0.015  # std of the noise on the estimated motion, scene-normalised units per axis
    motion_rotation_noise_deg: float = 0.5  # std of the noise on the estimated rotation per axis
    motion_noise_correlation: float = 0.0  # AR(1) coefficient of the motion noise along the window
    # Measure the three motion noise values above per axis on `val_split` instead (the motion MLP's
    # errors on new views), when the data has it.
    motion_noise_from_val: bool = True
    # The odometry-aided filter (inference/odometry_fusion.py): the share of the per-frame variance
    # that is a slowly varying bias; its correlation lengths are fitted on `val_split`.
    fusion_bias_share: float = 0.8
    train_split: str = "train"
    val_split: str = "val"  # calibration of the smoothed covariance; "" or missing: uncalibrated
    model: TemporalConfig = field(default_factory=TemporalConfig)

    def __post_init__(self) -> None:
        if self.window < 2 or self.stride < 1 or self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("train-temporal needs window >= 2, stride >= 1, epochs >= 1, batch_size >= 1 "
                             "and lr > 0")
        correlations = (self.noise_correlation, self.motion_noise_correlation)
        levels = (self.position_noise, self.rotation_noise_deg, self.motion_noise,
                  self.motion_rotation_noise_deg, self.outlier_position_noise, self.outlier_rotation_deg)
        if not all(0 <= value < 1 for value in (*correlations, self.outlier_rate)) or min(levels) < 0:
            raise ValueError("noise_correlation, motion_noise_correlation and outlier_rate must be in [0, 1) "
                             "and the noise levels >= 0")
        if not 0 <= self.fusion_bias_share < 1:
            raise ValueError(f"fusion_bias_share must be in [0, 1), got {self.fusion_bias_share}")
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


def compute_inputs(model: PoseNet, records: list[FrameRecord], config: TrainConfig, device: torch.device,
                   batch_size: int = 32, progress: bool = False) -> FrameInputs:
    """Run the frozen per-frame model (dropout off) over `records` once."""

    dataset = PoseDataset(records, config.eval_transform(), with_depth=model.config.needs_depth)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    parts: dict[str, list[torch.Tensor]] = {"features": [], "position": [], "quat": []}
    with torch.inference_mode():
        for batch in progress_bar(loader, desc="temporal inputs", unit="batch", disable=not progress,
                                  leave=False):
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


def _ar1_noise(shape: tuple[int, ...], correlation: float | torch.Tensor, std: float | torch.Tensor,
               generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Noise (B, T, K) following x_t = ρ x_{t-1} + √(1-ρ²) ε_t, stationary with standard deviation `std`
    (ρ and std: scalars or per component, (K,))."""
    innovations = torch.randn(shape, generator=generator).to(device)
    rho = torch.as_tensor(correlation, dtype=innovations.dtype, device=device)
    noise = torch.empty_like(innovations)
    noise[:, 0] = innovations[:, 0]
    for t in range(1, shape[1]):
        noise[:, t] = rho * noise[:, t - 1] + torch.sqrt(1 - rho**2) * innovations[:, t]
    return torch.as_tensor(std, dtype=innovations.dtype, device=device) * noise


@dataclass
class NoiseModel:
    """What the filters are trained against, per component (position_norm x, y, z; rotation about the
    world x, y, z in radians): the per-frame pose errors and the motion MLP's errors, each an AR(1)
    process along the window with these standard deviations and lag-1 correlations ((6,) tensors)."""

    pose_std: torch.Tensor
    pose_correlation: torch.Tensor
    motion_std: torch.Tensor
    motion_correlation: torch.Tensor
    outlier_std: torch.Tensor  # of the error added to the share `outlier_rate` of the input poses

    @classmethod
    def from_config(cls, config: TemporalTrainConfig, device: torch.device) -> NoiseModel:
        def per_axis(position: float, rotation_deg: float) -> torch.Tensor:
            return torch.tensor([position] * 3 + [math.radians(rotation_deg)] * 3, device=device)

        return cls(per_axis(config.position_noise, config.rotation_noise_deg),
                   torch.full((6,), config.noise_correlation, device=device),
                   per_axis(config.motion_noise, config.motion_rotation_noise_deg),
                   torch.full((6,), config.motion_noise_correlation, device=device),
                   per_axis(config.outlier_position_noise, config.outlier_rotation_deg))


def measured_motion_noise(temporal: TemporalModel, inputs: FrameInputs,
                          stride: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Standard deviation about zero and lag-1 correlation (clamped to [0, 0.99]), per component (6,), of
    the motion MLP's errors between frames `stride` apart in `inputs` (held-out sequences); None when
    no sequence has three such frames.

    The MLP is fitted on the training pairs, so its errors there are far smaller than on new views (on
    the synthetic scene the yaw error is several degrees per frame on the val loop, 1° on training
    frames), and they persist along the trajectory (lag-1 correlation about 0.95): a filter trained
    against smaller, white motion noise follows the estimated turn and drifts in yaw.
    """
    errors = []
    with torch.no_grad():
        for members in (m[start::stride] for m in inputs.sequences for start in range(stride)):
            if len(members) < 3:
                continue
            index = torch.tensor(members, device=inputs.features_NF.device)
            position, quat = inputs.true_position_norm_N3[index], inputs.true_quat_N4[index]
            estimate = temporal.estimate_motion(inputs.features_NF[index][None])[0, 1:]
            errors.append(estimate - relative_motion(position[:-1], quat[:-1], position[1:], quat[1:]))
    if not errors:
        return None
    values = torch.cat(errors)
    std = values.square().mean(0).sqrt()
    products = torch.cat([e[1:] * e[:-1] for e in errors])
    correlation = (products.mean(0) / std.square().clamp_min(1e-30)).clamp(0.0, 0.99)
    return std, correlation


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
    """Negative log-likelihood (up to a constant) of each true pose; (..., 3), (..., 4), (..., 6) ->
    (...)."""
    relative = quat_multiply_torch(quat_true, quat_conjugate_torch(quat_pred))
    rotation = quat_log_torch(torch.where(relative[..., :1] < 0, -relative, relative))
    error = torch.cat([position_norm_true - position_norm_pred, rotation], dim=-1)
    return 0.5 * (error.square() * torch.exp(-log_var_6) + log_var_6).sum(-1)


def output_nll(output: TemporalOutput, position_norm_true: torch.Tensor,
               quat_true: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood (up to a constant) of the true poses (B, T, 3), (B, T, 4) under the
    output's Gaussian, or under its mixture: -log Σ_k w_k N_k."""
    mixture = output.components
    if mixture is None:
        return gaussian_nll(output.position_norm_BT3, output.quat_BT4, output.log_var_BT6, position_norm_true,
                            quat_true).mean()
    per_component = gaussian_nll(mixture.position_norm_BTK3, mixture.quat_BTK4, mixture.log_var_BTK6,
                                 position_norm_true[..., None, :], quat_true[..., None, :])
    return -torch.logsumexp(mixture.log_weight_BTK - per_component, dim=-1).mean()


def _calibrate(temporal: TemporalModel, model: PoseNet, inputs: FrameInputs,
               records: list[FrameRecord]) -> tuple[TemporalCalibration, dict[str, Any]]:
    """Per mode and block on the validation frames: smooth the block only if that lowers its median
    error there (else pass the per-frame block through), and one covariance scale making its mean
    NEES 3."""

    values: dict[str, Any] = {}
    report: dict[str, Any] = {}
    truth = np.stack([pose_vector(r.world_from_cam) for r in records])
    order = [i for members in inputs.sequences for i in members]  # the frames in sequence order
    position = (model.position_mean + model.position_scale * inputs.position_norm_N3[order]).double()
    per_frame = pose_error_vectors(position.cpu().numpy(), inputs.quat_N4[order].double().cpu().numpy(),
                                   truth[order, :3], truth[order, 3:])
    for mode in ("causal", "offline"):
        errors, covariances = [], []
        for members in inputs.sequences:
            index = torch.tensor(members, device=inputs.features_NF.device)
            poses = smooth_sequence(temporal, model, TemporalCalibration(), inputs.features_NF[index],
                                    inputs.position_norm_N3[index], inputs.quat_N4[index], mode)  # type: ignore[arg-type]
            errors.append(pose_error_vectors(poses.position_T3, poses.quat_T4, truth[members, :3],
                                             truth[members, 3:]))
            covariances.append(poses.covariance_T66)
        chosen, covariance = np.concatenate(errors), np.concatenate(covariances)
        for block in ("position", "rotation"):
            columns = BLOCKS[block]
            median = {name: float(np.median(np.linalg.norm(e[:, columns], axis=1)))
                      for name, e in (("smoothed", chosen), ("per_frame", per_frame))}
            smoothed = median["smoothed"] <= median["per_frame"]
            if not smoothed:
                chosen[:, columns] = per_frame[:, columns]
            mean = float(np.mean(nees(chosen, covariance, block)))
            values[f"{mode}_{block}"] = max(mean / 3.0, 1e-12)
            values[f"{mode}_{block}_smoothed"] = smoothed
            report[f"{mode}_{block}_median_error"] = median
            report[f"{mode}_{block}_mean_nees_before"] = mean
    return TemporalCalibration(**values), report


def fit_fusion(loaded: LoadedModel, records: list[FrameRecord],
               motion_noise: tuple[torch.Tensor, torch.Tensor] | None,
               config: TemporalTrainConfig) -> FusionParameters | None:
    """The odometry-aided filter's parameters from held-out `records`: the bias correlation lengths
    of the per-frame errors (normalised by the checkpoint's per-frame covariance, so calibrate first)
    and the learned motion's error per frame from `motion_noise` (`measured_motion_noise`: standard
    deviation σ, scene-normalised position, and lag-1 correlation ρ per axis; None: the defaults). The
    filter takes the motion errors as white, so σ is widened to σ √((1 + ρ) / (1 - ρ)): the growth of
    a sum of many AR(1) errors. None when the checkpoint gives no per-frame covariance."""
    method = loaded.inference()
    if not method.estimates_uncertainty:
        logger.warning("%s gives no per-frame covariance: the odometry-aided filter is not fitted (calibrate "
                       "the model, or train it with an aleatoric loss)", loaded.path)
        return None
    p = predict(method, records, loaded.config.eval_transform())
    assert p.covariance_N66 is not None
    errors, covariances, steps = [], [], []
    for members in p.sequences():
        errors.append(pose_error_vectors(p.position_pred_N3[members], p.quat_pred_N4[members],
                                         p.position_true_N3[members], p.quat_true_N4[members]))
        covariances.append(p.covariance_N66[members])
        steps.append(np.linalg.norm(np.diff(p.position_true_N3[members], axis=0), axis=1))
    parameters = FusionParameters(bias_share=config.fusion_bias_share,
                                  correlation_length_m=fit_correlation_lengths(errors, covariances, steps))
    if motion_noise is not None:
        std, correlation = (values.double().cpu().numpy() for values in motion_noise)
        std = std * np.sqrt((1 + correlation) / (1 - correlation))
        std[:3] *= float(loaded.model.position_scale)
        parameters.learned_motion_std = [float(x) for x in std]
    return parameters


def train_temporal(model_path: str | Path, data_root: str | Path, config: TemporalTrainConfig, *,
                   progress: bool = True) -> dict[str, Any]:
    """Train the temporal model of the checkpoint at `model_path` on `data_root` and store it in the
    checkpoint (replacing an earlier one). Returns the training report."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    loaded = load_model(model_path, device)
    model = loaded.model
    if not loaded.method_class.regresses_pose:
        raise ValueError(f"{loaded.path}: temporal smoothing refines pose regression (PoseNet) models, not "
                         f"method {loaded.method!r}")
    # A rosbag2 is read as the model was trained on it.
    bag = bag_config_for_checkpoint(loaded.config, loaded.needs_depth)
    records = load_frames(data_root, config.train_split, bag=bag)
    inputs = compute_inputs(model, records, loaded.config, device, progress=progress)
    windows = _windows(inputs.sequences, config.window, config.stride)
    temporal = TemporalModel(config.model, model.head_dim).to(device)
    temporal.feature_dropout.p = config.feature_dropout
    generator = torch.Generator().manual_seed(config.seed)
    motion_N6 = fit_motion(temporal, inputs, config, generator)
    val_records: list[FrameRecord] = []
    if config.val_split:
        try:
            val_records = load_frames(data_root, config.val_split, bag=bag)
        except DatasetError:
            logger.warning("no %r split in %s: the noise levels are the configured ones and the smoothed "
                           "covariance stays uncalibrated", config.val_split, data_root)
    val_inputs = compute_inputs(model, val_records, loaded.config, device) if val_records else None
    noise = NoiseModel.from_config(config, device)
    measured = (measured_motion_noise(temporal, val_inputs, config.stride)
                if config.motion_noise_from_val and val_inputs is not None and temporal.motion is not None
                else None)
    if measured is not None:
        noise.motion_std, noise.motion_correlation = measured
    optimizer = torch.optim.Adam([p for p in temporal.parameters() if p.requires_grad], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    history = []
    temporal.train()
    for _ in progress_bar(range(config.epochs), desc="train-temporal", unit="epoch", disable=not progress):
        order = torch.randperm(len(windows), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            index = windows[order[start:start + config.batch_size]].to(device)
            shape = (*index.shape, 3)
            shift = config.translation_augmentation * torch.randn(len(index), 1, 3,
                                                                  generator=generator).to(device)
            position_in = inputs.position_norm_N3[index] + shift + _ar1_noise(
                shape, noise.pose_correlation[:3], noise.pose_std[:3], generator, device)
            rotation_noise = _ar1_noise(shape, noise.pose_correlation[3:], noise.pose_std[3:], generator,
                                        device)
            if config.outlier_rate > 0:
                outlier = (torch.rand(index.shape, generator=generator) < config.outlier_rate)[..., None]
                jump = noise.outlier_std * torch.randn(*index.shape, 6, generator=generator).to(device)
                jump = outlier.to(device) * jump
                position_in, rotation_noise = position_in + jump[..., :3], rotation_noise + jump[..., 3:]
            quat_in = quat_multiply_torch(quat_exp_torch(rotation_noise), inputs.quat_N4[index])
            quat_in = torch.where(quat_in[..., :1] < 0, -quat_in, quat_in)
            motion_in = motion_N6[index] + _ar1_noise((*index.shape, MOTION), noise.motion_correlation,
                                                      noise.motion_std, generator, device)
            loss = torch.zeros((), device=device)
            outputs = temporal.offline_outputs(inputs.features_NF[index], position_in, quat_in, motion_in)
            for output in outputs:
                loss = loss + output_nll(output, inputs.true_position_norm_N3[index] + shift,
                                         inputs.true_quat_N4[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        scheduler.step()
        history.append(total / batches)
    temporal.eval()
    calibration, calibration_report = TemporalCalibration(), {}
    fusion = None
    if val_inputs is not None:
        calibration, calibration_report = _calibrate(temporal, model, val_inputs, val_records)
        fusion = fit_fusion(loaded, val_records, measured, config)
    report = {"windows": len(windows), "frames": len(records), "final_loss": history[-1], "loss": history,
              "noise": {key: value.tolist() for key, value in dataclasses.asdict(noise).items()},
              "calibration": dataclasses.asdict(calibration),
              "fusion": None if fusion is None else dataclasses.asdict(fusion), **calibration_report}
    store_temporal(loaded.path, temporal, {"config": dataclasses.asdict(config.model),
                                           "calibration": dataclasses.asdict(calibration),
                                           "fusion": None if fusion is None else dataclasses.asdict(fusion),
                                           "train": dataclasses.asdict(config), "report": report})
    return report
