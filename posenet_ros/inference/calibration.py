"""Covariance calibration and its diagnostics: NEES, σ-region coverage, uncertainty-error correlation.

A covariance is calibrated when the normalised estimation error squared, NEES = eᵀ Σ⁻¹ e, averages
its dimension d (3 for the position block, 3 for the rotation block, 6 for the whole pose), and the
share of errors inside the kσ region (NEES <= k²) matches the Gaussian value P(χ²_d <= k²).

A single multiplier per block fitted on a validation split is not enough: held-out
views far from the training images have errors several times larger than views close to them, while
the Monte-Carlo spread barely changes, so a constant scale is too small for some sequences and too
large for others (on the synthetic scene the per-loop mean NEES varied from 3 to 30 under one scale).
`fit_block_calibration` therefore also fits how the block grows with the frame's novelty, the
loop-closure score s (log feature-space variance, uncertainty.py): the block is multiplied by
f(s) = scale · exp(novelty · (s - s_ref)), with scale and novelty >= 0 the maximum-likelihood
values under a Gaussian error model over two groups of frames weighted equally: the validation split
(held-out views of mapped places) and training frames (the views the network has seen, with low s
and small errors). Given novelty, the scale is in closed form (the weighted mean NEES of both groups
equals the dimension); novelty is a bounded 1-D search. `posenet-ros calibrate`
(evaluation/calibrate.py) stores the result in the checkpoint (`UncertaintyConfig`). Without finite
scores the fit is a single scale per block that makes the validation split's mean NEES equal its
dimension.

Errors are e = (position_true - position_est in metres, δ in radians with
q_true = exp(δ) q_est about the world axes), the convention of `uncertainty.py`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

from posenet_ros.core.geometry import quat_conjugate, quat_log, quat_multiply

BLOCKS: dict[str, slice] = {"position": slice(0, 3), "rotation": slice(3, 6), "pose": slice(0, 6)}
SIGMAS = (1, 2, 3)


def pose_error_vectors(position_est_N3: ArrayLike, quat_est_N4: ArrayLike, position_true_N3: ArrayLike,
                       quat_true_N4: ArrayLike) -> np.ndarray:
    """errors_N6: position (metres) and rotation vector δ (radians) with q_true = exp(δ) q_est; NaN
    for a frame without an estimate (NaN quaternion)."""
    position = np.asarray(position_true_N3, np.float64) - np.asarray(position_est_N3, np.float64)
    quat_est = np.asarray(quat_est_N4, np.float64)
    quat_true = np.broadcast_to(np.asarray(quat_true_N4, np.float64), quat_est.shape)
    rotation = np.full((*quat_est.shape[:-1], 3), np.nan)
    posed = np.isfinite(quat_est).all(axis=-1)
    rotation[posed] = quat_log(quat_multiply(quat_true[posed], quat_conjugate(quat_est[posed])))
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


NOVELTY_MAX = 20.0  # upper bound of the novelty exponent searched by `fit_block_calibration`


def fit_block_calibration(nees_val_N: ArrayLike, score_val_N: ArrayLike, nees_train_M: ArrayLike,
                          score_train_M: ArrayLike, dimension: int,
                          score_reference: float) -> tuple[float, float]:
    """(scale, novelty) of one block: maximum Gaussian likelihood of the calibrated NEES of the
    validation frames and the training frames (each group weighing half), with the block multiplied
    by scale · exp(novelty · (score - score_reference)) and 0 <= novelty <= NOVELTY_MAX.

    Frames with a non-finite NEES or score are left out; with no finite training frames the novelty
    is 0 and the scale makes the mean NEES of the validation frames equal `dimension`.
    """
    groups = []
    for values, scores in ((nees_val_N, score_val_N), (nees_train_M, score_train_M)):
        values, scores = np.asarray(values, np.float64), np.asarray(scores, np.float64)
        keep = np.isfinite(values) & np.isfinite(scores)
        if keep.any():
            count = int(keep.sum())
            groups.append((values[keep], scores[keep] - score_reference, np.full(count, 1.0 / count)))
    if len(groups) < 2:
        values = np.asarray(nees_val_N, np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("cannot calibrate: every covariance of the validation frames is singular "
                             "(use mc_samples > 0 or a model with aleatoric outputs)")
        return max(float(values.mean()) / dimension, 1e-12), 0.0
    values, offsets, weights = (np.concatenate(parts) for parts in zip(*groups, strict=True))
    weights = weights / weights.sum()

    def scale(novelty: float) -> float:
        return max(float(np.sum(weights * values * np.exp(-novelty * offsets))) / dimension, 1e-300)

    def negative_log_likelihood(novelty: float) -> float:
        # Σ w (½ NEES / f + ½ d log f) with f = scale · exp(novelty · offset), at the optimal scale.
        return 0.5 * dimension * (math.log(scale(novelty)) + novelty * float(np.sum(weights * offsets)))

    novelty = float(optimize.minimize_scalar(negative_log_likelihood, bounds=(0.0, NOVELTY_MAX),
                                             method="bounded", options={"xatol": 1e-6}).x)
    if negative_log_likelihood(0.0) <= negative_log_likelihood(novelty):
        novelty = 0.0
    return scale(novelty), novelty


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
    correlation between predicted standard deviation (√trace of the block) and the error norm.
    Frames without a finite error and covariance (scene coordinates: no pose found) are left out."""
    errors = np.asarray(errors_N6, np.float64)
    covariance = np.asarray(covariance_N66, np.float64)
    keep = np.isfinite(errors).all(axis=1) & np.isfinite(covariance).all(axis=(1, 2))
    errors, covariance = errors[keep], covariance[keep]
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


