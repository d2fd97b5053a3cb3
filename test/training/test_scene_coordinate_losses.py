"""training/scene_coordinate_losses.py: the depth loss and the reprojection loss on the depth targets
of a synthetic frame (zero on the targets themselves, large when the coordinates move)."""

from __future__ import annotations

from posenet_ros.inference.scene_coordinates import depth_targets
from posenet_ros.training.scene_coordinate_losses import ScrLossConfig, depth_loss, reprojection_loss


def test_losses_vanish_on_the_depth_targets_and_grow_when_they_move(depth_frame_batch):
    _, batch = depth_frame_batch
    targets, valid = depth_targets(batch["depth"], batch["K"], batch["world_from_cam"])
    assert targets.shape == (1, 3, 8, 10) and bool(valid.all())
    assert float(depth_loss(targets, targets, valid)) == 0.0
    config = ScrLossConfig()
    loss, valid_share = reprojection_loss(targets, batch["K"], batch["world_from_cam"], 60, 80, config)
    assert float(loss) < 1e-3 and float(valid_share) == 1.0
    shifted, _ = reprojection_loss(targets + 0.2, batch["K"], batch["world_from_cam"], 60, 80, config)
    assert float(shifted) > 1.0
