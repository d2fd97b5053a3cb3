"""evaluation/evaluate.py: `evaluate`'s files (metrics.json, predictions.csv, plots) and table, and
`posenet-ros eval` as a user runs it. The datasets and the untrained checkpoint are fixtures of
evaluation/conftest.py; the metrics themselves are tested in inference/test_metrics.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from posenet_ros.cli import main
from posenet_ros.core.geometry import angular_error_deg, translation_error
from posenet_ros.evaluation.evaluate import PREDICTION_COLUMNS, UNCERTAINTY_COLUMNS, evaluate, format_table
from posenet_ros.inference.metrics import (
    pose_metrics,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_evaluate_writes_consistent_files(checkpoint: Path, scene_root: Path, second_root: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "eval"
    thresholds = ((0.05, 5.0), (10.0, 180.0))
    result = evaluate(checkpoint, [scene_root, second_root], out=out, thresholds=thresholds,
                      batch_size=4, device="cpu", progress=False)
    for name in ("metrics.json", "predictions.csv", "error_cdf.png", "top_view.png"):
        assert (out / name).is_file(), name
    for name in ("error_cdf.png", "top_view.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000

    stored = json.loads((out / "metrics.json").read_text())
    assert stored == json.loads(json.dumps(result))
    assert stored["model"] == str(checkpoint)
    assert stored["thresholds"] == [[0.05, 5.0], [10.0, 180.0]]
    assert list(stored["scenes"]) == ["office", "kitchen"]

    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Monte-Carlo sampling is on by default (the checkpoint's 32 samples): σ columns follow.
    assert tuple(rows[0]) == PREDICTION_COLUMNS + UNCERTAINTY_COLUMNS
    assert stored["mc_samples"] == 32 and not stored["calibrated"]
    assert stored["overall"]["uncertainty"]["position"]["dimension"] == 3
    assert all(float(r["sigma_position_m"]) > 0 for r in rows)
    assert len(rows) == 14
    groups = {"office": [r for r in rows if r["scene"] == "office"],
              "kitchen": [r for r in rows if r["scene"] == "kitchen"], "overall": rows}
    for name, group in groups.items():
        metrics = stored["overall"] if name == "overall" else stored["scenes"][name]
        position_error = np.array([float(r["position_error_m"]) for r in group])
        orientation_error = np.array([float(r["orientation_error_deg"]) for r in group])
        recomputed = pose_metrics(position_error, orientation_error, thresholds)
        for key, value in recomputed.items():
            assert metrics[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (name, key)
        assert metrics["frames"] == len(group) == {"office": 8, "kitchen": 6, "overall": 14}[name]
        assert metrics["within_10m_180deg"] == 1.0
        # The error columns are the errors of the pose columns.
        true = np.array([[float(r[c]) for c in PREDICTION_COLUMNS[3:10]] for r in group])
        pred = np.array([[float(r[c]) for c in PREDICTION_COLUMNS[10:17]] for r in group])
        np.testing.assert_allclose(position_error, translation_error(pred[:, :3], true[:, :3]), atol=1e-12)
        np.testing.assert_allclose(orientation_error, angular_error_deg(pred[:, 3:], true[:, 3:]), atol=1e-9)
        assert "mean_pose_baseline" in metrics
    assert stored["scenes"]["office"]["data_root"] == str(scene_root)
    frame_indices = [int(r["frame_index"]) for r in groups["office"]]
    assert frame_indices == list(range(8))
    assert {r["sequence"] for r in rows} == {"seq-02"}

    table = format_table(result)
    lines = table.splitlines()
    assert "Median position" in lines[0] and "5cm/5°" in lines[0] and "1000cm/180°" not in lines[0]
    assert "10m/180°" in lines[0]
    assert any(line.startswith("office") for line in lines)
    assert any(line.startswith("kitchen") for line in lines)
    assert lines[-1].startswith("Overall") and " 14 " in lines[-1]
    assert f"{stored['overall']['median_position_error_m']:.3f} m" in lines[-1]


def test_evaluate_rejects_no_roots(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        evaluate(checkpoint, [], out=tmp_path, device="cpu", progress=False)


def test_eval_command_prints_the_table_and_writes_its_files(tiny_scene, tiny_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", "--quiet", "--model", str(tiny_run), "--data", str(tiny_scene),
                 "--out", str(tmp_path / "eval"), "--threshold", "2,10"]) == 0
    table = capsys.readouterr().out
    assert "Median position" in table and "5cm/5°" in table and "2m/10°" in table and "Overall" in table
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["overall"]["frames"] == 10 and "within_2m_10deg" in metrics["overall"]
    for name in ("predictions.csv", "error_cdf.png", "top_view.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 100
