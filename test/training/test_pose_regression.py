"""training/pose_regression.py: an RGB PoseNet never decodes depth; the methods that use depth do."""

from __future__ import annotations

import numpy as np
import pytest

from posenet_ros.core.config import load_config
from posenet_ros.data.dataset import pose_vector
from posenet_ros.data.loading import load_frames
from posenet_ros.runtime.train_config import TrainConfig
from posenet_ros.training.pose_regression import PoseRegressionTraining
from posenet_ros.training.train import position_statistics


@pytest.mark.parametrize("overrides, depth", [
    ([], False),
    (["loss.kind=aleatoric", "model.aleatoric=per_axis"], False),
    (["loss.kind=reprojection"], True),                    # its 3D points come from depth
    (["reprojection_after_epochs=1"], True),
    (["model.depth=dual_stream"], True),                   # the RGB-D network
])
def test_depth_is_decoded_only_when_the_method_uses_it(small_capture, tmp_path, overrides, depth):
    records = load_frames(small_capture, "train")
    assert all(record.depth_path is not None for record in records)  # the data has depth
    config = load_config(TrainConfig, None, ["model.backbone=resnet_tiny", "data.resize=24", "data.crop=null",
                                             *overrides])
    assert PoseRegressionTraining.uses_depth(config) is depth
    mean, scale = position_statistics(np.stack([pose_vector(r.world_from_cam) for r in records])[:, :3])
    setup = PoseRegressionTraining().setup(config, records, mean, scale, cache_dir=tmp_path)
    assert setup.dataset.has_depth is depth
    assert ("depth" in setup.dataset[0]) is depth
    assert bool(list(tmp_path.glob("*/depth.f32"))) is depth
