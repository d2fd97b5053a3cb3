"""The HTML report of a rosbag replay: five PNG plots and an index.html beside them.

A replay runs a recorded camera stream through the relocalizer and compares the estimated camera
poses with ground truth. `write_report` turns its per-frame results (`ReportFrames`) and its metrics
dict into files in one folder:

    trajectory.png            top view of ground truth, estimates (coloured by position error) and
                              training cameras
    error_over_time.png       position and orientation error over time with the predicted 2σ band
    error_cdf.png             cumulative distributions of position and orientation error, medians marked
    uncertainty_vs_error.png  predicted σ against actual error, with the error = σ and error = 2σ lines
    loop_closure.png          loop-closure score over time, the known_place flag shaded
    index.html                title, notes, headline figures, the full metrics (JSON) and the figures

Conventions as in the rest of the package (docs/design.md): positions are camera positions (the
translation of `world_from_cam`) in the map frame in metres, quaternions unit (w, x, y, z). Time in
the plots is seconds since the first frame's header stamp. Frames without ground truth (NaN) are
left out wherever an error is needed; a replay without any ground truth still gets every file, with
"no ground truth" written in the empty panels. Every file is written atomically (index.html last), so
writing into a folder that already holds a report replaces it file by file.
"""

from __future__ import annotations

import datetime
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from posenet_ros.core.atomic_io import atomic_write_bytes, atomic_write_text
from posenet_ros.evaluation.plots import draw_sigma_vs_error, figure_png, no_data, plot_error_cdf

__all__ = ["PLOTS", "ReportFrames", "headline_rows", "write_report"]

PLOTS: dict[str, str] = {
    "trajectory": "trajectory.png",
    "error_over_time": "error_over_time.png",
    "error_cdf": "error_cdf.png",
    "uncertainty_vs_error": "uncertainty_vs_error.png",
    "loop_closure": "loop_closure.png",
}

CAPTIONS: dict[str, str] = {
    "trajectory": "Top view of the map frame: ground truth (line), estimated camera positions coloured by "
                  "position error (grey where the frame has no ground truth) and training cameras "
                  "(light grey dots).",
    "error_over_time": "Position and orientation error over time, with the band 0..2σ of the predicted "
                       "uncertainty.",
    "error_cdf": "Cumulative distribution of the position and orientation errors of the frames with "
                 "ground truth; the dashed lines mark the medians.",
    "uncertainty_vs_error": "Predicted σ (√trace of the covariance block) against the actual error, "
                            "with the lines error = σ and error = 2σ.",
    "loop_closure": "Loop-closure score over time (higher = less familiar); the shaded spans are the "
                    "frames flagged as a known place; the grey lines are the flag's enter and leave "
                    "thresholds (when the metrics give them).",
}

NOT_AVAILABLE = "n/a"

_CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }
th { background: #f3f3f3; }
td.value { font-family: monospace; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
.generated { color: #777; font-size: 0.85em; }
""".strip()


@dataclass
class ReportFrames:
    """Per-frame results of a replay, N frames in stream order (float64 unless stated).

    Positions are world_from_cam translations in the map frame in metres, quaternions unit
    (w, x, y, z). Rows of the ground truth and the errors are NaN for frames without ground truth.
    """

    stamp_ns: np.ndarray  # (N,) int64, image header stamps (nanoseconds)
    position_est_N3: np.ndarray  # (N, 3) metres, map frame, estimated world_from_cam position
    quat_est_N4: np.ndarray  # (N, 4) unit (w, x, y, z)
    position_true_N3: np.ndarray  # (N, 3) ground truth; NaN rows where the frame has no ground truth
    quat_true_N4: np.ndarray  # (N, 4) NaN rows where no ground truth
    position_error_N: np.ndarray  # (N,) metres; NaN where no ground truth
    orientation_error_N: np.ndarray  # (N,) degrees; NaN where no ground truth
    sigma_position_m_N: np.ndarray  # (N,) √trace of the position covariance block (metres)
    sigma_rotation_deg_N: np.ndarray  # (N,) √trace of the rotation block, in degrees
    known_place_N: np.ndarray  # (N,) bool, the loop-closure flag
    score_N: np.ndarray  # (N,) loop-closure score (higher = less familiar); may be NaN

    def __len__(self) -> int:
        return len(self.stamp_ns)


def _checked(frames: ReportFrames) -> ReportFrames:
    """A copy of `frames` with arrays of the documented dtypes; a shape mismatch is a ValueError."""
    count = len(np.asarray(frames.stamp_ns).reshape(-1))
    if count == 0:
        raise ValueError("no frames to report")
    shapes = {"stamp_ns": (count,), "position_est_N3": (count, 3), "quat_est_N4": (count, 4),
              "position_true_N3": (count, 3), "quat_true_N4": (count, 4), "position_error_N": (count,),
              "orientation_error_N": (count,), "sigma_position_m_N": (count,),
              "sigma_rotation_deg_N": (count,), "known_place_N": (count,), "score_N": (count,)}
    values: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        dtype = np.int64 if name == "stamp_ns" else bool if name == "known_place_N" else np.float64
        array = np.asarray(getattr(frames, name), dtype=dtype)
        if array.shape != shape:
            raise ValueError(f"ReportFrames.{name} must have shape {shape} for {count} frames, "
                             f"got {array.shape}")
        values[name] = array
    return ReportFrames(**values)


def write_report(out_dir: str | Path, frames: ReportFrames, metrics: dict, *, title: str,
                 map_poses_N7: np.ndarray | None = None, notes: Sequence[str] = ()) -> Path:
    """Write the five PNGs (`PLOTS`) and index.html into out_dir (created if needed); return index.html's
    path.

    `metrics`: the replay's metrics (see `headline_rows` for the keys shown in the summary table; the
    whole dict is shown as JSON). `map_poses_N7`: the training camera poses (position xyz in metres,
    quaternion wxyz), drawn in the trajectory plot when given. `notes`: lines listed under the title.
    N == 0 frames is a ValueError("no frames to report"); mismatched array shapes are a ValueError.
    Existing files of the same names are replaced atomically; other files in out_dir are left alone.
    """
    frames = _checked(frames)
    map_positions = (np.zeros((0, 3)) if map_poses_N7 is None
                     else np.asarray(map_poses_N7, dtype=np.float64).reshape(-1, 7)[:, :3])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    time_s = (frames.stamp_ns - frames.stamp_ns[0]).astype(np.float64) / 1e9
    loop = metrics.get("loop_closure") if isinstance(metrics.get("loop_closure"), dict) else {}
    pictures = {
        "trajectory": _plot_trajectory(frames, map_positions),
        "error_over_time": _plot_error_over_time(frames, time_s),
        "error_cdf": _plot_error_cdf(frames),
        "uncertainty_vs_error": _plot_uncertainty_vs_error(frames),
        "loop_closure": _plot_loop_closure(frames, time_s, loop.get("enter_score"), loop.get("leave_score")),
    }
    for key, data in pictures.items():
        atomic_write_bytes(out_dir / PLOTS[key], data)
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = _html_page(title, metrics, notes, generated, len(frames), float(time_s[-1]))
    return atomic_write_text(out_dir / "index.html", page)


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _top_view_axes(position_true_N3: np.ndarray, position_est_N3: np.ndarray) -> tuple[int, int]:
    """Indices (ascending) of the two axes with the largest extent (max - min) of the ground truth;
    of the estimates when no frame has ground truth; (0, 1) when neither has finite rows."""
    for positions in (position_true_N3, position_est_N3):
        finite = positions[np.all(np.isfinite(positions), axis=1)]
        if len(finite):
            extent = finite.max(axis=0) - finite.min(axis=0)
            first, second = np.argsort(-extent, kind="stable")[:2]
            return int(min(first, second)), int(max(first, second))
    return 0, 1


GAP_S = 1.0  # lines are broken where consecutive stamps are further apart (the node resets there)


def _broken(time_s: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(time, values) with a NaN row inserted after every gap longer than GAP_S, so plotted lines
    do not join separate sequences."""
    after = np.flatnonzero(np.diff(time_s) > GAP_S) + 1
    gap_time = (time_s[after - 1] + time_s[after]) / 2.0
    return (np.insert(time_s.astype(np.float64), after, gap_time),
            np.insert(values.astype(np.float64), after, np.nan, axis=0))


def _plot_trajectory(frames: ReportFrames, map_positions_M3: np.ndarray) -> bytes:
    from matplotlib.figure import Figure

    a, b = _top_view_axes(frames.position_true_N3, frames.position_est_N3)
    names = "xyz"
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    if len(map_positions_M3):
        ax.scatter(map_positions_M3[:, a], map_positions_M3[:, b], s=3, color="0.82",
                   label="training cameras", zorder=1)
    has_truth = np.all(np.isfinite(frames.position_true_N3), axis=1)
    if has_truth.any():
        # NaN rows break the line, so gaps in the ground truth stay gaps.
        time_s = (frames.stamp_ns - frames.stamp_ns[0]) / 1e9
        _, truth = _broken(time_s, frames.position_true_N3)
        ax.plot(truth[:, a], truth[:, b], color="k", linewidth=1.0, label="ground truth", zorder=2)
    with_error = np.isfinite(frames.position_error_N)
    without = ~with_error
    if without.any():
        ax.scatter(frames.position_est_N3[without, a], frames.position_est_N3[without, b], s=10, color="0.55",
                   label="estimate (no ground truth)", zorder=3)
    if with_error.any():
        errors = frames.position_error_N[with_error]
        top = float(np.percentile(errors, 95))
        top = top if top > 0 else max(float(errors.max()), 1e-3)
        points = ax.scatter(frames.position_est_N3[with_error, a], frames.position_est_N3[with_error, b],
                            s=12, c=errors, cmap="viridis", vmin=0.0, vmax=top, label="estimate", zorder=4)
        fig.colorbar(points, ax=ax, extend="max" if errors.max() > top else "neither",
                     label="position error (m)")
    else:
        no_data(ax)
    ax.set_xlabel(f"{names[a]} (m)")
    ax.set_ylabel(f"{names[b]} (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(f"Trajectory, top view ({names[a]}-{names[b]}, map frame)")
    return figure_png(fig)


def _plot_error_over_time(frames: ReportFrames, time_s: np.ndarray) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 6), layout="constrained")
    ax_position, ax_orientation = fig.subplots(2, 1, sharex=True)
    panels = ((ax_position, frames.position_error_N, frames.sigma_position_m_N, "position error (m)", "C0"),
              (ax_orientation, frames.orientation_error_N, frames.sigma_rotation_deg_N,
               "orientation error (°)", "C1"))
    for ax, errors, sigma, label, colour in panels:
        band = 2.0 * sigma
        if np.isfinite(band).any():
            ax.fill_between(*_broken(time_s, band), 0.0, color=colour, alpha=0.2, linewidth=0,
                            label="2σ predicted")
        finite = np.isfinite(errors)
        if finite.any():
            # NaN errors leave gaps in the line; the markers show frames isolated between gaps.
            ax.plot(*_broken(time_s, errors), color=colour, linewidth=0.8, marker=".", markersize=3,
                    label="error")
        else:
            no_data(ax)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0.0)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize="small")
    ax_position.set_xlim(float(time_s.min()), max(float(time_s.max()), float(time_s.min()) + 1e-3))
    ax_orientation.set_xlabel("time since the first frame (s)")
    ax_position.set_title("Error over time with the predicted uncertainty")
    return figure_png(fig)


