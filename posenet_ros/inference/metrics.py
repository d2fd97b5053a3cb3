"""Pose error metrics: per-frame errors, their summary (medians, means, shares within
(metres, degrees) thresholds), the mean-pose baseline and σ of a covariance.

Conventions (the package's, see docs/design.md): positions are camera positions in the world frame in
metres (the translation of `world_from_cam`); orientations are unit quaternions (w, x, y, z) of the
`world_from_cam` rotation, q and -q being the same rotation. Position errors are Euclidean
distances in metres, orientation errors the angle of the relative rotation in degrees, in [0, 180].

Metric names (`pose_metrics`, `metrics.json`):

    frames                          number of frames
    median_position_error_m         median position error (metres)
    median_orientation_error_deg    median orientation error (degrees)
    mean_position_error_m           mean position error (metres)
    mean_orientation_error_deg      mean orientation error (degrees)
    within_<M>m_<D>deg              share of frames (0..1) with position error <= M metres AND
                                    orientation error <= D degrees; M and D written with Python's
                                    `:g` format: (0.05, 5.0) -> "within_0.05m_5deg" (`threshold_key`)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import ArrayLike

from posenet_ros.core.geometry import angular_error_deg, quat_average, translation_error

DEFAULT_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.05, 5.0),)


def pose_errors(position_pred_N3: ArrayLike, quat_pred_N4: ArrayLike, position_true_N3: ArrayLike,
                quat_true_N4: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(position_error_N in metres, orientation_error_N in degrees) between predicted and true poses.

    Quaternions are (w, x, y, z) and need not be normalised; q and -q give an error of 0.
    Arguments broadcast (a single (3,) / (4,) prediction against N true poses works).
    """
    return (np.asarray(translation_error(position_pred_N3, position_true_N3), dtype=np.float64),
            np.asarray(angular_error_deg(quat_pred_N4, quat_true_N4), dtype=np.float64))


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


def check_thresholds(thresholds: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
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
    for metres, degrees in check_thresholds(thresholds):
        within = (position <= metres) & (orientation <= degrees)
        metrics[threshold_key(metres, degrees)] = float(np.mean(within))
    return metrics


def mean_pose_baseline(train_positions_N3: ArrayLike, train_quats_N4: ArrayLike, positions_true_M3: ArrayLike,
                       quats_true_M4: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Errors of the trivial localiser that answers the mean training pose for every frame.

    Predicts the mean training position (metres) and the mean training orientation
    (`quat_average`) for each of the M test frames; returns (position_error_M in metres,
    orientation_error_M in degrees). A network that has learnt anything beats this.
    """
    train_positions = np.asarray(train_positions_N3, dtype=np.float64).reshape(-1, 3)
    if len(train_positions) == 0:
        raise ValueError("mean_pose_baseline needs at least one training pose")
    mean_position = train_positions.mean(axis=0)
    mean_quat = quat_average(train_quats_N4)
    positions_true = np.asarray(positions_true_M3, dtype=np.float64).reshape(-1, 3)
    quats_true = np.asarray(quats_true_M4, dtype=np.float64).reshape(-1, 4)
    if len(positions_true) != len(quats_true):
        raise ValueError(f"{len(positions_true)} true positions but {len(quats_true)} true quaternions")
    return pose_errors(mean_position[None], mean_quat[None], positions_true, quats_true)


def image_descriptor(rgb_HW3: np.ndarray, size: tuple[int, int] = (16, 12)) -> np.ndarray:
    """The nearest-neighbour baseline's image descriptor (width * height,): the image as grey levels,
    shrunk to `size` (width, height) by area averaging, minus its mean, divided by its norm."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb_HW3), cv2.COLOR_RGB2GRAY).astype(np.float32)
    small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA).ravel().astype(np.float64)
    small -= small.mean()
    return small / max(float(np.linalg.norm(small)), 1e-9)


def nearest_neighbour_baseline(train_descriptors_NF: ArrayLike, train_positions_N3: ArrayLike,
                               train_quats_N4: ArrayLike, descriptors_MF: ArrayLike,
                               positions_true_M3: ArrayLike, quats_true_M4: ArrayLike
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Errors of image retrieval: each test frame answers the pose of the training frame whose
    `image_descriptor` is nearest (Euclidean). Returns (position_error_M in the poses' unit,
    orientation_error_M in degrees). A pose regressor should beat it; PoseNet often does not."""
    train = np.asarray(train_descriptors_NF, dtype=np.float64)
    test = np.asarray(descriptors_MF, dtype=np.float64)
    if len(train) == 0:
        raise ValueError("nearest_neighbour_baseline needs at least one training frame")
    distances = (test**2).sum(1)[:, None] - 2.0 * test @ train.T + (train**2).sum(1)[None]
    nearest = np.argmin(distances, axis=1)
    positions = np.asarray(train_positions_N3, dtype=np.float64).reshape(-1, 3)[nearest]
    quats = np.asarray(train_quats_N4, dtype=np.float64).reshape(-1, 4)[nearest]
    return pose_errors(positions, quats, positions_true_M3, quats_true_M4)


def sigmas(covariance_N66: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(σ position in metres, σ rotation in degrees): √trace of each 3x3 block."""
    position = np.sqrt(np.trace(covariance_N66[:, :3, :3], axis1=1, axis2=2))
    rotation = np.degrees(np.sqrt(np.trace(covariance_N66[:, 3:, 3:], axis1=1, axis2=2)))
    return position, rotation
