"""evaluation/calibrate.py (`posenet-ros calibrate`): acceptance of calibrated uncertainty on the
synthetic scene, through the CLI as a user runs it: the session's model trained with the
heteroscedastic loss (conftest.py), `posenet-ros calibrate` on the held-out val loop, then
`posenet-ros eval` on the four test loops with the outside, occlusion and blur sequences as unknown
places (slow: a trained model). And which frames calibrate fits on: the checkpoint's validation
frames (the held-out time blocks by default), never training frames alone (tiny models, fast). The
calibration maths are tested in inference/test_calibration.py.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_TRAIN

from posenet_ros.cli import main
from posenet_ros.runtime.checkpoint import load_model


@pytest.fixture(scope="module")
def evaluated(trained_scene, trained_copy) -> tuple[dict, dict]:
    scene, run = trained_scene[0], trained_copy("uncertainty")
    root = run.parent
    assert main(["calibrate", "--quiet", "--model", str(run), "--data", str(scene), "--split", "val"]) == 0
    assert main(["eval", "--quiet", "--model", str(run), "--data", str(scene),
                 "--out", str(root / "eval")]) == 0
    assert (root / "eval" / "uncertainty_vs_error.png").stat().st_size > 10_000
    loaded = load_model(run)
    report = json.loads(loaded.metadata["calibration_report"])
    return json.loads((root / "eval" / "metrics.json").read_text())["overall"], report


@pytest.mark.slow
def test_calibration_is_stored_and_fits_the_validation_split(evaluated):
    _, report = evaluated
    print({key: report[key] for key in ("position_scale", "rotation_scale", "position_novelty",
                                        "rotation_novelty", "score_reference")})
    for block in ("position", "rotation"):
        # Held-out views err more the further they are from the training images: the fit says so.
        assert report[f"{block}_novelty"] > 0.3
        assert 1.5 <= report["after"][block]["mean_nees"] <= 6.0
        assert 1.5 <= report["after_train"][block]["mean_nees"] <= 6.0


@pytest.mark.slow
def test_calibrated_covariance_holds_on_held_out_frames(evaluated):
    overall, _ = evaluated
    for block, values in overall["uncertainty"].items():
        print(f"{block}: mean NEES {values['mean_nees']:.2f} ({values['dimension']}), 2σ "
              f"{values['within_2sigma']:.2f} vs {values['expected_2sigma']:.2f}")
        assert 0.5 * values["dimension"] <= values["mean_nees"] <= 2.0 * values["dimension"]
        assert abs(values["within_2sigma"] - values["expected_2sigma"]) <= 0.15


@pytest.mark.slow
def test_predicted_uncertainty_correlates_with_error(evaluated):
    # 0.44 (position) and 0.41 (rotation) here, over the four test loops. Within one loop of 96
    # frames it ranges from -0.01 to 0.77 (two scenes, four loops each), which is why the scene has four.
    overall, _ = evaluated
    for block in ("position", "rotation"):
        rho = overall["uncertainty"][block]["spearman_sigma_error"]
        print(f"{block}: Spearman {rho:.2f}")
        assert rho > 0.3


@pytest.mark.slow
def test_loop_closure_score_separates_unseen_places(evaluated):
    overall, _ = evaluated
    loop = overall["loop_closure"]
    print("loop closure", json.dumps(loop, indent=1))
    assert loop["roc_auc_by_split"]["outside"] >= 0.8
    assert loop["recall"] > 0.8  # the flag is on for most frames of the mapped place


@pytest.fixture(scope="module")
def small_runs(small_capture, tmp_path_factory) -> dict[str, Path]:
    """Tiny PoseNets on `small_capture`: 'blocks' trained with the default validation (time blocks held
    out of the training loops), 'none' with data.val_split=''."""
    root = tmp_path_factory.mktemp("small_runs")
    runs = {"blocks": root / "blocks", "none": root / "none"}
    for name, extra in (("blocks", []), ("none", ["data.val_split=''"])):
        assert main(["train", "--quiet", "--data", str(small_capture), "--out", str(runs[name]), *SMALL_TRAIN,
                     *extra]) == 0
    return runs


def calibration_report(run: Path) -> dict:
    return json.loads(load_model(run).metadata["calibration_report"])


def test_calibrate_fits_the_blocks_training_held_out(small_capture, small_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_runs["blocks"], run)
    threads = torch.get_num_threads()
    try:
        assert main(["calibrate", "--quiet", "--model", str(run), "--data", str(small_capture), "--threads",
                     "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    report = calibration_report(run)
    # 2 x 5 frames held out of the two training loops of 40; the other 70 are the training frames
    assert (report["split"], report["frames"], report["train_frames"]) == ("blocks", 10, 70)
    assert np.isfinite(report["position_scale"]) and report["position_scale"] > 0
    # a named split of held-out frames instead
    assert main(["calibrate", "--quiet", "--model", str(run), "--data", str(small_capture), "--split",
                 "val"]) == 0
    assert (calibration_report(run)["split"], calibration_report(run)["frames"]) == ("val", 40)


def test_calibrate_refuses_a_model_without_held_out_frames(small_capture, small_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(small_runs["none"], run)
    assert main(["calibrate", "--quiet", "--model", str(run), "--data", str(small_capture)]) == 2
    error = capsys.readouterr().err
    assert "data.val_split=''" in error and "--split" in error and "data.val_split=blocks" in error
    assert "calibration_report" not in load_model(run).metadata  # never silently calibrated
    assert main(["calibrate", "--quiet", "--model", str(run), "--data", str(small_capture), "--split",
                 "val"]) == 0


def test_calibrate_refuses_too_few_held_out_frames(tiny_scene, tmp_path, capsys):
    # one loop of 10 frames: the block hold-out has 1 frame, too few to fit a covariance on
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--data", str(tiny_scene), "--out", str(run), *SMALL_TRAIN,
                 "batch_size=4"]) == 0
    assert main(["calibrate", "--quiet", "--model", str(run), "--data", str(tiny_scene)]) == 2
    error = capsys.readouterr().err
    assert "'blocks' has 1 frames" in error and "at least 10" in error and "--split" in error
