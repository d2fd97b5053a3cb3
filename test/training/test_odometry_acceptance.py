"""Issue 27's acceptance on the session's trained synthetic model (conftest.py `trained_scene`): the
odometry-aided causal filter against the per-frame model on the held-out test loops written as a
robot's bag with a simulated odometry (`make-bag --odometry-noise`, 10 frames per second).

The scene is rendered again with three val loops (the training loops are the same, so the trained
model holds): the filter's correlation lengths are fitted on the val split, and one loop of 96
correlated frames fits them poorly. The model is calibrated there (Monte-Carlo dropout of the head,
the checkpoint's default)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SCENE

from posenet_ros.cli import main

RATE_HZ = 10
OUTAGE_FRAMES = range(30, 50)  # 2 s without odometry in every loop, 3 s after its start


def _eval(run: Path, bag: Path, out: Path, *args: str) -> dict:
    assert main(["eval", "--quiet", "--model", str(run), "--data", str(bag), "--out", str(out), *args]) == 0
    return json.loads((out / "metrics.json").read_text())["overall"]


def _position_errors(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frame index, position error in metres) of every frame of eval's predictions.csv."""
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    errors = [np.linalg.norm([float(row[f"{axis}_pred"]) - float(row[f"{axis}_true"]) for axis in "xyz"])
              for row in rows]
    return np.array([int(row["frame_index"]) for row in rows]), np.array(errors)


@pytest.fixture(scope="module")
def odometry_runs(trained_scene, trained_copy, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("odometry")
    scene, run = root / "scene", trained_copy("odometry")
    settings = [item for item in SCENE if not item.startswith(("val_sequences=", "variations="))]
    assert main(["synth", "--quiet", str(scene), *settings, "val_sequences=3", "variations=[]"]) == 0
    assert main(["calibrate", "--quiet", "--model", str(run), "--data", str(scene), "--split", "val"]) == 0
    assert main(["train-temporal", "--quiet", "--model", str(run), "--data", str(scene), "device=cpu",
                 "epochs=5"]) == 0
    # loop k starts 14.5 k seconds after the first frame (9.5 s of frames, then make-bag's 5 s gap)
    outages = [argument for k in range(4)
               for argument in ("--odometry-outage", f"{14.5 * k + 2.95:.2f}", f"{14.5 * k + 4.95:.2f}")]
    bags = {"2%": ["0.02", "1.0"], "5%": ["0.05", "2.0"], "outage": ["0.02", "1.0", *outages]}
    results: dict = {}
    for name, arguments in bags.items():
        bag = root / f"bag_{name}"
        assert main(["make-bag", "--quiet", str(scene), str(bag), "--rate", str(RATE_HZ),
                     "--odometry-noise", *arguments[:2], *arguments[2:]]) == 0
        out = root / f"eval_{name}"
        results[name] = _eval(run, bag, out, "--smooth", "causal", "--odometry-noise", *arguments[:2])
        results[f"{name}_errors"] = _position_errors(out)
    results["per_frame"] = _eval(run, root / "bag_2%", root / "eval_off", "--smooth", "off")
    return results


def _row(name: str, values: dict) -> str:
    nees = values.get("uncertainty", {})
    return (f"{name:<10} median {values['median_position_error_m']:.4f} m "
            f"{values['median_orientation_error_deg']:.2f}°, "
            f"jitter {values['median_jitter_position_m']:.4f} m, "
            f"NEES {nees.get('position', {}).get('mean_nees', float('nan')):.2f} / "
            f"{nees.get('rotation', {}).get('mean_nees', float('nan')):.2f}")


@pytest.mark.slow
def test_odometry_lowers_error_and_jitter_with_a_calibrated_covariance(odometry_runs):
    per_frame, fused, drifting = odometry_runs["per_frame"], odometry_runs["2%"], odometry_runs["5%"]
    for name in ("per_frame", "2%", "5%", "outage"):
        print(_row(name, odometry_runs[name]))
    assert fused["odometry"] == {"frames": per_frame["frames"], "missing": 0}
    assert fused["median_position_error_m"] <= 0.7 * per_frame["median_position_error_m"]
    assert fused["median_orientation_error_deg"] <= 0.85 * per_frame["median_orientation_error_deg"]
    assert fused["median_jitter_position_m"] <= 0.5 * per_frame["median_jitter_position_m"]
    assert drifting["median_position_error_m"] <= 0.85 * per_frame["median_position_error_m"]
    for values in (fused, drifting):
        for block in ("position", "rotation"):
            assert 1.5 <= values["uncertainty"][block]["mean_nees"] <= 6.0, (block, values["uncertainty"])


@pytest.mark.slow
def test_without_odometry_for_2_s_poses_go_on_and_recover_within_1_s(odometry_runs):
    outage = odometry_runs["outage"]
    loops = outage["frames"] // 96
    # the frames of the outage, and the first after it (whose previous frame had no odometry)
    assert outage["odometry"]["missing"] == loops * len(OUTAGE_FRAMES)
    frame_index, errors = odometry_runs["outage_errors"]
    same_frames, without_outage = odometry_runs["2%_errors"]
    assert np.array_equal(frame_index, same_frames) and np.all(np.isfinite(errors))
    later = frame_index >= OUTAGE_FRAMES.stop + RATE_HZ  # from 1 s after the odometry came back
    print(f"from 1 s after the outage: median {np.median(errors[later]):.4f} m, "
          f"{np.median(without_outage[later]):.4f} m without it")
    assert np.median(errors[later]) <= 1.1 * np.median(without_outage[later])
