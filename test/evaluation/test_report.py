"""evaluation/report.py, the HTML report of a replay: the five PNGs and index.html, with and without
ground truth.

Frames are a noisy circle trajectory drawn from a seeded RNG; nothing depends on the clock except the
report's generation note, which is not checked.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from posenet_ros.evaluation.report import PLOTS, ReportFrames, headline_rows, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def circle_frames(count: int = 120, seed: int = 0) -> ReportFrames:
    """A camera driving a 2 m circle at 10 Hz in the x-y plane, with noisy estimates; every 10th frame
    has no ground truth, and the known_place flag is on for frames 20..69."""
    rng = np.random.default_rng(seed)
    angle = np.linspace(0.0, 2.0 * math.pi, count, endpoint=False)
    truth = np.stack([2.0 * np.cos(angle), 2.0 * np.sin(angle), 1.5 + 0.02 * np.sin(3 * angle)], axis=1)
    yaw = angle + math.pi / 2
    quat_true = np.stack([np.cos(yaw / 2), np.zeros(count), np.zeros(count), np.sin(yaw / 2)], axis=1)
    sigma_position = rng.uniform(0.05, 0.3, count)
    sigma_rotation = rng.uniform(1.0, 6.0, count)
    offset = rng.normal(size=(count, 3)) * sigma_position[:, None] / math.sqrt(3)
    position_est = truth + offset
    yaw_error_deg = rng.normal(size=count) * sigma_rotation
    yaw_est = yaw + np.radians(yaw_error_deg)
    quat_est = np.stack([np.cos(yaw_est / 2), np.zeros(count), np.zeros(count), np.sin(yaw_est / 2)], axis=1)
    no_truth = np.arange(count) % 10 == 9
    truth[no_truth] = np.nan
    quat_true[no_truth] = np.nan
    position_error = np.linalg.norm(offset, axis=1)
    orientation_error = np.abs(yaw_error_deg)
    position_error[no_truth] = np.nan
    orientation_error[no_truth] = np.nan
    known = (np.arange(count) >= 20) & (np.arange(count) < 70)
    score = np.where(known, -1.0, 1.0) + 0.3 * rng.normal(size=count)
    return ReportFrames(
        stamp_ns=1_700_000_000_000_000_000 + np.arange(count, dtype=np.int64) * 100_000_000,
        position_est_N3=position_est, quat_est_N4=quat_est,
        position_true_N3=truth, quat_true_N4=quat_true,
        position_error_N=position_error, orientation_error_N=orientation_error,
        sigma_position_m_N=sigma_position, sigma_rotation_deg_N=sigma_rotation,
        known_place_N=known, score_N=score,
    )


def metrics_of(frames: ReportFrames) -> dict:
    return {
        "frames": len(frames),
        "frames_with_ground_truth": int(np.isfinite(frames.position_error_N).sum()),
        "median_position_error_m": float(np.nanmedian(frames.position_error_N)),
        "median_orientation_error_deg": float(np.nanmedian(frames.orientation_error_N)),
        "accuracy": {"5cm/5°": 0.25, "50cm/10°": 0.875},
        "uncertainty": {"position": {"mean_nees": 2.9, "within_2sigma": 0.71, "expected_2sigma": 0.7385},
                        "rotation": {"mean_nees": 3.2, "within_2sigma": 0.69, "expected_2sigma": 0.7385}},
        "loop_closure": {"precision": 0.96, "recall": 0.8, "enter_score": 0.0, "leave_score": 0.5},
        "latency_ms": {"p50": 12.34, "p99": 40.0},
        "dropped": 3, "rejected": 0, "throughput_fps": 9.87,
    }


def map_poses(count: int = 60) -> np.ndarray:
    angle = np.linspace(0.0, 2.0 * math.pi, count, endpoint=False)
    poses = np.zeros((count, 7))
    poses[:, 0], poses[:, 1], poses[:, 2], poses[:, 3] = 2.1 * np.cos(angle), 2.1 * np.sin(angle), 1.5, 1.0
    return poses


def check_pngs(folder: Path, min_bytes: int = 5000) -> None:
    for name in PLOTS.values():
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > min_bytes, (name, len(data))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReportFrames, dict]:
    frames = circle_frames()
    metrics = metrics_of(frames)
    index = write_report(tmp_path_factory.mktemp("report") / "out", frames, metrics, title="Replay <chess>",
                         map_poses_N7=map_poses(), notes=["bag: chess-01", "model & calibration: v2"])
    return index, frames, metrics


def test_writes_five_valid_pngs_and_index(report: tuple[Path, ReportFrames, dict]) -> None:
    index, _, _ = report
    assert index.name == "index.html" and index.is_file()
    assert sorted(p.name for p in index.parent.iterdir()) == sorted([*PLOTS.values(), "index.html"])
    check_pngs(index.parent)


def test_index_references_plots_and_formats_headline_figures(report: tuple[Path, ReportFrames, dict]) -> None:
    index, _, metrics = report
    page = index.read_text(encoding="utf-8")
    for name in PLOTS.values():
        assert f'<img src="{name}"' in page
    assert f"{metrics['median_position_error_m']:.3f} m" in page
    assert f"{metrics['median_orientation_error_deg']:.2f}°" in page
    assert "<h1>Replay &lt;chess&gt;</h1>" in page  # the title is escaped
    assert "<li>model &amp; calibration: v2</li>" in page
    for text in ("25.0%", "87.5%", "mean NEES 2.90", "precision 0.960, recall 0.800", "p50 12.3 ms",
                 "p99 40.0 ms", "9.9 fps", "<details>", "&quot;throughput_fps&quot;: 9.87"):
        assert text in page, text
    assert "n/a" not in page


def test_headline_rows_formats_values_and_nan_as_na() -> None:
    rows = dict(headline_rows({"frames": 10, "median_position_error_m": 0.12345,
                               "median_orientation_error_deg": float("nan"), "accuracy": {"5cm/5°": None},
                               "latency_ms": {"p50": np.float64(3.0), "p99": float("inf")},
                               "throughput_fps": "fast", "unknown_key": 1.0}))
    assert rows == {"Frames": "10", "Median position error": "0.123 m", "Median orientation error": "n/a",
                    "Within 5cm/5°": "n/a", "Latency": "p50 3.0 ms, p99 n/a", "Throughput": "n/a"}
    assert headline_rows({}) == []


def test_no_ground_truth_still_writes_every_file(tmp_path: Path) -> None:
    frames = circle_frames(count=40, seed=1)
    for name in ("position_true_N3", "quat_true_N4", "position_error_N", "orientation_error_N", "score_N"):
        getattr(frames, name)[:] = np.nan
    frames.known_place_N[:] = False
    metrics = {"frames": 40, "frames_with_ground_truth": 0, "median_position_error_m": float("nan"),
               "median_orientation_error_deg": None, "uncertainty": {"position": {"mean_nees": float("nan")}},
               "loop_closure": {"precision": float("nan"), "recall": None}}
    index = write_report(tmp_path, frames, metrics, title="no ground truth")
    check_pngs(tmp_path)
    page = index.read_text(encoding="utf-8")
    assert "<td class=\"value\">n/a</td>" in page  # the medians
    assert "mean NEES n/a; inside 2σ n/a (expected n/a)" in page
    assert "precision n/a, recall n/a" in page
    assert "&quot;median_position_error_m&quot;: null" in page and "NaN" not in page  # JSON shows null


def test_single_frame_report(tmp_path: Path) -> None:
    frames = circle_frames(count=1)
    write_report(tmp_path, frames, {}, title="one frame")
    check_pngs(tmp_path, min_bytes=1000)
    assert "No headline figures" in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_no_frames_is_an_error(tmp_path: Path) -> None:
    frames = circle_frames(count=5)
    empty = ReportFrames(**{field.name: getattr(frames, field.name)[:0]
                            for field in dataclasses.fields(ReportFrames)})
    with pytest.raises(ValueError, match="no frames to report"):
        write_report(tmp_path / "out", empty, {}, title="empty")
    assert not (tmp_path / "out").exists()


def test_mismatched_shapes_are_an_error(tmp_path: Path) -> None:
    frames = dataclasses.replace(circle_frames(count=5), score_N=np.zeros(4))
    with pytest.raises(ValueError, match="score_N"):
        write_report(tmp_path, frames, {}, title="bad")


def test_writing_twice_overwrites_cleanly(tmp_path: Path) -> None:
    frames = circle_frames(count=30, seed=2)
    write_report(tmp_path, frames, {"frames": 30}, title="first run")
    (tmp_path / "unrelated.txt").write_text("kept")
    index = write_report(tmp_path, frames, {"frames": 31}, title="second run")
    page = index.read_text(encoding="utf-8")
    assert "second run" in page and "first run" not in page
    expected = sorted([*PLOTS.values(), "index.html", "unrelated.txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == expected  # no temporary files left
    check_pngs(tmp_path)
