"""Covariance calibration and its diagnostics: NEES, σ-region coverage, uncertainty-error correlation.

A covariance is calibrated when the normalised estimation error squared, NEES = eᵀ Σ⁻¹ e, averages
its dimension d (3 for the position block, 3 for the rotation block, 6 for the whole pose), and the
share of errors inside the kσ region (NEES <= k²) matches the Gaussian value P(χ²_d <= k²).
`fit_scales` returns one multiplier per block that makes the mean NEES of a validation split equal
its dimension; they are stored in the checkpoint (`UncertaintyConfig.position_scale` /
`rotation_scale`) by `posenet-ros calibrate`.

Errors are e = (position_true - position_est in metres, δ in radians with
q_true = exp(δ) q_est about the world axes), the convention of `uncertainty.py`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import stats

from posenet_ros.device import resolve_device
from posenet_ros.geometry import quat_conjugate, quat_log, quat_multiply

BLOCKS: dict[str, slice] = {"position": slice(0, 3), "rotation": slice(3, 6), "pose": slice(0, 6)}
SIGMAS = (1, 2, 3)


def pose_error_vectors(position_est_N3: ArrayLike, quat_est_N4: ArrayLike, position_true_N3: ArrayLike,
                       quat_true_N4: ArrayLike) -> np.ndarray:
    """errors_N6: position (metres) and rotation vector δ (radians) with q_true = exp(δ) q_est."""
    position = np.asarray(position_true_N3, np.float64) - np.asarray(position_est_N3, np.float64)
    rotation = quat_log(quat_multiply(quat_true_N4, quat_conjugate(quat_est_N4)))
    return np.concatenate([position, rotation], axis=-1)


def nees(errors_N6: ArrayLike, covariance_N66: ArrayLike, block: str = "pose") -> np.ndarray:
    """NEES_N = eᵀ Σ⁻¹ e of one block ('position', 'rotation' or 'pose'); inf where Σ is singular."""
    index = BLOCKS[block]
    errors = np.asarray(errors_N6, np.float64)[:, index]
    covariance = np.asarray(covariance_N66, np.float64)[:, index, index]
    result = np.full(len(errors), np.inf)
    for i, (error, sigma) in enumerate(zip(errors, covariance, strict=True)):
        try:
            result[i] = float(error @ np.linalg.solve(sigma, error))
        except np.linalg.LinAlgError:
            continue
    return result


def fit_scales(errors_N6: ArrayLike, covariance_N66: ArrayLike) -> tuple[float, float]:
    """(position_scale, rotation_scale): the multipliers of the position and rotation blocks that
    make their mean NEES equal 3 on these frames (a validation split)."""
    scales = []
    for block in ("position", "rotation"):
        values = nees(errors_N6, covariance_N66, block)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError(f"cannot calibrate the {block} block: every covariance is singular "
                             "(use mc_samples > 0 or a model with aleatoric outputs)")
        scales.append(max(float(values.mean()) / 3.0, 1e-12))
    return scales[0], scales[1]


def coverage(nees_N: ArrayLike, dimension: int) -> dict[str, float]:
    """Share of frames inside the 1σ, 2σ and 3σ regions, with the Gaussian expectation of each."""
    values = np.asarray(nees_N, np.float64)
    result: dict[str, float] = {}
    for k in SIGMAS:
        result[f"within_{k}sigma"] = float(np.mean(values <= k * k))
        result[f"expected_{k}sigma"] = float(stats.chi2.cdf(k * k, dimension))
    return result


def spearman(a_N: ArrayLike, b_N: ArrayLike) -> float:
    """Spearman rank correlation of two per-frame quantities (NaN if either is constant)."""
    a, b = np.asarray(a_N, np.float64), np.asarray(b_N, np.float64)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def uncertainty_metrics(errors_N6: ArrayLike, covariance_N66: ArrayLike) -> dict[str, Any]:
    """Per block: mean and median NEES, its dimension, σ-region coverage; and the Spearman
    correlation between predicted standard deviation (√trace of the block) and the error norm."""
    errors = np.asarray(errors_N6, np.float64)
    covariance = np.asarray(covariance_N66, np.float64)
    result: dict[str, Any] = {}
    for block, index in BLOCKS.items():
        values = nees(errors, covariance, block)
        dimension = index.stop - index.start
        result[block] = {"dimension": dimension, "mean_nees": float(np.mean(values)),
                         "median_nees": float(np.median(values)), **coverage(values, dimension)}
        if block != "pose":
            sigma = np.sqrt(np.trace(covariance[:, index, index], axis1=1, axis2=2))
            result[block]["spearman_sigma_error"] = spearman(sigma, np.linalg.norm(errors[:, index], axis=1))
    return result


def calibrate_checkpoint(model_path: str | Path, data_root: str | Path, *, split: str = "val",
                         train_split: str = "train",
                         mc_samples: int | None = None, mc_mode: str | None = None,
                         enter_percentile: float = 90.0, leave_percentile: float = 99.0,
                         min_frames: int = 3, batch_size: int = 32, device: str = "auto",
                         progress: bool = True) -> dict[str, Any]:
    """Fit the covariance scales and loop-closure thresholds on `split` of `data_root` (frames of
    mapped places not used for training) and store them in the checkpoint at `model_path`, with
    the feature memory of the loop-closure score refitted on `train_split` (the training frames).

    Returns the report stored with them: the fitted values and the uncertainty metrics of the split
    before and after calibration.
    """
    from posenet_ros.checkpoint import load_model, store_calibration
    from posenet_ros.data.loading import load_frames
    from posenet_ros.evaluation import eval_transform, fit_feature_memory, predict, prediction_errors_N6
    from posenet_ros.loop_closure import LoopClosureConfig, calibrate_thresholds
    from posenet_ros.uncertainty import UncertaintyConfig, calibrated

    loaded = load_model(model_path, resolve_device(device))
    stored = loaded.uncertainty
    setting = UncertaintyConfig(mc_samples=stored.mc_samples if mc_samples is None else mc_samples,
                                mc_mode=stored.mc_mode if mc_mode is None else mc_mode,  # type: ignore[arg-type]
                                seed=stored.seed)
    if setting.mc_samples == 0 and loaded.model.config.aleatoric == "none":
        raise ValueError("nothing to calibrate: mc_samples is 0 and the model has no aleatoric outputs")
    fit_feature_memory(loaded.model, load_frames(data_root, train_split), eval_transform(loaded.config),
                       batch_size=batch_size, progress=progress)
    records = load_frames(data_root, split)
    if len(records) < 10:
        raise ValueError(f"{data_root}: the {split!r} split has {len(records)} frames; calibration "
                         "needs at least 10 frames of mapped places not used for training")
    predictions = predict(loaded.model, records, eval_transform(loaded.config), batch_size=batch_size,
                          progress=progress, description=f"calibrate on {split}", uncertainty=setting)
    errors = prediction_errors_N6(predictions)
    position_scale, rotation_scale = fit_scales(errors, predictions.covariance_N66)
    fitted = dataclasses.replace(setting, position_scale=position_scale, rotation_scale=rotation_scale)
    loop_closure = (calibrate_thresholds(predictions.score_N, enter_percentile, leave_percentile, min_frames)
                    if setting.mc_samples > 0 else LoopClosureConfig(min_frames=min_frames))
    report = {
        "data_root": str(data_root), "split": split, "frames": len(records),
        "mc_samples": setting.mc_samples, "mc_mode": setting.mc_mode,
        "position_scale": position_scale, "rotation_scale": rotation_scale,
        "loop_closure": dataclasses.asdict(loop_closure),
        "before": uncertainty_metrics(errors, predictions.covariance_N66),
        "after": uncertainty_metrics(errors, calibrated(torch.from_numpy(predictions.covariance_N66),
                                                        position_scale, rotation_scale).numpy()),
    }
    store_calibration(loaded.path, fitted, loop_closure, report,
                      {"feature_covariance": loaded.model.feature_covariance})
    return report
