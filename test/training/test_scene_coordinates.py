"""training/scene_coordinates.py on data without usable depth: `scr_loss.kind=auto` picks the
reprojection loss (missing or zero-filled depth images), the head refit trains by reprojection, and
settings that need depth name the setting to change; `eval --solver` picks Kabsch or PnP; the head
refit reports its progress (plain lines in a log)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from posenet_ros.cli import main
from posenet_ros.core.config import load_config
from posenet_ros.data.frames import DatasetError
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.evaluate import nearest_neighbour_errors
from posenet_ros.runtime.methods import SceneCoordinates
from posenet_ros.runtime.train_config import TrainConfig
from posenet_ros.training.method import missing_depth
from posenet_ros.training.scene_coordinates import refit_scr_head, scr_uses_depth

TRAIN = ["device=cpu", "method=scr", "scr.backbone=resnet_tiny", "scr.head_channels=16", "data.resize=48",
         "data.crop=null", "data.val_split=''", "batch_size=4", "lr=1e-3", "epochs=1",
         "scr_refit.iterations=30", "scr_refit.batch_cells=256"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path]:
    """The same small scene with depth, RGB only (the Cambridge layout has no depth) and with
    zero-filled depth images."""
    root = tmp_path_factory.mktemp("scr_rgb")
    scene = ["width=64", "height=48", "frames_per_sequence=8", "train_sequences=1", "val_sequences=0",
             "outside_sequences=0", "variations=[]"]
    assert main(["synth", "--quiet", str(root / "depth"), *scene]) == 0
    assert main(["synth", "--quiet", "--layout", "cambridge", str(root / "rgb"), *scene]) == 0
    shutil.copytree(root / "depth", root / "zeros")
    for path in (root / "zeros").rglob("*.depth.png"):
        cv2.imwrite(str(path), np.zeros((48, 64), np.uint16))
    return {name: root / name for name in ("depth", "rgb", "zeros")}


def test_missing_depth_tells_missing_and_zero_filled_depth_from_usable_depth(scenes):
    assert missing_depth(load_frames(scenes["depth"], "train")) == ""
    assert "have no depth image" in missing_depth(load_frames(scenes["rgb"], "train"))
    assert "depth images are empty" in missing_depth(load_frames(scenes["zeros"], "train"))


@pytest.mark.parametrize("name, uses_depth", [("depth", True), ("rgb", False), ("zeros", False)])
def test_auto_picks_depth_only_when_the_frames_have_usable_depth(scenes, caplog, name, uses_depth):
    with caplog.at_level(logging.INFO, logger="posenet_ros.training.scene_coordinates"):
        assert scr_uses_depth(TrainConfig(method="scr"), load_frames(scenes[name], "train")) is uses_depth
    assert ("depth targets" if uses_depth else "the reprojection loss") in caplog.text


@pytest.mark.parametrize("setting, message", [("scr_loss.kind=depth", "set scr_loss.kind=reprojection"),
                                              ("--use-depth", "train without --use-depth")])
def test_settings_that_need_depth_name_the_setting_to_change(scenes, tmp_path, capsys, setting, message):
    extra = [setting] if setting.startswith("scr_loss") else []
    flags = [setting] if setting.startswith("--") else []
    assert main(["train", "--quiet", *flags, "--data", str(scenes["zeros"]), "--out", str(tmp_path / "run"),
                 *TRAIN, *extra]) != 0
    err = capsys.readouterr().err
    assert message in err and "depth images are empty" in err
    with pytest.raises(DatasetError, match=r"ransac\.use_depth=false"):
        scr_uses_depth(TrainConfig(method="scr", ransac=TrainConfig().ransac.__class__(use_depth=True)),
                       load_frames(scenes["rgb"], "train"))


def test_rgb_only_training_refits_by_reprojection_and_eval_chooses_the_solver(scenes, tmp_path, capsys):
    run = tmp_path / "rgb_run"
    assert main(["train", "--quiet", "--data", str(scenes["rgb"]), "--out", str(run), *TRAIN]) == 0
    row = json.loads((run / "metrics.json").read_text())[-1]
    assert row["loss_kind"] == "scr_reprojection"
    assert row["refit_reprojection_loss"] > 0 and "refit_distance_m" not in row
    assert main(["eval", "--quiet", "--model", str(run), "--data", str(scenes["rgb"]), "--out",
                 str(tmp_path / "pnp"), "--mc-samples", "0"]) == 0
    assert json.loads((tmp_path / "pnp" / "metrics.json").read_text())["ransac"]["use_depth"] is False
    capsys.readouterr()
    assert main(["eval", "--quiet", "--model", str(run), "--data", str(scenes["rgb"]), "--out",
                 str(tmp_path / "kabsch"), "--solver", "kabsch"]) == 2
    assert "--solver pnp" in capsys.readouterr().err
    assert main(["eval", "--quiet", "--model", str(run), "--data", str(scenes["depth"]), "--out",
                 str(tmp_path / "kabsch"), "--solver", "kabsch"]) == 0
    assert json.loads((tmp_path / "kabsch" / "metrics.json").read_text())["ransac"]["use_depth"] is True


@pytest.mark.slow
def test_rgb_scene_coordinates_recipe_learns_all_six_components_on_a_y_up_double_size_scene(tmp_path):
    """docs/methods.md's scene coordinate recipe without --use-depth (depth targets where the data has
    them, poses by PnP from RGB), shortened, on a scene it was not tuned for (y-up world, every length
    doubled): median orientation below 10° and below the nearest-neighbour baseline's (the full
    matrix: bench/recipes.py, docs/results.md)."""
    root, run = tmp_path / "scene", tmp_path / "run"
    assert main(["synth", "--quiet", str(root), "width=64", "height=48", "hfov_deg=90",
                 "frames_per_sequence=64", "train_sequences=6", "val_sequences=0", "test_sequences=1",
                 "outside_sequences=0", "variations=[]", "world_axes=y_up", "room_scale=2.0"]) == 0
    assert main(["train", "--quiet", "--data", str(root), "--out", str(run), "device=cpu", "method=scr",
                 "scr.backbone=resnet_tiny", "data.resize=48", "data.crop=null", "lr=3e-3",
                 "weight_decay=0.01", "batch_size=8", "epochs=10", "batchnorm_frozen_after=7",
                 "scr_refit.iterations=600", "data.val_split=''"]) == 0
    assert main(["eval", "--quiet", "--model", str(run), "--data", str(root), "--out", str(tmp_path / "eval"),
                 "--mc-samples", "0"]) == 0
    overall = json.loads((tmp_path / "eval" / "metrics.json").read_text())["overall"]
    _, nearest_orientation = nearest_neighbour_errors(load_frames(root, "train"), load_frames(root, "test"))
    assert overall["median_orientation_error_deg"] < min(10.0, float(np.median(nearest_orientation)))
    assert json.loads((run / "metrics.json").read_text())[-1]["loss_kind"] == "scr_depth"


def test_head_refit_shows_its_progress(small_capture, capsys):
    records = load_frames(small_capture, "train")
    config = load_config(TrainConfig, None, ["method=scr", "scr.backbone=resnet_tiny", "scr.head_channels=16",
                                             "data.resize=24", "data.crop=null", "batch_size=8",
                                             "scr_refit.iterations=30", "scr_refit.batch_cells=64"])
    torch.manual_seed(0)
    model = SceneCoordinates.network(config)
    model.set_scene_statistics(torch.zeros(3), 2.0)
    row = refit_scr_head(model, records, config, torch.device("cpu"), progress=True)
    assert np.isfinite(row["refit_distance_m"])
    log = capsys.readouterr().err
    assert "\r" not in log
    lines = log.splitlines()
    assert any(line.startswith("scr refit: features: ") for line in lines)
    assert lines[-1].startswith("scr refit: 100% 30/30")
    refit_scr_head(model, records, config, torch.device("cpu"), progress=False)
    assert capsys.readouterr().err == ""
