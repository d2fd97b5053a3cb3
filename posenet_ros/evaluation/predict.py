"""Predictions of a dataset split, made through the inference path the node uses
(`runtime.methods`), compared with the true poses; and the loop-closure feature memory of a PoseNet.

Conventions (the package's, see docs/design.md): positions are camera positions in the world frame in
metres (the translation of `world_from_cam`); orientations are unit quaternions (w, x, y, z) of the
`world_from_cam` rotation, q and -q being the same rotation. Position errors are Euclidean
distances in metres, orientation errors the angle of the relative rotation in degrees, in [0, 180].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from posenet_ros.core.camera import FrameTransform, crop_box, input_intrinsics
from posenet_ros.core.progress import progress_bar
from posenet_ros.data.dataset import PoseDataset, network_input, pose_vector
from posenet_ros.data.frames import BagMessage, DatasetError, FrameRecord
from posenet_ros.data.images import record_camera
from posenet_ros.inference.metrics import pose_errors
from posenet_ros.inference.uncertainty import fit_feature_covariance
from posenet_ros.models.posenet import PoseNet
from posenet_ros.runtime.methods import FrameBatch, PoseRegression, RelocalizationMethod

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

    def sequences(self) -> list[list[int]]:
        """The frame indices of each sequence (in order of first appearance), in frame-index order."""
        members: dict[str, list[int]] = {}
        for i, sequence in enumerate(self.sequence):
            members.setdefault(sequence, []).append(i)
        return [sorted(frames, key=lambda i: int(self.frame_index[i])) for frames in members.values()]


def frame_keys(records: Sequence[FrameRecord]) -> list[int]:
    """The key that seeds each frame's randomness (Monte-Carlo masks, RANSAC): its header stamp (ns)
    for a frame read from a rosbag2, as the node and replay use, else its position in `records`."""
    return [record.image_path.stamp_ns if isinstance(record.image_path, BagMessage) else index
            for index, record in enumerate(records)]


def _input_intrinsics(records: Sequence[FrameRecord], transform: FrameTransform) -> np.ndarray:
    """K_B33 (float64) of the network inputs of `records`, computed as the Relocalizer computes it
    (the dataset's K is float32), from each image's pinhole camera at its size (`record_camera`)."""
    cameras = [record_camera(record) for record in records]
    return np.stack([input_intrinsics(camera, crop_box(camera.width, camera.height, transform))
                     for camera in cameras])


def predict(method: RelocalizationMethod, records: Sequence[FrameRecord], transform: FrameTransform, *,
            batch_size: int = 32, progress: bool = False, description: str = "predict",
            keep_features: bool = False, with_uncertainty: bool = True) -> Predictions:
    """Run `method` (`runtime.methods`: the inference path the node uses) over `records` in their
    order and compare with the true poses. Each frame is seeded by its key (`frame_keys`).

    With `with_uncertainty`, also the covariances, their uncalibrated epistemic and aleatoric parts,
    the loop-closure scores and the Monte-Carlo spread. A frame without a pose (scene coordinates:
    RANSAC found none) has a NaN pose and infinite errors. The result of a frame does not depend on
    `batch_size` beyond float32 rounding of the network (test/evaluation/test_inference_paths.py).

    The model runs in eval mode with dropout off under `torch.inference_mode` (`method.evaluating`).
    Frames are prepared by `transform` (a centre crop and no jitter for evaluation; `window` must be
    1) and loaded in order by a DataLoader (no shuffling, no worker processes); true poses come from the
    records in float64. `progress` shows a tqdm bar labelled `description`. `keep_features`: also
    return each frame's head input (`features_NF`, float32), for smoothing.
    """
    if transform.window != 1:
        raise ValueError(f"predict works on single frames: transform.window must be 1, "
                         f"got {transform.window}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    records = list(records)
    keys = frame_keys(records)
    if method.needs_intrinsics and any(record.intrinsics is None for record in records):
        raise DatasetError(f"{method.name} models need the camera intrinsics of every frame")
    dataset = PoseDataset(records, transform, with_depth=method.needs_depth)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    parts: dict[str, list[np.ndarray]] = {}
    with method.evaluating(), torch.inference_mode():
        first = 0
        for batch in progress_bar(loader, desc=description, unit="batch", disable=not progress, leave=False):
            count = len(batch["image"])
            part = records[first:first + count]
            frames = FrameBatch(
                network_input(batch, method.input_channels).to(method.device, non_blocking=True),
                keys[first:first + count],
                _input_intrinsics(part, transform) if method.needs_intrinsics else None,
                batch["depth"] if method.depth_as_input else None)
            distribution = method.infer(frames).distribution
            values = {"position": distribution.position_B3, "quat": distribution.quat_B4}
            if with_uncertainty:
                values.update(covariance=distribution.covariance_B66, epistemic=distribution.epistemic_B66,
                              aleatoric=distribution.aleatoric_B66, score=distribution.score_B,
                              mc_spread=distribution.mc_spread_B)
            if keep_features and distribution.features_BF is not None:
                values["features"] = distribution.features_BF
            for key, value in values.items():
                dtype = torch.float32 if key == "features" else torch.float64
                parts.setdefault(key, []).append(value.detach().to("cpu", dtype).numpy())
            first += count
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


def fit_feature_memory(model: PoseNet, records: Sequence[FrameRecord], transform: FrameTransform, *,
                       batch_size: int = 32, ridge: float = 1e-3, progress: bool = False) -> None:
    """Fit `model.feature_covariance` on the features of `records` (the training frames, prepared
    with the test-time `transform`, dropout off): the memory the loop-closure score compares with."""
    dataset = PoseDataset(list(records), transform, with_depth=model.config.needs_depth)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    device = next(model.parameters()).device
    parts = []
    with PoseRegression.evaluating_model(model), torch.inference_mode():
        for batch in progress_bar(loader, desc="feature memory", unit="batch", disable=not progress,
                                  leave=False):
            images = network_input(batch, model.input_channels).to(device)
            parts.append(model.forward_features(images).float())
    covariance = fit_feature_covariance(torch.cat(parts), ridge)
    with torch.no_grad():
        model.feature_covariance.copy_(covariance)


