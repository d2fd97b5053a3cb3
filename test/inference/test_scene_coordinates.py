"""inference/scene_coordinates.py: the training targets of scene coordinate regression, the depth of
each cell back-projected into the world. (The network is models/test_scene_coordinates.py, the pose
solver test_pose_solving.py, training and the whole scr workflow training/test_train.py.)"""

from __future__ import annotations

import numpy as np

from posenet_ros.inference.scene_coordinates import depth_targets


def test_depth_targets_are_the_back_projected_depth(depth_frame_batch):
    item, batch = depth_frame_batch
    targets, valid = depth_targets(batch["depth"], batch["K"], batch["world_from_cam"])
    assert targets.shape == (1, 3, 8, 10) and bool(valid.all())
    # The target of cell (2, 3) is pixel (28, 20) back-projected.
    K_ = item["K"].double().numpy()
    depth = float(item["depth"][0, 20, 28])
    point_cam = np.array([(28 - K_[0, 2]) / K_[0, 0] * depth, (20 - K_[1, 2]) / K_[1, 1] * depth, depth])
    world = item["world_from_cam"].double().numpy()
    np.testing.assert_allclose(targets[0, :, 2, 3].numpy(), world[:3, :3] @ point_cam + world[:3, 3],
                               atol=1e-5)
