"""training/scene_coordinate_losses.py: the depth loss and the reprojection loss on the depth targets
of a synthetic frame (zero on the targets themselves, large when the coordinates move)."""

from __future__ import annotations

import torch

from posenet_ros.cli import main
from posenet_ros.core.camera import FrameTransform
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.loading import load_frames
from posenet_ros.inference.scene_coordinates import depth_targets
from posenet_ros.training.scene_coordinate_losses import ScrLossConfig, depth_loss, reprojection_loss


def test_losses_vanish_on_the_depth_targets_and_grow_when_they_move(tmp_path):
    assert main(["synth", "--quiet", str(tmp_path / "scene"), "width=80", "height=60",
                 "frames_per_sequence=4", "train_sequences=1", "test_sequences=1", "val_sequences=0",
                 "outside_sequences=0", "variations=[]"]) == 0
    item = PoseDataset(load_frames(tmp_path / "scene", "train"), FrameTransform(resize=None))[0]
    batch = {key: value[None] for key, value in item.items() if torch.is_tensor(value)}
    targets, valid = depth_targets(batch["depth"], batch["K"], batch["world_from_cam"])
    assert targets.shape == (1, 3, 8, 10) and bool(valid.all())
    assert float(depth_loss(targets, targets, valid)) == 0.0
    config = ScrLossConfig()
    loss, valid_share = reprojection_loss(targets, batch["K"], batch["world_from_cam"], 60, 80, config)
    assert float(loss) < 1e-3 and float(valid_share) == 1.0
    shifted, _ = reprojection_loss(targets + 0.2, batch["K"], batch["world_from_cam"], 60, 80, config)
    assert float(shifted) > 1.0
