"""Session fixtures shared across test folders.

The acceptance tests (all marked slow) share one synthetic scene and one PoseNet trained on it. The
scene is 64x48 px and wide-angle, with 8 training loops, a val loop, four test loops (384 frames:
the per-frame errors along one loop are strongly correlated, so one loop alone measures little), the
outside sequence and the occlusion and blur variations of the first test loop; the model is a small
ResNet trained with the heteroscedastic loss (about 1.5 minutes on 2 CPU cores). Tests that change
the checkpoint (calibrate, train-temporal) work on their own copy (`trained_copy`). `trained_rgbd` is
the RGB-D model trained on the same scene with the same settings; `smoothed` is a copy with the
temporal smoother trained, evaluated per frame, causally and offline.

Other fixtures are small: `tiny_scene` and `tiny_run` (a 10-frame 32x24 scene and a one-epoch PoseNet
on it, for the mechanics of train, eval and saliency), and `scr_run` (a small scene coordinate model
trained, interrupted and resumed, and calibrated).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from posenet_ros.cli import main
from posenet_ros.core.camera import FrameTransform
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.loading import load_frames

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
    assert main(["calibrate", "--quiet", "--model", str(run), "--data", str(scene), "--split", "val"]) == 0
    return run


@pytest.fixture(scope="session")
def trained_copy(trained_scene, tmp_path_factory) -> Callable[[str], Path]:
    """`trained_copy(name)`: a private copy of the trained run folder."""
    def copy(name: str) -> Path:
        target = tmp_path_factory.mktemp(name) / "run"
        shutil.copytree(trained_scene[1], target)
        return target
    return copy


@pytest.fixture(scope="session")
def smoothed(trained_scene, trained_copy) -> dict[str, dict]:
    """`train-temporal` on a copy of the trained run, then eval of the test loops per frame (off),
    causally and offline: mode -> overall metrics, plus "run" and "scene"."""
    scene, run = trained_scene[0], trained_copy("temporal")
    assert main(["train-temporal", "--quiet", "--model", str(run), "--data", str(scene), "device=cpu"]) == 0
    results = {}
    for mode in ("off", "causal", "offline"):
        out = run.parent / f"eval_{mode}"
        assert main(["eval", "--quiet", "--model", str(run), "--data", str(scene), "--out", str(out),
                     "--mc-samples", "0", "--smooth", mode]) == 0
        results[mode] = json.loads((out / "metrics.json").read_text())["overall"]
    results["run"], results["scene"] = run, scene
    return results


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    """A 32x24 synthetic scene with one training loop of 10 frames (and its test loop)."""
    out = tmp_path_factory.mktemp("tiny") / "synthetic"
    assert main(["synth", "--quiet", str(out), "width=32", "height=24", "frames_per_sequence=10",
                 "train_sequences=1", "outside_sequences=0", "variations=[]"]) == 0
    return out


@pytest.fixture(scope="session")
def small_capture(tmp_path_factory) -> Path:
    """A 32x24 synthetic scene with two training loops of 40 frames (and a val and a test loop): the
    default validation blocks hold out 5 frames of each loop (data/splits.py `validation_blocks`)."""
    out = tmp_path_factory.mktemp("small_capture") / "synthetic"
    assert main(["synth", "--quiet", str(out), "width=32", "height=24", "frames_per_sequence=40",
                 "train_sequences=2", "val_sequences=1", "outside_sequences=0", "variations=[]"]) == 0
    return out


@pytest.fixture(scope="session")
def depth_frame_batch(tmp_path_factory) -> tuple[dict, dict]:
    """(item, batch of one) of the first training frame of an 80x60 synthetic scene, whole (no resize
    or crop), with depth and K: what the scene coordinate targets are made of."""
    out = tmp_path_factory.mktemp("depth_frame") / "scene"
    assert main(["synth", "--quiet", str(out), "width=80", "height=60", "frames_per_sequence=4",
                 "train_sequences=1", "test_sequences=1", "val_sequences=0", "outside_sequences=0",
                 "variations=[]"]) == 0
    item = PoseDataset(load_frames(out, "train"), FrameTransform(resize=None))[0]
    return item, {key: value[None] for key, value in item.items() if torch.is_tensor(value)}


SMALL_TRAIN = ["device=cpu", "model.backbone=resnet_tiny", "model.dropout=0.2", "data.resize=24",
               "data.crop=null", "batch_size=8", "lr=1e-3", "epochs=2"]
"""Mechanics, not accuracy: a tiny PoseNet on `small_capture` or `tiny_scene` in a few seconds."""


@pytest.fixture(scope="session")
def tiny_run(tiny_scene, tmp_path_factory) -> Path:
    """A PoseNet trained for one epoch on `tiny_scene` (mechanics, not accuracy); do not modify it."""
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    assert main(["train", "--quiet", "--data", str(tiny_scene), "--out", str(run), "device=cpu",
                 "model.backbone=resnet_tiny", "model.dropout=0.2", "data.resize=24", "data.crop=null",
                 "batch_size=4", "lr=1e-3", "epochs=1", "data.val_split=''"]) == 0
    return run


@pytest.fixture(scope="session")
def scr_run(tmp_path_factory) -> Path:
    """A scene coordinate model (root/run, calibrated) on a small scene (root/scene), and the same run
    interrupted after one epoch and resumed (root/resumed)."""
    root = tmp_path_factory.mktemp("scr")
    assert main(["synth", "--quiet", str(root / "scene"), "width=96", "height=72", "hfov_deg=70",
                 "frames_per_sequence=24", "train_sequences=2", "val_sequences=1", "outside_sequences=0",
                 "variations=[]"]) == 0
    args = ["device=cpu", "method=scr", "scr.backbone=resnet_tiny", "scr.head_channels=32",
            "data.resize=72", "data.crop=null", "data.val_split=val", "batch_size=8", "lr=1e-3"]
    assert main(["train", "--quiet", "--data", str(root / "scene"), "--out", str(root / "run"), "epochs=2",
                 *args]) == 0
    # Interrupted after one epoch and resumed: the same weights as the uninterrupted run.
    assert main(["train", "--quiet", "--data", str(root / "scene"), "--out", str(root / "resumed"),
                 "--stop-after-epoch", "1", "epochs=2", *args]) == 0
    assert main(["train", "--quiet", "--out", str(root / "resumed"), "--resume"]) == 0
    assert main(["calibrate", "--quiet", "--model", str(root / "run"), "--data", str(root / "scene")]) == 0
    return root
