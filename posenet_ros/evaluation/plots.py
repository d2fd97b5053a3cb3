"""The evaluation's figures as PNG bytes: error CDFs, the top view of the trajectories, predicted σ
against error. Drawn with `matplotlib.figure.Figure` (no pyplot, so the caller's backend is
untouched).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from posenet_ros.evaluation.predict import Predictions
from posenet_ros.inference.metrics import sigmas


def figure_png(fig: Any, dpi: int = 120) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def no_data(ax: Any, text: str = "no ground truth") -> None:
    """Write `text` in the middle of an empty panel."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="0.4")


def plot_error_cdf(groups: Mapping[str, tuple[np.ndarray, np.ndarray]],
                   thresholds: Sequence[tuple[float, float]] = (), medians: bool = False) -> bytes:
    """Cumulative distributions of position (metres) and orientation (degrees) errors, one curve per
    group (label -> (position_error_N, orientation_error_N)); a non-finite error counts as a frame the
    curve never reaches. `thresholds` (metres, degrees) are drawn as dotted lines; `medians` marks each
    curve's median."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_position, ax_orientation = fig.subplots(1, 2)
    for index, (label, (position_error, orientation_error)) in enumerate(groups.items()):
        colour = f"C{index % 10}"
        for ax, errors, number in ((ax_position, position_error, "{:.3f} m"),
                                   (ax_orientation, orientation_error, "{:.2f}°")):
            values = np.sort(errors[np.isfinite(errors)])
            if values.size == 0:
                continue
            share = np.arange(1, values.size + 1) / errors.size
            ax.step(np.concatenate([[0.0], values]), np.concatenate([[0.0], share]), where="post",
                    color=colour, label=f"{label} (N={errors.size})")
            if medians:
                median = float(np.median(values))
                ax.axvline(median, color="0.3", linestyle="--", linewidth=1,
                           label=f"median {number.format(median)}")
    for metres, degrees in thresholds:
        ax_position.axvline(metres, color="0.5", linestyle=":", linewidth=1)
        ax_orientation.axvline(degrees, color="0.5", linestyle=":", linewidth=1)
    ax_position.set_xlabel("position error (m)")
    ax_orientation.set_xlabel("orientation error (°)")
    for ax in (ax_position, ax_orientation):
        if not ax.lines:
            no_data(ax)
        else:
            ax.legend(loc="lower right", fontsize="small")
        ax.set_ylabel("share of frames")
        ax.set_ylim(0.0, 1.02)
        ax.set_xlim(left=0.0)
        ax.grid(True, alpha=0.3)
    ax_position.set_title("Position error CDF")
    ax_orientation.set_title("Orientation error CDF")
    return figure_png(fig)


def draw_sigma_vs_error(ax: Any, groups: Mapping[str, tuple[np.ndarray, np.ndarray]], unit: str) -> None:
    """Scatter predicted σ against the error (label -> (sigma_N, error_N), both in `unit`) with the
    lines error = σ and error = 2σ; logarithmic axes when the values are positive."""
    ax.set_xlabel(f"predicted σ ({unit})")
    ax.set_ylabel(f"error ({unit})")
    ax.grid(True, alpha=0.3)
    finite = {label: np.isfinite(sigma) & np.isfinite(errors) for label, (sigma, errors) in groups.items()}
    if not any(mask.any() for mask in finite.values()):
        no_data(ax, "no ground truth or no predicted σ")
        return
    positive = {label: mask & (groups[label][0] > 0) & (groups[label][1] > 0)
                for label, mask in finite.items()}
    logarithmic = all(positive[label].sum() == finite[label].sum() for label in groups)
    shown = positive if logarithmic else finite
    low, high = np.inf, 0.0
    for index, (label, (sigma, errors)) in enumerate(groups.items()):
        x, y = sigma[shown[label]], errors[shown[label]]
        if x.size:
            ax.scatter(x, y, s=8, alpha=0.6, color=f"C{index % 10}", label=f"{label} (N={x.size})")
            low, high = min(low, x.min(), y.min() / 2.0), max(high, x.max(), y.max())
    if logarithmic:
        ax.set_xscale("log")
        ax.set_yscale("log")
        line = np.geomspace(low, high, 50)
    else:
        line = np.linspace(0.0, max(high, 1e-6), 50)
    ax.plot(line, line, color="0.4", linestyle="--", linewidth=0.9, label="error = σ")
    ax.plot(line, 2.0 * line, color="C3", linestyle=":", linewidth=1.1, label="error = 2σ")
    ax.legend(loc="upper left", fontsize="small")


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
    """Predicted σ against the error per scene (position, orientation), and the loop-closure scores of
    the evaluated split against those of the unknown-place splits."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    sigma = {name: sigmas(p.covariance_N66) for name, p in scenes.items()}
    draw_sigma_vs_error(axes[0], {name: (sigma[name][0], p.position_error_N)
                                  for name, p in scenes.items()}, "m")
    draw_sigma_vs_error(axes[1], {name: (sigma[name][1], p.orientation_error_N)
                                  for name, p in scenes.items()}, "°")
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
    return figure_png(fig)
