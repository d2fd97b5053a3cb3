"""core/camera.py: the evaluation transform a checkpoint's config gives, and FrameTransform's checks.
(How the transform changes images, depth and intrinsics is tested through PoseDataset in
data/test_dataset.py.)"""

from __future__ import annotations

import pytest

from posenet_ros.core.camera import FrameTransform, eval_transform


def test_eval_transform_from_config() -> None:
    transform = eval_transform({"data": {"resize": 64, "crop": [48, 64]}})
    assert (transform.resize, transform.crop_size(), transform.random_crop) == (64, (48, 64), False)
    default = eval_transform({"model": {}})
    assert (default.resize, default.crop_size(), default.random_crop) == (256, (224, 224), False)


def test_frame_transform_validation():
    assert FrameTransform(crop=[8, 6]).crop_size() == (8, 6)
    assert FrameTransform(crop=5).crop_size() == (5, 5)
    with pytest.raises(ValueError, match="hue"):
        FrameTransform(hue=0.7)
    with pytest.raises(ValueError, match="window"):
        FrameTransform(window=0)
