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

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from posenet_ros.evaluation.predict import Predictions
from posenet_ros.inference.metrics import sigmas


def figure_png(fig: Any, dpi: int = 120) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def plot_error_cdf(scenes: dict[str, Predictions], thresholds: Sequence[tuple[float, float]]) -> bytes:
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
    return figure_png(fig)


def plot_top_view(scenes: dict[str, Predictions], map_poses_N7: np.ndarray) -> bytes:
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
    return figure_png(fig)


def plot_uncertainty(scenes: dict[str, Predictions], unknown: dict[str, Predictions]) -> bytes:
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
    return figure_png(fig)


