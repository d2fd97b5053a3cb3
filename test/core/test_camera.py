"""core/camera.py: FrameTransform's checks.
(How the transform changes images, depth and intrinsics is tested through PoseDataset in
data/test_dataset.py.)"""

from __future__ import annotations

import pytest

from posenet_ros.core.camera import FrameTransform, Intrinsics, crop_box


def test_frame_transform_validation():
    assert FrameTransform(crop=[8, 6]).crop_size() == (8, 6)
    assert FrameTransform(crop=5).crop_size() == (5, 5)
    with pytest.raises(ValueError, match="hue"):
        FrameTransform(hue=0.7)
    with pytest.raises(ValueError, match="window"):
        FrameTransform(window=0)


def test_too_large_crop_names_height_and_width_in_config_order():
    # data.crop is (height, width); the error must print it in that order, next to the resized image's
    with pytest.raises(ValueError, match=r"crop \(height, width\) = \(50, 40\) px is larger than the resized "
                                         r"image \(height, width\) = \(48, 64\) px"):
        crop_box(64, 48, FrameTransform(resize=None, crop=(50, 40)))


def test_intrinsics_keep_distortion_through_resize_crop_and_dict():
    camera = Intrinsics(640, 480, 500.0, 500.0, 319.5, 239.5, distortion=(0.1, -0.02, 0.001, 0.0))
    assert camera.distorted and not camera.pinhole().distorted
    assert camera.resized(320, 240).distortion == camera.distortion
    assert camera.cropped(10, 10, 100, 100).distortion == camera.distortion
    assert Intrinsics.from_dict(camera.to_dict()) == camera
    assert "distortion" not in camera.pinhole().to_dict()  # pinhole files stay as before
    with pytest.raises(ValueError, match="distortion"):
        Intrinsics(640, 480, 500.0, 500.0, 319.5, 239.5, distortion=(0.1, 0.2))
