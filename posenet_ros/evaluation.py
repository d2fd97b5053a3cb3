"""Evaluation of a trained PoseNet: predictions, error metrics, reports, plots and saliency maps.

Conventions (the package's, see DESIGN.md): positions are camera positions in the world frame in
metres (the translation of `world_from_cam`); orientations are unit quaternions (w, x, y, z) of the
`world_from_cam` rotation, q and -q being the same rotation. Position errors are Euclidean distances
in metres, orientation errors the angle of the relative rotation in degrees, in [0, 180].

Metric names (`pose_metrics`, `metrics.json`):

    frames                          number of frames
    median_position_error_m         median position error (metres)
    median_orientation_error_deg    median orientation error (degrees)
    mean_position_error_m           mean position error (metres)
    mean_orientation_error_deg      mean orientation error (degrees)
    within_<M>m_<D>deg              share of frames (0..1) with position error <= M metres AND
                                    orientation error <= D degrees; M and D written with Python's
                                    `:g` format: (0.05, 5.0) -> "within_0.05m_5deg" (`threshold_key`)

Files written by `evaluate` into its output folder:

    metrics.json      {"model", "split", "device", "transform", "thresholds": [[M, D], ...],
                       "method", "mc_samples", "ransac" (method scr: the pose solver), "calibrated",
                       "smoothing",
                       "scenes": {name: {"data_root", metrics..., "mean_pose_baseline": {metrics...}}},
                       "overall": {metrics..., "mean_pose_baseline": {...}}}
                      (the baseline entries only when the checkpoint holds training poses)
    predictions.csv   one row per frame, columns `PREDICTION_COLUMNS`
    error_cdf.png     cumulative distributions of the position and orientation errors per scene
    top_view.png      x-y top view: training cameras (grey), test ground truth and predictions

With Monte-Carlo sampling (`mc_samples` > 0, by default the checkpoint's setting), predictions are
MC-dropout means and metrics.json also holds, per scene and overall, "uncertainty"
(`calibration.uncertainty_metrics`: NEES, σ-region coverage next to the Gaussian values, Spearman
correlation of predicted σ and error) and, where frames of unknown places exist
(`unknown_splits`), "loop_closure" (ROC AUC of the score, precision and recall of the known_place
flag with the checkpoint's thresholds and hysteresis); predictions.csv gains σ columns and
uncertainty_vs_error.png plots predicted σ against error.

Plots are drawn with `matplotlib.figure.Figure` (no pyplot, so the caller's backend is untouched)
and every file is written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from posenet_ros.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text
from posenet_ros.calibration import pose_error_vectors, uncertainty_metrics
from posenet_ros.checkpoint import LoadedModel, load_model
from posenet_ros.data.bag_dataset import BagDataConfig, bag_config_for_checkpoint
from posenet_ros.data.dataset import FrameTransform, PoseDataset, network_input, pose_vector
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.data.loading import is_bag, load_frames
from posenet_ros.device import resolve_device
from posenet_ros.geometry import angular_error_deg, quat_normalize, translation_error
from posenet_ros.loop_closure import LoopClosureConfig, roc_auc, run_detector
from posenet_ros.models.posenet import PoseNet
from posenet_ros.models.scene_coordinates import SceneCoordinateNet
from posenet_ros.models.temporal import SmoothMode
from posenet_ros.scr_localization import localize
from posenet_ros.scr_pose import RansacConfig, ScrPose
from posenet_ros.smoothing import head_inputs, smooth_sequence, temporal_jitter
from posenet_ros.uncertainty import UncertaintyConfig, calibrated, estimate, fit_feature_covariance

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CROP",
    "DEFAULT_RESIZE",
    "DEFAULT_THRESHOLDS",
    "DEFAULT_UNKNOWN_SPLITS",
    "PREDICTION_COLUMNS",
    "UNCERTAINTY_COLUMNS",
    "Predictions",
    "eval_transform",
    "evaluate",
    "fit_feature_memory",
    "format_table",
    "format_uncertainty",
    "loop_closure_metrics",
    "mean_pose_baseline",
    "mean_quaternion",
    "pose_errors",
    "pose_metrics",
    "predict",
    "prediction_errors_N6",
    "saliency_maps",
    "sigmas",
    "threshold_key",
    "threshold_label",
    "unknown_place_records",
    "write_saliency",
]

DEFAULT_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.05, 5.0),)
DEFAULT_RESIZE = 256  # PoseNet's test-time preparation when a checkpoint names none
DEFAULT_CROP = 224

PREDICTION_COLUMNS = (
    "scene", "sequence", "frame_index",
    "x_true", "y_true", "z_true", "qw_true", "qx_true", "qy_true", "qz_true",
    "x_pred", "y_pred", "z_pred", "qw_pred", "qx_pred", "qy_pred", "qz_pred",
    "position_error_m", "orientation_error_deg",
)


# --------------------------------------------------------------------------------------------------
# Predictions and errors
# --------------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Per-frame predictions of one dataset split, in the order of its records (N frames).

    Positions in metres (world frame), quaternions unit (w, x, y, z) with w >= 0 of world_from_cam,
    all float64. position_error_N in metres, orientation_error_N in degrees.
    """

    position_pred_N3: np.ndarray
    quat_pred_N4: np.ndarray
    position_true_N3: np.ndarray
    quat_true_N4: np.ndarray
    sequence: list[str]
    frame_index: np.ndarray  # (N,) int64
    position_error_N: np.ndarray
    orientation_error_N: np.ndarray
    # With uncertainty (see uncertainty.py): the calibrated covariance, its uncalibrated epistemic and
    # aleatoric parts (N, 6, 6) and the loop-closure score (N,); None for deterministic predictions.
    covariance_N66: np.ndarray | None = None
    epistemic_N66: np.ndarray | None = None
    aleatoric_N66: np.ndarray | None = None
    score_N: np.ndarray | None = None
    mc_spread_N: np.ndarray | None = None  # log Monte-Carlo spread (diagnostic; see uncertainty.py)
    features_NF: np.ndarray | None = None  # the head's input, dropout off (with keep_features)

    def __len__(self) -> int:
        return len(self.sequence)


