"""core/camera.py: FrameTransform's checks.
(How the transform changes images, depth and intrinsics is tested through PoseDataset in
data/test_dataset.py.)"""

from __future__ import annotations

import pytest

from posenet_ros.core.camera import FrameTransform


def test_frame_transform_validation():
    assert FrameTransform(crop=[8, 6]).crop_size() == (8, 6)
    assert FrameTransform(crop=5).crop_size() == (5, 5)
    with pytest.raises(ValueError, match="hue"):
        FrameTransform(hue=0.7)
    with pytest.raises(ValueError, match="window"):
        FrameTransform(window=0)
