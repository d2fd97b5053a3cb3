"""Shared by the acceptance tests: one synthetic scene and one PoseNet trained on it, per session.

The scene is 64x48 px and wide-angle, with 8 training loops, a val loop, four test loops (384 frames:
the per-frame errors along one loop are strongly correlated, so one loop alone measures little), the
outside sequence and the occlusion and blur variations of the first test loop; the model is a small
ResNet trained with the heteroscedastic loss (about 1.5 minutes on 2 CPU cores). Tests that change
the checkpoint (calibrate, train-temporal) work on their own copy (`trained_copy`). `trained_rgbd` is
the RGB-D model trained on the same scene with the same settings.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from posenet_ros.cli import main

SCENE = ["width=64", "height=48", "hfov_deg=90", "frames_per_sequence=96", "train_sequences=8",
         "test_sequences=4", "outside_sequences=1", "val_sequences=1", "variations=[occlusion,blur]"]
TRAIN = ["device=cpu", "model.backbone=resnet_tiny", "model.dropout=0.2", "data.resize=48",
         "data.crop=[44,60]", "batch_size=16", "lr=1e-3", "epochs=60", "data.val_split=''",
         "loss.kind=aleatoric", "model.aleatoric=per_axis"]


@pytest.fixture(scope="session")
def trained_scene(tmp_path_factory) -> tuple[Path, Path]:
    """(scene folder, training run folder); do not modify the run (see `trained_copy`)."""
    root = tmp_path_factory.mktemp("trained_scene")
    scene, run = root / "scene", root / "run"
    assert main(["synth", "--quiet", str(scene), *SCENE]) == 0
    assert main(["train", "--quiet", "--data", str(scene), "--out", str(run), *TRAIN]) == 0
    return scene, run


@pytest.fixture(scope="session")
def trained_rgbd(trained_scene, tmp_path_factory) -> Path:
    """The RGB-D (dual-stream) model trained with the same budget as `trained_scene`'s, calibrated."""
    scene = trained_scene[0]
    run = tmp_path_factory.mktemp("trained_rgbd") / "run"
    assert main(["train", "--quiet", "--use-depth", "--data", str(scene), "--out", str(run), *TRAIN]) == 0
    assert main(["calibrate", "--quiet", "--model", str(run), "--data", str(scene)]) == 0
    return run


@pytest.fixture(scope="session")
def trained_copy(trained_scene, tmp_path_factory) -> Callable[[str], Path]:
    """`trained_copy(name)`: a private copy of the trained run folder."""
    def copy(name: str) -> Path:
        target = tmp_path_factory.mktemp(name) / "run"
        shutil.copytree(trained_scene[1], target)
        return target
    return copy