def pose_errors(position_pred_N3: ArrayLike, quat_pred_N4: ArrayLike, position_true_N3: ArrayLike,
                quat_true_N4: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(position_error_N in metres, orientation_error_N in degrees) between predicted and true poses.

    Quaternions are (w, x, y, z) and need not be normalised; q and -q give an error of 0.
    Arguments broadcast (a single (3,) / (4,) prediction against N true poses works).
    """
    return (np.asarray(translation_error(position_pred_N3, position_true_N3), dtype=np.float64),
            np.asarray(angular_error_deg(quat_pred_N4, quat_true_N4), dtype=np.float64))


def _set_eval(model: torch.nn.Module) -> tuple[bool, str]:
    """Put `model` in eval mode with dropout off (a PoseNet's); return the state to restore."""
    state = (model.training, model.dropout_mode if isinstance(model, PoseNet) else "off")
    model.eval()
    if isinstance(model, PoseNet):
        model.set_dropout_mode("off")
    return state


def _restore(model: torch.nn.Module, state: tuple[bool, str]) -> None:
    model.train(state[0])
    if isinstance(model, PoseNet):
        model.set_dropout_mode(state[1])  # type: ignore[arg-type]


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def predict(model: PoseNet, records: Sequence[FrameRecord], transform: FrameTransform, *,
            device: str | torch.device | None = None, batch_size: int = 32,
            progress: bool = False, description: str = "predict",
            uncertainty: UncertaintyConfig | None = None, keep_features: bool = False,
            ransac: RansacConfig | None = None) -> Predictions:
    """Run `model` over `records` in their order and compare with the true poses.

    A scene coordinate model (`SceneCoordinateNet`) solves each frame's pose with RANSAC (`ransac`,
    default settings if None; the records need intrinsics, and depth images with `ransac.use_depth`)
    and always returns covariances (scaled by `uncertainty`'s calibration when given), its
    uncalibrated covariance as `epistemic_N66` and the score 1 - inlier ratio. A frame without a pose
    has NaN pose and infinite errors.

    Deterministic by default; with `uncertainty` the poses are Monte-Carlo dropout means with
    covariances and loop-closure scores (`uncertainty.estimate`, the dropout masks of a batch seeded
    by the index of its first frame, so results are reproducible).

    The model runs in eval mode with dropout off under `torch.inference_mode`; its previous
    train/eval and dropout modes are restored afterwards. Frames are prepared by `transform` (use a
    centre crop and no jitter for evaluation; `transform.window` must be 1) and loaded in order by a
    DataLoader (no shuffling, no worker processes). `device`: where the model already is ("auto",
    "cpu", "cuda:0", ...; None = the model's device); a different device is a ValueError. True poses
    come from the records in float64. `progress` shows a tqdm bar labelled `description`.
    `keep_features`: also return each frame's head input (`features_NF`, float32), for smoothing.
    """
    if transform.window != 1:
        raise ValueError(f"predict works on single frames: transform.window must be 1, "
                         f"got {transform.window}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model_device = _model_device(model)
    target = model_device if device is None else resolve_device(device)
    if target != model_device and not (target.type == model_device.type == "cuda" and target.index is None):
        raise ValueError(f"the model is on {model_device} but device {target} was requested; move the "
                         "model first (model.to(device))")
    records = list(records)
    scr_depth = isinstance(model, SceneCoordinateNet) and ransac is not None and ransac.use_depth
    dataset = PoseDataset(records, transform, with_depth=model.config.needs_depth or scr_depth)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    parts: dict[str, list[np.ndarray]] = {}
    state = _set_eval(model)
    try:
        with torch.inference_mode():
            first = 0
            for batch in tqdm(loader, desc=description, unit="batch", disable=not progress, leave=False):
                images = network_input(batch, model.input_channels).to(model_device, non_blocking=True)
                if isinstance(model, SceneCoordinateNet):
                    if "K" not in batch:
                        raise DatasetError("scene coordinate regression needs the camera intrinsics of "
                                           "every frame")
                    features = None
                    poses, _ = localize(model, images, batch["K"], ransac or RansacConfig(), seed=first,
                                        depth_B1HW=batch["depth"] if scr_depth else None)
                    values = _scr_values(poses, uncertainty)
                elif uncertainty is None:
                    features = model.forward_features(images)
                    output = model.forward_head(features)
                    values = {"position": output.position_B3, "quat": output.quat_B4}
                else:
                    dist = estimate(model, images, uncertainty, seed=first)
                    features = dist.features_BF
                    values = {"position": dist.position_B3, "quat": dist.quat_B4,
                              "covariance": dist.covariance_B66, "epistemic": dist.epistemic_B66,
                              "aleatoric": dist.aleatoric_B66, "score": dist.score_B,
                              "mc_spread": dist.mc_spread_B}
                if keep_features and features is not None:
                    values["features"] = features
                for key, value in values.items():
                    dtype = torch.float32 if key == "features" else torch.float64
                    parts.setdefault(key, []).append(value.detach().to("cpu", dtype).numpy())
                first += len(images)
    finally:
        _restore(model, state)
    joined = {key: np.concatenate(value, axis=0) for key, value in parts.items()}
    position_pred, quat_pred = joined["position"], joined["quat"]
    if len(position_pred) != len(records):
        raise RuntimeError(f"got {len(position_pred)} predictions for {len(records)} frames")
    poses_true = np.stack([pose_vector(record.world_from_cam) for record in records]).astype(np.float64)
    with_pose = np.isfinite(position_pred).all(axis=1) & np.isfinite(quat_pred).all(axis=1)
    position_error, orientation_error = np.full(len(records), np.inf), np.full(len(records), np.inf)
    if with_pose.any():  # scene coordinates: frames where RANSAC found no pose keep infinite errors
        position_error[with_pose], orientation_error[with_pose] = pose_errors(
            position_pred[with_pose], quat_pred[with_pose], poses_true[with_pose, :3],
            poses_true[with_pose, 3:])
    return Predictions(
        position_pred_N3=position_pred,
        quat_pred_N4=quat_pred,
        position_true_N3=poses_true[:, :3].copy(),
        quat_true_N4=poses_true[:, 3:].copy(),
        sequence=[record.sequence for record in records],
        frame_index=np.array([record.frame_index for record in records], dtype=np.int64),
        position_error_N=position_error,
        orientation_error_N=orientation_error,
        covariance_N66=joined.get("covariance"),
        epistemic_N66=joined.get("epistemic"),
        aleatoric_N66=joined.get("aleatoric"),
        score_N=joined.get("score"),
        mc_spread_N=joined.get("mc_spread"),
        features_NF=joined.get("features"),
    )


def _scr_values(poses: list[ScrPose | None],
                uncertainty: UncertaintyConfig | None) -> dict[str, torch.Tensor]:
    """predict's per-frame values of scene coordinate poses (NaN pose, score 1 where none)."""
    nan = float("nan")
    position = torch.from_numpy(np.stack([p.position_3 if p else np.full(3, nan) for p in poses]))
    quat = torch.from_numpy(np.stack([p.quat_wxyz_4 if p else np.full(4, nan) for p in poses]))
    raw = torch.from_numpy(np.stack([p.covariance_66 if p else np.full((6, 6), nan) for p in poses]))
    score = torch.tensor([1.0 - p.inlier_ratio if p else 1.0 for p in poses], dtype=torch.float64)
    covariance = raw if uncertainty is None else calibrated(raw, *uncertainty.block_factors(score))
    return {"position": position, "quat": quat, "covariance": covariance, "epistemic": raw,
            "aleatoric": torch.zeros_like(raw), "score": score, "mc_spread": torch.full_like(score, nan)}


def fit_feature_memory(model: PoseNet, records: Sequence[FrameRecord], transform: FrameTransform, *,
                       batch_size: int = 32, ridge: float = 1e-3, progress: bool = False) -> None:
    """Fit `model.feature_covariance` on the features of `records` (the training frames, prepared
    with the test-time `transform`, dropout off): the memory the loop-closure score compares with."""
    dataset = PoseDataset(list(records), transform, with_depth=model.config.needs_depth)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    device = _model_device(model)
    parts = []
    state = _set_eval(model)
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc="feature memory", unit="batch", disable=not progress, leave=False):
                images = network_input(batch, model.input_channels).to(device)
                parts.append(model.forward_features(images).float())
    finally:
        _restore(model, state)
    covariance = fit_feature_covariance(torch.cat(parts), ridge)
    with torch.no_grad():
        model.feature_covariance.copy_(covariance)


# --------------------------------------------------------------------------------------------------
# Metrics and the mean-pose baseline
# --------------------------------------------------------------------------------------------------


def threshold_key(metres: float, degrees: float) -> str:
    """The metrics key of a (metres, degrees) threshold pair: (0.05, 5.0) -> 'within_0.05m_5deg'."""
    return f"within_{float(metres):g}m_{float(degrees):g}deg"


def threshold_label(metres: float, degrees: float) -> str:
    """The table header of a threshold pair: (0.05, 5.0) -> '5cm/5°', (0.5, 10) -> '50cm/10°'."""
    distance = f"{metres * 100:g}cm" if metres < 1.0 else f"{metres:g}m"
    return f"{distance}/{degrees:g}°"


def _check_thresholds(thresholds: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    checked = []
    for pair in thresholds:
        if len(pair) != 2:
            raise ValueError(f"a threshold is a (metres, degrees) pair, got {pair!r}")
        metres, degrees = float(pair[0]), float(pair[1])
        if not (math.isfinite(metres) and math.isfinite(degrees) and metres >= 0 and degrees >= 0):
            raise ValueError(f"threshold ({metres}, {degrees}) must be finite and non-negative")
        checked.append((metres, degrees))
    return checked


def pose_metrics(position_error_N: ArrayLike, orientation_error_N: ArrayLike,
                 thresholds: Sequence[Sequence[float]] = DEFAULT_THRESHOLDS) -> dict[str, float | int]:
    """Summary of per-frame errors (metres, degrees) as a flat dict of Python numbers.

    Keys: `frames`, `median_position_error_m`, `median_orientation_error_deg`,
    `mean_position_error_m`, `mean_orientation_error_deg` and, for each (metres, degrees) pair of
    `thresholds`, `threshold_key(metres, degrees)` (e.g. 'within_0.05m_5deg'): the share in [0, 1]
    of frames with position error <= metres and orientation error <= degrees (bounds included).
    NaN errors make the median and mean NaN and count as outside every threshold.
    Empty or mismatched inputs are a ValueError.
    """
    position = np.asarray(position_error_N, dtype=np.float64)
    orientation = np.asarray(orientation_error_N, dtype=np.float64)
    if position.ndim != 1 or orientation.ndim != 1 or position.shape != orientation.shape:
        raise ValueError(f"errors must be two 1-D arrays of equal length, got shapes {position.shape} "
                         f"and {orientation.shape}")
    if position.size == 0:
        raise ValueError("no frames to compute metrics of (empty error arrays)")
    metrics: dict[str, float | int] = {
        "frames": int(position.size),
        "median_position_error_m": float(np.median(position)),
        "median_orientation_error_deg": float(np.median(orientation)),
        "mean_position_error_m": float(np.mean(position)),
        "mean_orientation_error_deg": float(np.mean(orientation)),
    }
    for metres, degrees in _check_thresholds(thresholds):
        within = (position <= metres) & (orientation <= degrees)
        metrics[threshold_key(metres, degrees)] = float(np.mean(within))
    return metrics


def mean_quaternion(quats_N4: ArrayLike) -> np.ndarray:
    """Average orientation of unit quaternions (w, x, y, z) as a canonical quaternion (4,), w >= 0.

    Markley et al.'s eigenvector method: the eigenvector of the largest eigenvalue of sum q q^T,
    which ignores the signs of the inputs (q and -q count the same).
    """
    q = quat_normalize(np.asarray(quats_N4, dtype=np.float64).reshape(-1, 4))
    if len(q) == 0:
        raise ValueError("mean_quaternion needs at least one quaternion")
    _, vectors = np.linalg.eigh(q.T @ q)
    return quat_normalize(vectors[:, -1])


def mean_pose_baseline(train_positions_N3: ArrayLike, train_quats_N4: ArrayLike, positions_true_M3: ArrayLike,
                       quats_true_M4: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Errors of the trivial localiser that answers the mean training pose for every frame.

    Predicts the mean training position (metres) and the mean training orientation
    (`mean_quaternion`) for each of the M test frames; returns (position_error_M in metres,
    orientation_error_M in degrees). A network that has learnt anything beats this.
    """
    train_positions = np.asarray(train_positions_N3, dtype=np.float64).reshape(-1, 3)
    if len(train_positions) == 0:
        raise ValueError("mean_pose_baseline needs at least one training pose")
    mean_position = train_positions.mean(axis=0)
    mean_quat = mean_quaternion(train_quats_N4)
    positions_true = np.asarray(positions_true_M3, dtype=np.float64).reshape(-1, 3)
    quats_true = np.asarray(quats_true_M4, dtype=np.float64).reshape(-1, 4)
    if len(positions_true) != len(quats_true):
        raise ValueError(f"{len(positions_true)} true positions but {len(quats_true)} true quaternions")
    return pose_errors(mean_position[None], mean_quat[None], positions_true, quats_true)


# --------------------------------------------------------------------------------------------------
# evaluate(): checkpoint + datasets -> metrics.json, predictions.csv, plots
# --------------------------------------------------------------------------------------------------


def eval_transform(config: dict[str, Any]) -> FrameTransform:
    """The test-time FrameTransform of a checkpoint's config: its `data.resize` (shorter side, px)
    and `data.crop` (square side or [height, width], px) with a centre crop and no jitter; a missing
    key falls back to PoseNet's 256 / 224."""
    data = config.get("data") or {}
    resize = data["resize"] if "resize" in data else DEFAULT_RESIZE
    crop = data["crop"] if "crop" in data else DEFAULT_CROP
    return FrameTransform(resize=resize, crop=crop, random_crop=False)


def _scene_names(roots: Sequence[Path]) -> list[str]:
    """One name per data root: its folder name, made unique with '-2', '-3', ... where needed."""
    names: list[str] = []
    for root in roots:
        base = root.resolve().name or str(root)
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.append(name)
    return names


def _csv_float(value: float) -> str:
    return repr(float(value))  # shortest text that reads back as the same float64


UNCERTAINTY_COLUMNS = ("sigma_position_m", "sigma_rotation_deg", "loop_closure_score")


def sigmas(covariance_N66: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(σ position in metres, σ rotation in degrees): √trace of each 3x3 block."""
    position = np.sqrt(np.trace(covariance_N66[:, :3, :3], axis1=1, axis2=2))
    rotation = np.degrees(np.sqrt(np.trace(covariance_N66[:, 3:, 3:], axis1=1, axis2=2)))
    return position, rotation


def _predictions_csv(scenes: dict[str, Predictions]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_uncertainty = all(p.covariance_N66 is not None for p in scenes.values())
    writer.writerow([*PREDICTION_COLUMNS, *(UNCERTAINTY_COLUMNS if with_uncertainty else ())])
    for scene, p in scenes.items():
        extra = np.stack([*sigmas(p.covariance_N66), p.score_N], 1) if with_uncertainty else None
        for i in range(len(p)):
            writer.writerow([
                scene, p.sequence[i], int(p.frame_index[i]),
                *map(_csv_float, p.position_true_N3[i]), *map(_csv_float, p.quat_true_N4[i]),
                *map(_csv_float, p.position_pred_N3[i]), *map(_csv_float, p.quat_pred_N4[i]),
                _csv_float(p.position_error_N[i]), _csv_float(p.orientation_error_N[i]),
                *(map(_csv_float, extra[i]) if extra is not None else ()),
            ])
    return buffer.getvalue()


def _figure_png(fig: Any, dpi: int = 120) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _plot_error_cdf(scenes: dict[str, Predictions], thresholds: Sequence[tuple[float, float]]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_position, ax_orientation = fig.subplots(1, 2)
    for index, (scene, p) in enumerate(scenes.items()):
        colour = f"C{index % 10}"
        for ax, errors in ((ax_position, p.position_error_N), (ax_orientation, p.orientation_error_N)):
            values = np.sort(errors[np.isfinite(errors)])
            if values.size == 0:
                continue
            share = np.arange(1, values.size + 1) / errors.size
            ax.step(np.concatenate([[0.0], values]), np.concatenate([[0.0], share]), where="post",
                    color=colour, label=f"{scene} (N={errors.size})")
    for metres, degrees in thresholds:
        ax_position.axvline(metres, color="0.5", linestyle=":", linewidth=1)
        ax_orientation.axvline(degrees, color="0.5", linestyle=":", linewidth=1)
    ax_position.set_xlabel("position error (m)")
    ax_orientation.set_xlabel("orientation error (°)")
    for ax in (ax_position, ax_orientation):
        ax.set_ylabel("share of frames")
        ax.set_ylim(0.0, 1.02)
        ax.set_xlim(left=0.0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    ax_position.set_title("Position error CDF")
    ax_orientation.set_title("Orientation error CDF")
    return _figure_png(fig)


def _plot_top_view(scenes: dict[str, Predictions], map_poses_N7: np.ndarray) -> bytes:
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 7), layout="constrained")
    ax = fig.subplots()
    if len(map_poses_N7):
        ax.scatter(map_poses_N7[:, 0], map_poses_N7[:, 1], s=4, color="0.7", label="training cameras",
                   zorder=1)
    for index, (scene, p) in enumerate(scenes.items()):
        colour = f"C{index % 10}"
        segments = np.stack([p.position_true_N3[:, :2], p.position_pred_N3[:, :2]], axis=1)
        ax.add_collection(LineCollection(segments, colors=colour, linewidths=0.5, alpha=0.5, zorder=2))
        ax.scatter(p.position_true_N3[:, 0], p.position_true_N3[:, 1], s=8, color=colour, marker="o",
                   label=f"{scene} ground truth", zorder=3)
        ax.scatter(p.position_pred_N3[:, 0], p.position_pred_N3[:, 1], s=14, color=colour, marker="x",
                   linewidths=0.8, label=f"{scene} prediction", zorder=4)
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title("Top view (x-y): ground truth, predictions and training cameras")
    return _figure_png(fig)


def _with_baseline(metrics: dict[str, Any], predictions: Predictions, map_poses_N7: np.ndarray,
                   thresholds: Sequence[tuple[float, float]]) -> dict[str, Any]:
    if len(map_poses_N7):
        errors = mean_pose_baseline(map_poses_N7[:, :3], map_poses_N7[:, 3:], predictions.position_true_N3,
                                    predictions.quat_true_N4)
        metrics["mean_pose_baseline"] = pose_metrics(*errors, thresholds)
    return metrics


def _concatenate(predictions: Sequence[Predictions]) -> Predictions:
    """One Predictions of all frames, in order (optional fields kept when every part has them)."""
    values: dict[str, Any] = {"sequence": [s for p in predictions for s in p.sequence]}
    for field in dataclasses.fields(Predictions):
        if field.name != "sequence":
            parts = [getattr(p, field.name) for p in predictions]
            values[field.name] = None if any(x is None for x in parts) else np.concatenate(parts)
    return Predictions(**values)


DEFAULT_UNKNOWN_SPLITS = ("outside", "occlusion", "blur")  # the synthetic scene's unknown places


def prediction_errors_N6(predictions: Predictions) -> np.ndarray:
    """Per-frame error vectors (metres, radians) in the covariance's convention (calibration.py)."""
    return pose_error_vectors(predictions.position_pred_N3, predictions.quat_pred_N4,
                              predictions.position_true_N3, predictions.quat_true_N4)


def unknown_place_records(root: Path, splits: Sequence[str] | None, *,
                          bag: BagDataConfig | None = None) -> dict[str, list[FrameRecord]]:
    """Frames of places the model should not know, per split: every frame of `splits` (None: those
    of `DEFAULT_UNKNOWN_SPLITS` the dataset has; a rosbag2, read with the options `bag`, has those
    its split_times name). A synthetic scene's `synthetic.json` marks which frames of undegraded
    sequences are still in the mapped area; those are left out."""
    in_map: dict[str, list[bool]] = {}
    description = root / "synthetic.json"
    if description.is_file():
        for sequence in json.loads(description.read_text()).get("sequences", []):
            if sequence.get("variation") is None:
                in_map[Path(sequence["folder"]).name] = sequence.get("in_map", [])

    def known(record: FrameRecord) -> bool:
        flags = in_map.get(record.sequence, [])
        return record.frame_index < len(flags) and bool(flags[record.frame_index])

    bag_splits = (bag or BagDataConfig()).ranges() if is_bag(root) else None
    result = {}
    for split in DEFAULT_UNKNOWN_SPLITS if splits is None else splits:
        if splits is None and bag_splits is not None and split not in bag_splits:
            continue  # without a time range of its own, the split would be the whole bag
        try:
            records = load_frames(root, split, bag=bag)
        except DatasetError:
            if splits is not None:
                raise
            continue
        records = [record for record in records if not known(record)]
        if records:
            result[split] = records
    return result


def loop_closure_metrics(known: Predictions, unknown: dict[str, Predictions],
                         config: LoopClosureConfig) -> dict[str, Any]:
    """How the loop-closure score tells the `known` frames from each split of `unknown` ones: ROC
    AUC of the score (unknown places should score higher; also of the Monte-Carlo spread alone, for
    comparison), overall and per split, and precision / recall of the hysteresis flag."""
    everything = _concatenate(list(unknown.values()))
    flags_known = run_detector(config, known.score_N, known.sequence)
    flags_unknown = run_detector(config, everything.score_N, everything.sequence)
    true_positive = int(flags_known.sum())
    false_positive = int(flags_unknown.sum())
    return {"roc_auc": roc_auc(known.score_N, everything.score_N),
            "roc_auc_mc_spread": roc_auc(known.mc_spread_N, everything.mc_spread_N),
            "roc_auc_by_split": {split: roc_auc(known.score_N, p.score_N) for split, p in unknown.items()},
            "roc_auc_mc_spread_by_split": {split: roc_auc(known.mc_spread_N, p.mc_spread_N)
                                           for split, p in unknown.items()},
            "precision": true_positive / max(true_positive + false_positive, 1),
            "recall": true_positive / max(len(known), 1),
            "known_frames": len(known), "unknown_frames": len(everything),
            "unknown_frames_by_split": {split: len(p) for split, p in unknown.items()},
            "enter_score": config.enter_score, "leave_score": config.leave_score,
            "min_frames": config.min_frames}


def _plot_uncertainty(scenes: dict[str, Predictions], unknown: dict[str, Predictions]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 3)
    for name, p in scenes.items():
        sigma_position, sigma_rotation = sigmas(p.covariance_N66)
        axes[0].scatter(sigma_position, p.position_error_N, s=6, alpha=0.6, label=name)
        axes[1].scatter(sigma_rotation, p.orientation_error_N, s=6, alpha=0.6, label=name)
    for ax, unit in ((axes[0], "m"), (axes[1], "deg")):
        limit = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([0, limit], [0, limit], color="grey", lw=0.8, ls="--", label="error = σ")
        ax.set_xlabel(f"predicted σ ({unit})")
        ax.set_ylabel(f"error ({unit})")
        ax.legend(fontsize=7)
    axes[0].set_title("position")
    axes[1].set_title("orientation")
    known_scores = np.concatenate([p.score_N for p in scenes.values()])
    bins = 30
    axes[2].hist(known_scores[np.isfinite(known_scores)], bins=bins, alpha=0.5, label="evaluated split")
    for split, part in unknown.items():
        axes[2].hist(part.score_N[np.isfinite(part.score_N)], bins=bins, alpha=0.5, label=split)
    axes[2].set_xlabel("loop-closure score (log feature-space epistemic variance)")
    axes[2].set_title("known vs unknown places")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return _figure_png(fig)


def evaluate(model_path: str | Path, data_roots: Sequence[str | Path], *, split: str = "test",
             out: str | Path, thresholds: Sequence[Sequence[float]] = DEFAULT_THRESHOLDS,
             batch_size: int = 32, device: str | torch.device = "auto", mc_samples: int | None = None,
             unknown_splits: Sequence[str] | None = None, bag_options: Mapping[str, Any] | None = None,
             smooth: str = "off", progress: bool = True) -> dict[str, Any]:
    """Evaluate the checkpoint at `model_path` on `split` of each dataset folder or rosbag2 in
    `data_roots`.

    Each data root is one scene, named by its folder name (made unique with '-2', ... if two roots
    share a name). A rosbag2 is read with the checkpoint's training bag options (`data.bag`: topics,
    ground truth, split time ranges) with `bag_options` (field -> value) replacing some of them.
    Frames are prepared with `eval_transform(checkpoint config)`. Writes metrics.json,
    predictions.csv, error_cdf.png and top_view.png (and uncertainty_vs_error.png with
    Monte-Carlo sampling) into `out` (see the module docstring) and returns the metrics dict that
    metrics.json holds: per scene, overall (all frames of all scenes together) and the mean-pose
    baseline of the checkpoint's training poses. `mc_samples`: None = the checkpoint's setting,
    0 = deterministic. `unknown_splits`: splits of unknown places for the loop-closure metrics
    (None: those of `DEFAULT_UNKNOWN_SPLITS` present; frames marked in-map by a synthetic scene are
    left out). `smooth`: "off" (per-frame estimates), "causal" or "offline" (the checkpoint's temporal
    model over each sequence; see smoothing.py). Every evaluation reports the median frame-to-frame
    jitter (`temporal_jitter`).
    """
    if smooth not in ("off", "causal", "offline"):
        raise ValueError(f"smooth must be 'off', 'causal' or 'offline', got {smooth!r}")
    roots = [Path(root) for root in data_roots]
    if not roots:
        raise ValueError("evaluate needs at least one data root")
    checked_thresholds = _check_thresholds(thresholds)
    out = Path(out)
    resolved_device = resolve_device(device)
    loaded = load_model(model_path, resolved_device)
    if smooth != "off" and loaded.temporal is None:
        raise ValueError(f"{loaded.path} has no temporal model: run `posenet-ros train-temporal` first, or "
                         "evaluate with smoothing off")
    transform = eval_transform(loaded.config)
    uncertainty = _uncertainty_setting(loaded, mc_samples)
    map_poses = np.asarray(loaded.map_poses_N7, dtype=np.float64).reshape(-1, 7)
    bag = bag_config_for_checkpoint(loaded.config, loaded.needs_depth, bag_options)
    logger.info("evaluating %s on %d scene(s), split %r, device %s, resize %s, crop %s, MC samples %d",
                loaded.path, len(roots), split, resolved_device, transform.resize, transform.crop,
                0 if uncertainty is None else uncertainty.mc_samples)

    def run(records: list[FrameRecord], description: str) -> Predictions:
        return predict(loaded.model, records, transform, device=resolved_device, batch_size=batch_size,
                       progress=progress, description=description, uncertainty=uncertainty,
                       keep_features=smooth != "off", ransac=loaded.ransac)

    scenes: dict[str, Predictions] = {}
    scene_metrics: dict[str, dict[str, Any]] = {}
    unknown_parts: dict[str, list[Predictions]] = {}
    for name, root in zip(_scene_names(roots), roots, strict=True):
        records = load_frames(root, split, bag=bag)
        if not records:
            raise ValueError(f"{root}: the {split!r} split has no frames")
        predictions = run(records, f"evaluate {name}")
        if smooth != "off":
            predictions = smoothed_predictions(loaded, predictions, smooth)  # type: ignore[arg-type]
        scenes[name] = predictions
        metrics = {"data_root": str(root), **pose_metrics(predictions.position_error_N,
                                                          predictions.orientation_error_N,
                                                          checked_thresholds),
                   **jitter_of(predictions)}
        unknown_records = (unknown_place_records(root, unknown_splits, bag=bag) if uncertainty is not None
                           else {})
        unknown = {split: run(records, f"{split} {name}") for split, records in unknown_records.items()}
        for split, part in unknown.items():
            unknown_parts.setdefault(split, []).append(part)
        metrics.update(_uncertainty_sections(predictions, unknown, loaded.loop_closure))
        scene_metrics[name] = _with_baseline(metrics, predictions, map_poses, checked_thresholds)
        logger.info("%s: %d frames, median %.3f m, %.2f°", name, len(predictions),
                    metrics["median_position_error_m"], metrics["median_orientation_error_deg"])

    everything = _concatenate(list(scenes.values()))
    all_unknown = {split: _concatenate(parts) for split, parts in unknown_parts.items()}
    overall = _with_baseline(pose_metrics(everything.position_error_N, everything.orientation_error_N,
                                          checked_thresholds), everything, map_poses, checked_thresholds)
    overall.update(jitter_of(everything))
    overall.update(_uncertainty_sections(everything, all_unknown, loaded.loop_closure))
    result: dict[str, Any] = {
        "model": str(loaded.path),
        "split": split,
        "device": str(resolved_device),
        "transform": {"resize": transform.resize, "crop": transform.crop, "centre_crop": True},
        "thresholds": [[metres, degrees] for metres, degrees in checked_thresholds],
        "method": loaded.method,
        "mc_samples": 0 if uncertainty is None or loaded.method == "scr" else uncertainty.mc_samples,
        **({"ransac": dataclasses.asdict(loaded.ransac)} if loaded.method == "scr" else {}),
        "calibrated": loaded.calibrated,
        "smoothing": smooth,
        "scenes": scene_metrics,
        "overall": overall,
    }
    atomic_write_json(out / "metrics.json", result)
    atomic_write_text(out / "predictions.csv", _predictions_csv(scenes))
    atomic_write_bytes(out / "error_cdf.png", _plot_error_cdf(scenes, checked_thresholds))
    atomic_write_bytes(out / "top_view.png", _plot_top_view(scenes, map_poses))
    if uncertainty is not None:
        atomic_write_bytes(out / "uncertainty_vs_error.png", _plot_uncertainty(scenes, all_unknown))
    logger.info("wrote metrics.json, predictions.csv and plots to %s", out)
    return result


def jitter_of(predictions: Predictions) -> dict[str, float]:
    """Median frame-to-frame jitter of predictions, frames ordered by (sequence, frame index)."""
    order = sorted(range(len(predictions)),
                   key=lambda i: (predictions.sequence[i], int(predictions.frame_index[i])))
    return temporal_jitter(predictions.position_pred_N3[order], predictions.quat_pred_N4[order],
                           predictions.position_true_N3[order], predictions.quat_true_N4[order],
                           [predictions.sequence[i] for i in order])


def smoothed_predictions(loaded: LoadedModel, predictions: Predictions, mode: SmoothMode) -> Predictions:
    """`predictions` (made with keep_features) with the poses (and covariances, when present) of the
    checkpoint's temporal model run over each sequence, frames in frame-index order, in `mode`."""
    assert loaded.temporal is not None and predictions.features_NF is not None
    device = next(loaded.model.parameters()).device
    features = torch.from_numpy(predictions.features_NF).to(device)
    with torch.inference_mode():
        position_norm, quat_in = head_inputs(loaded.model, features)
    position, quat = predictions.position_pred_N3.copy(), predictions.quat_pred_N4.copy()
    covariance = None if predictions.covariance_N66 is None else predictions.covariance_N66.copy()
    by_sequence: dict[str, list[int]] = {}
    for i, sequence in enumerate(predictions.sequence):
        by_sequence.setdefault(sequence, []).append(i)
    for members in by_sequence.values():
        members.sort(key=lambda i: int(predictions.frame_index[i]))
        index = torch.tensor(members, device=device)
        smoothed = smooth_sequence(loaded.temporal, loaded.model, loaded.temporal_calibration,
                                   features[index], position_norm[index], quat_in[index], mode)
        position[members], quat[members] = smoothed.position_T3, smoothed.quat_T4
        if covariance is not None:
            covariance[members] = smoothed.covariance_T66
    position_error, orientation_error = pose_errors(position, quat, predictions.position_true_N3,
                                                    predictions.quat_true_N4)
    return dataclasses.replace(predictions, position_pred_N3=position, quat_pred_N4=quat,
                               covariance_N66=covariance, position_error_N=position_error,
                               orientation_error_N=orientation_error)


def _uncertainty_setting(loaded: LoadedModel, mc_samples: int | None) -> UncertaintyConfig | None:
    """The checkpoint's uncertainty settings with `mc_samples` overridden; None = deterministic."""
    setting = loaded.uncertainty if mc_samples is None else dataclasses.replace(loaded.uncertainty,
                                                                                 mc_samples=mc_samples)
    return setting if setting.mc_samples > 0 else None


def _uncertainty_sections(predictions: Predictions, unknown: dict[str, Predictions],
                          loop_closure: LoopClosureConfig) -> dict[str, Any]:
    if predictions.covariance_N66 is None:
        return {}
    sections: dict[str, Any] = {"uncertainty": uncertainty_metrics(prediction_errors_N6(predictions),
                                                                   predictions.covariance_N66)}
    if unknown:
        sections["loop_closure"] = loop_closure_metrics(predictions, unknown, loop_closure)
    return sections


def format_table(metrics: dict[str, Any]) -> str:
    """A text table of `evaluate`'s metrics: one row per scene and an 'Overall' row.

    Columns: Scene | Frames | Median position (m) | Median orientation (°) | one column per
    threshold pair (share of frames within both bounds, in percent), e.g.

        Scene   | Frames | Median position | Median orientation | 5cm/5°
        chess   |   2000 |         0.320 m |              8.12° |  12.5%
    """
    thresholds = [(float(m), float(d)) for m, d in metrics.get("thresholds", [])]
    header = ["Scene", "Frames", "Median position", "Median orientation",
              *(threshold_label(m, d) for m, d in thresholds)]

    def row(name: str, values: dict[str, Any]) -> list[str]:
        cells = [name, str(values["frames"]), f"{values['median_position_error_m']:.3f} m",
                 f"{values['median_orientation_error_deg']:.2f}°"]
        for m, d in thresholds:
            share = values.get(threshold_key(m, d))
            cells.append("-" if share is None else f"{100.0 * share:.1f}%")
        return cells

    rows = [row(name, values) for name, values in metrics.get("scenes", {}).items()]
    rows.append(row("Overall", metrics["overall"]))
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in
                                               zip(cells[1:], widths[1:], strict=True)]
        return " | ".join(parts).rstrip()

    separator = "-+-".join("-" * width for width in widths)
    return "\n".join([render(header), separator, *(render(r) for r in rows[:-1]), separator,
                      render(rows[-1])])


def format_uncertainty(metrics: dict[str, Any]) -> str:
    """Lines summarising `evaluate`'s overall uncertainty and loop-closure metrics."""
    overall = metrics["overall"]
    source = "RANSAC covariance" if metrics.get("method") == "scr" else f"{metrics['mc_samples']} MC samples"
    lines = [f"Uncertainty ({source}, {'calibrated' if metrics.get('calibrated') else 'not calibrated'}):"]
    for block, values in overall["uncertainty"].items():
        coverage_text = ", ".join(f"{k}σ {100 * values[f'within_{k}sigma']:.0f}% "
                                  f"({100 * values[f'expected_{k}sigma']:.0f}%)" for k in (1, 2, 3))
        rho = values.get("spearman_sigma_error")
        lines.append(f"  {block:<8} mean NEES {values['mean_nees']:.2f} ({values['dimension']}); inside "
                     f"{coverage_text}" + ("" if rho is None else f"; Spearman σ-error {rho:.2f}"))
    loop = overall.get("loop_closure")
    if loop:
        by_split = ", ".join(f"{split} {auc:.3f}" for split, auc in loop["roc_auc_by_split"].items())
        lines.append(f"  loop closure: ROC AUC {loop['roc_auc']:.3f} ({by_split}; MC-dropout spread alone "
                     f"{loop['roc_auc_mc_spread']:.3f}), precision {loop['precision']:.3f}, recall "
                     f"{loop['recall']:.3f} ({loop['known_frames']} known, {loop['unknown_frames']} "
                     "unknown-place frames)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Saliency
# --------------------------------------------------------------------------------------------------


def saliency_maps(model: PoseNet, images_BCHW: torch.Tensor) -> torch.Tensor:
    """Gradient saliency (Simonyan et al.) of the pose output with respect to the input pixels.

    For each image, the gradient of the SUM of the seven pose outputs, the 3 normalised position
    outputs (`position_norm_B3`, scene-scale free) plus the 4 quaternion components, with respect to
    the input pixels (the model's input: RGB in [0, 1], then depth for RGB-D models); the map is the
    largest absolute gradient over the three colour channels: a float tensor (B, H, W) >= 0 on the
    images' device. The model runs in eval mode (batch norm uses its running statistics, so images do
    not interact and one backward pass serves the whole batch) with dropout off; its modes are
    restored afterwards. Parameter gradients (`.grad`) are left untouched.
    """
    if images_BCHW.ndim != 4 or images_BCHW.shape[1] != model.input_channels:
        raise ValueError(f"images must have shape (B, {model.input_channels}, H, W), got "
                         f"{tuple(images_BCHW.shape)}")
    state = _set_eval(model)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            images = images_BCHW.detach().clone().requires_grad_(True)
            output = model(images)
            score = output.position_norm_B3.sum() + output.quat_B4.sum()
            (gradient,) = torch.autograd.grad(score, images)
    finally:
        _restore(model, state)
    return gradient[:, :3].abs().amax(dim=1).detach()


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "frame"


def _plot_saliency(image_3HW: np.ndarray, saliency_HW: np.ndarray, title: str) -> bytes:
    from matplotlib.figure import Figure

    rgb = np.clip(image_3HW.transpose(1, 2, 0), 0.0, 1.0)
    top = float(np.percentile(saliency_HW, 99.5))
    shown = np.clip(saliency_HW / top, 0.0, 1.0) if top > 0 else np.zeros_like(saliency_HW)
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_image, ax_map, ax_overlay = fig.subplots(1, 3)
    ax_image.imshow(rgb)
    ax_image.set_title("image")
    mappable = ax_map.imshow(shown, cmap="inferno", vmin=0.0, vmax=1.0)
    ax_map.set_title("saliency |d pose / d pixel|")
    fig.colorbar(mappable, ax=ax_map, fraction=0.046, pad=0.02, label="relative to 99.5th percentile")
    ax_overlay.imshow(rgb)
    ax_overlay.imshow(shown, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.6)
    ax_overlay.set_title("overlay")
    for ax in (ax_image, ax_map, ax_overlay):
        ax.set_axis_off()
    fig.suptitle(title)
    return _figure_png(fig)


def write_saliency(model_path: str | Path, data_root: str | Path, *, split: str = "test",
                   frames: Sequence[int] | None = None, out: str | Path,
                   device: str | torch.device = "auto") -> list[Path]:
    """Write a saliency figure (image | saliency map | overlay) per chosen frame of a dataset split.

    `frames` are positions (0-based) in the split's frame list, in its order; default: 4 evenly
    spaced frames (all if fewer). A position outside 0..N-1 is a ValueError naming the valid range.
    Images are prepared with the checkpoint's `eval_transform`; a rosbag2 is read with the checkpoint's
    training bag options. Files are
    `out/saliency_<sequence>_<frame_index>.png`; returns their paths in the order of `frames`
    (repeated positions are written once).
    """
    out = Path(out)
    resolved_device = resolve_device(device)
    loaded = load_model(model_path, resolved_device)
    if not isinstance(loaded.model, PoseNet):
        raise ValueError(f"{loaded.path}: saliency maps are drawn for pose regression models, not method "
                         f"{loaded.method!r}")
    records = load_frames(data_root, split, bag=bag_config_for_checkpoint(loaded.config, loaded.needs_depth))
    count = len(records)
    if count == 0:
        raise ValueError(f"{data_root}: the {split!r} split has no frames")
    if frames is None:
        spaced = np.linspace(0, count - 1, min(4, count)).round().astype(np.int64)
        positions = sorted({int(x) for x in spaced})
    else:
        positions = list(dict.fromkeys(int(f) for f in frames))
        bad = [f for f in positions if not 0 <= f < count]
        if bad:
            raise ValueError(f"frame position(s) {bad} out of range: the {split!r} split of {data_root} has "
                             f"{count} frames, valid positions are 0..{count - 1}")
    dataset = PoseDataset(records, eval_transform(loaded.config), with_depth=loaded.model.config.needs_depth)
    written = []
    for position in positions:
        item = dataset[position]
        image = item["image"]
        inputs = network_input(item, loaded.model.input_channels)[None].to(resolved_device)
        saliency = saliency_maps(loaded.model, inputs)[0].cpu().numpy()
        record = records[position]
        title = f"{record.sequence} frame {record.frame_index} (position {position} of {count})"
        path = out / f"saliency_{_safe_name(record.sequence)}_{record.frame_index}.png"
        atomic_write_bytes(path, _plot_saliency(image.numpy(), saliency, title))
        written.append(path)
    logger.info("wrote %d saliency figure(s) to %s", len(written), out)
    return written
