"""training/scene_coordinates.py on data without usable depth: `scr_loss.kind=auto` picks the
reprojection loss (missing or zero-filled depth images), the head refit trains by reprojection, and
settings that need depth name the setting to change; `eval --solver` picks Kabsch or PnP."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from posenet_ros.cli import main
from posenet_ros.data.frames import DatasetError
from posenet_ros.data.loading import load_frames
from posenet_ros.runtime.train_config import TrainConfig
from posenet_ros.training.method import missing_depth
from posenet_ros.training.scene_coordinates import scr_uses_depth

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
