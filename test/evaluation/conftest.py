"""Fixtures of the evaluation tests: tiny synthetic 7-Scenes folders rendered once per module and an
untrained ResNet-18 PoseNet checkpoint (its outputs are what they are: the tests check bookkeeping,
not accuracy)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from posenet_ros.cli import main as cli_main
from posenet_ros.core.camera import FrameTransform
from posenet_ros.core.config import config_to_dict
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.loading import load_frames
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.runtime.checkpoint import save_checkpoint

MODEL_CONFIG = ModelConfig(backbone="resnet18", feature_dim=32)
DATA_CONFIG = {"resize": 32, "crop": 32}


def make_model(seed: int = 0) -> PoseNet:
    torch.manual_seed(seed)
    model = PoseNet(MODEL_CONFIG)
    model.set_position_statistics(torch.tensor([0.5, -0.2, 1.0]), 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "office"
    cli_main(["synth", "--quiet", "--layout", "7scenes", str(root), "width=64", "height=48",
              "frames_per_sequence=8", "train_sequences=1", "outside_sequences=0", "variations=[]"])
    return root


@pytest.fixture(scope="module")
def second_root(scene_root: Path) -> Path:
    """A second scene: a copy of the first under another name, without its last two test frames."""
    root = scene_root.parent / "kitchen"
    shutil.copytree(scene_root, root)
    for index in (6, 7):
        for path in (root / "seq-02").glob(f"frame-{index:06d}.*"):
            path.unlink()
    return root


@pytest.fixture(scope="module")
def checkpoint(scene_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    records = load_frames(scene_root, "train")
    dataset = PoseDataset(records, FrameTransform(resize=None))
    map_poses = np.stack([dataset[i]["pose"].numpy() for i in range(len(dataset))]).astype(np.float64)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    config = {"model": config_to_dict(MODEL_CONFIG), "data": DATA_CONFIG}
    return save_checkpoint(path, make_model(), config, map_poses)


@pytest.fixture
def untrained_model() -> PoseNet:
    """`make_model()`: the checkpoint's network, untrained (seed 0), in eval mode."""
    return make_model()
