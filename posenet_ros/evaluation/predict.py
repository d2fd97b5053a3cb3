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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from posenet_ros.core.camera import FrameTransform
from posenet_ros.core.device import resolve_device
from posenet_ros.data.dataset import PoseDataset, network_input, pose_vector
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.inference.metrics import pose_errors
from posenet_ros.inference.pose_solving import RansacConfig, ScrPose
from posenet_ros.inference.scene_coordinates import localize
from posenet_ros.inference.uncertainty import UncertaintyConfig, calibrated, estimate, fit_feature_covariance
from posenet_ros.models.posenet import PoseNet
from posenet_ros.models.scene_coordinates import SceneCoordinateNet

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


def set_eval_mode(model: torch.nn.Module) -> tuple[bool, str]:
    """Put `model` in eval mode with dropout off (a PoseNet's); return the state to restore."""
    state = (model.training, model.dropout_mode if isinstance(model, PoseNet) else "off")
    model.eval()
    if isinstance(model, PoseNet):
        model.set_dropout_mode("off")
    return state


def restore_mode(model: torch.nn.Module, state: tuple[bool, str]) -> None:
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
    state = set_eval_mode(model)
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
        restore_mode(model, state)
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
    state = set_eval_mode(model)
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc="feature memory", unit="batch", disable=not progress, leave=False):
                images = network_input(batch, model.input_channels).to(device)
                parts.append(model.forward_features(images).float())
    finally:
        restore_mode(model, state)
    covariance = fit_feature_covariance(torch.cat(parts), ridge)
    with torch.no_grad():
        model.feature_covariance.copy_(covariance)