def _plot_error_cdf(frames: ReportFrames) -> bytes:
    """The error CDFs of the frames with ground truth, medians marked."""
    with_truth = np.isfinite(frames.position_error_N)
    errors = (frames.position_error_N[with_truth], frames.orientation_error_N[with_truth])
    return plot_error_cdf({"frames with ground truth": errors}, medians=True)


def _plot_uncertainty_vs_error(frames: ReportFrames) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax_position, ax_rotation = fig.subplots(1, 2)
    draw_sigma_vs_error(ax_position, {"frames": (frames.sigma_position_m_N, frames.position_error_N)}, "m")
    draw_sigma_vs_error(ax_rotation, {"frames": (frames.sigma_rotation_deg_N, frames.orientation_error_N)},
                        "°")
    ax_position.set_title("Position: predicted σ vs error")
    ax_rotation.set_title("Rotation: predicted σ vs error")
    return figure_png(fig)


def _runs(flags_N: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) frame indices (inclusive) of each run of True in `flags_N`."""
    padded = np.concatenate([[False], flags_N, [False]]).astype(np.int8)
    change = np.flatnonzero(np.diff(padded))
    return [(int(start), int(stop) - 1) for start, stop in zip(change[::2], change[1::2], strict=True)]


def _plot_loop_closure(frames: ReportFrames, time_s: np.ndarray, enter_score: Any, leave_score: Any) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    ax = fig.subplots()
    # A flagged frame's span reaches to the next frame's stamp (the last one: one median frame interval).
    steps = np.diff(time_s)
    step = float(np.median(steps)) if steps.size and np.median(steps) > 0 else 0.1
    ends = np.minimum(np.concatenate([time_s[1:], [np.inf]]), time_s + step)  # not across gaps
    for index, (first, last) in enumerate(_runs(frames.known_place_N)):
        ax.axvspan(time_s[first], ends[last], color="C2", alpha=0.2, linewidth=0,
                   label="known_place on" if index == 0 else None)
    if np.isfinite(frames.score_N).any():
        ax.plot(*_broken(time_s, frames.score_N), color="C0", linewidth=0.9, marker=".", markersize=3,
                label="score")
    else:
        no_data(ax, "no loop-closure score")
    for value, name, style in ((enter_score, "enter", "--"), (leave_score, "leave", ":")):
        if _number(value) is not None:
            ax.axhline(float(value), color="0.4", linestyle=style, linewidth=0.9, label=f"{name} threshold")
    ax.set_xlim(float(time_s[0]), float(ends[-1]))
    ax.set_xlabel("time since the first frame (s)")
    ax.set_ylabel("loop-closure score (higher = less familiar)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    known = int(frames.known_place_N.sum())
    ax.set_title(f"Loop closure: known_place on for {known} of {len(frames)} frames")
    return figure_png(fig)


# --------------------------------------------------------------------------------------------------
# index.html
# --------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """`value` as a finite float; None for None, NaN, ±inf, booleans and anything not a number."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _format(value: Any, pattern: str = "{:.3f}", unit: str = "") -> str:
    """A number formatted by `pattern` and followed by `unit` ('0.123 m', '2.50°'); 'n/a' for None,
    NaN, ±inf or a non-number."""
    number = _number(value)
    if number is None:
        return NOT_AVAILABLE
    separator = "" if unit in ("", "°") else " "
    return pattern.format(number) + separator + unit


