"""inference/scene_coordinates.py: the training targets of scene coordinate regression, the depth of
each cell back-projected into the world. (The network is models/test_scene_coordinates.py, the pose
solver test_pose_solving.py, training and the whole scr workflow training/test_train.py.)"""

from __future__ import annotations

import numpy as np
import torch

from posenet_ros.cli import main
from posenet_ros.core.camera import FrameTransform
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.loading import load_frames
from posenet_ros.inference.scene_coordinates import depth_targets


def test_depth_targets_are_the_back_projected_depth(tmp_path):
    assert main(["synth", "--quiet", str(tmp_path / "scene"), "width=80", "height=60",
                 "frames_per_sequence=4", "train_sequences=1", "test_sequences=1", "val_sequences=0",
                 "outside_sequences=0", "variations=[]"]) == 0
    item = PoseDataset(load_frames(tmp_path / "scene", "train"), FrameTransform(resize=None))[0]
    batch = {key: value[None] for key, value in item.items() if torch.is_tensor(value)}
    targets, valid = depth_targets(batch["depth"], batch["K"], batch["world_from_cam"])
    assert targets.shape == (1, 3, 8, 10) and bool(valid.all())
    # The target of cell (2, 3) is pixel (28, 20) back-projected.
    K_ = item["K"].double().numpy()
    depth = float(item["depth"][0, 20, 28])
    point_cam = np.array([(28 - K_[0, 2]) / K_[0, 0] * depth, (20 - K_[1, 2]) / K_[1, 1] * depth, depth])
    world = item["world_from_cam"].double().numpy()
    np.testing.assert_allclose(targets[0, :, 2, 3].numpy(), world[:3, :3] @ point_cam + world[:3, 3],
                               atol=1e-5)