def _count(value: Any) -> str:
    number = _number(value)
    return NOT_AVAILABLE if number is None else f"{number:.0f}"


def _percent(value: Any) -> str:
    """A share in [0, 1] as a percentage with one decimal: 0.5 -> '50.0%'."""
    number = _number(value)
    return NOT_AVAILABLE if number is None else f"{100.0 * number:.1f}%"


def headline_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, formatted value) rows of the report's summary table, for the keys `metrics` has.

    Looked for, in this order: frames, frames_with_ground_truth, median_position_error_m (3 decimals,
    metres), median_orientation_error_deg (2 decimals, degrees), accuracy (label -> share, in percent),
    uncertainty (per block: mean_nees, within_2sigma with expected_2sigma), loop_closure (precision,
    recall), policy (frames published / withheld, the published frames' p99 position error),
    latency_ms (p50, p99), dropped, rejected, throughput_fps. A missing key gives no row; a
    value that is None, NaN or not a number is 'n/a'.
    """
    rows: list[tuple[str, str]] = []
    if "frames" in metrics:
        rows.append(("Frames", _count(metrics["frames"])))
    if "frames_with_ground_truth" in metrics:
        rows.append(("Frames with ground truth", _count(metrics["frames_with_ground_truth"])))
    if "median_position_error_m" in metrics:
        rows.append(("Median position error", _format(metrics["median_position_error_m"], "{:.3f}", "m")))
    if "median_orientation_error_deg" in metrics:
        rows.append(("Median orientation error",
                     _format(metrics["median_orientation_error_deg"], "{:.2f}", "°")))
    accuracy = metrics.get("accuracy")
    if isinstance(accuracy, dict):
        for label, share in accuracy.items():
            rows.append((f"Within {label}", _percent(share)))
    uncertainty = metrics.get("uncertainty")
    if isinstance(uncertainty, dict):
        for block, values in uncertainty.items():
            values = values if isinstance(values, dict) else {}
            rows.append((f"Uncertainty, {block}",
                         f"mean NEES {_format(values.get('mean_nees'), '{:.2f}')}; inside 2σ "
                         f"{_percent(values.get('within_2sigma'))} "
                         f"(expected {_percent(values.get('expected_2sigma'))})"))
    loop = metrics.get("loop_closure")
    if isinstance(loop, dict):
        rows.append(("Loop closure", f"precision {_format(loop.get('precision'))}, "
                                     f"recall {_format(loop.get('recall'))}"))
    policy = metrics.get("policy")
    if isinstance(policy, dict):
        published = policy.get("published_error", {}).get("position_m", {})
        rows.append(("Poses published / withheld",
                     f"{_count(policy.get('frames_published'))} / {_count(policy.get('frames_withheld'))}; "
                     f"published p99 position error {_format(published.get('p99'), '{:.3f}', 'm')}"))
    latency = metrics.get("latency_ms")
    if isinstance(latency, dict):
        rows.append(("Latency", f"p50 {_format(latency.get('p50'), '{:.1f}', 'ms')}, "
                                f"p99 {_format(latency.get('p99'), '{:.1f}', 'ms')}"))
    if "dropped" in metrics:
        rows.append(("Dropped frames", _count(metrics["dropped"])))
    if "rejected" in metrics:
        rows.append(("Rejected frames", _count(metrics["rejected"])))
    if "throughput_fps" in metrics:
        rows.append(("Throughput", _format(metrics["throughput_fps"], "{:.1f}", "fps")))
    return rows


def _jsonable(value: Any) -> Any:
    """`value` with numpy scalars and arrays as Python values, tuples as lists and NaN / ±inf as None."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _html_page(title: str, metrics: dict[str, Any], notes: Sequence[str], generated: str, frame_count: int,
               duration_s: float) -> str:
    escape = html.escape
    lines = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{escape(title)}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>",
             f"<h1>{escape(title)}</h1>",
             f'<p class="generated">Generated {escape(generated)} by posenet_ros.evaluation.report from '
             f"{frame_count} frames ({duration_s:.1f} s of stream).</p>"]
    if notes:
        lines.append("<ul>")
        lines.extend(f"<li>{escape(str(note))}</li>" for note in notes)
        lines.append("</ul>")
    lines.append("<h2>Summary</h2>")
    rows = headline_rows(metrics)
    if rows:
        lines.append("<table>")
        lines.extend(f'<tr><th>{escape(label)}</th><td class="value">{escape(value)}</td></tr>'
                     for label, value in rows)
        lines.append("</table>")
    else:
        lines.append("<p>No headline figures in the metrics.</p>")
    metrics_json = json.dumps(_jsonable(metrics), indent=2, ensure_ascii=False)
    lines.append(f"<details><summary>All metrics (JSON; non-finite numbers shown as null)</summary>"
                 f"<pre>{escape(metrics_json)}</pre></details>")
    lines.append("<h2>Figures</h2>")
    for key, name in PLOTS.items():
        lines.append(f'<figure><img src="{escape(name)}" alt="{escape(key.replace("_", " "))}">'
                     f"<figcaption>{escape(CAPTIONS[key])}</figcaption></figure>")
    lines.extend(["</body>", "</html>", ""])
    return "\n".join(lines)
