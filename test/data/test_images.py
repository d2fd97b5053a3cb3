"""data/images.py: reading a record's images as users have them: depth in the dataset's unit, intrinsics
of another image size scaled to the image (another aspect ratio is an error naming the image), a
distorted camera's images undistorted to its pinhole K (checked against the pinhole rendering and with
the geometric-consistency check, which fails when the distortion is ignored)."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from geometry_check import as_sequences, assert_consistent, depth_disagreement, distort

from posenet_ros.core.camera import FrameTransform, Intrinsics
from posenet_ros.core.undistortion import undistortion_maps
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.data.images import read_depth, record_camera, record_depth, record_rgb, scaled_intrinsics
from posenet_ros.data.seven_scenes import load_seven_scenes, write_seven_scenes
from posenet_ros.data.synthetic import SceneConfig, SyntheticScene

DISTORTION = (-0.25, 0.06, 0.001, -0.001)  # k1 k2 p1 p2: a wide-angle lens's barrel distortion
MARGIN = 10  # px: the border that undistortion fills with black (rays outside the distorted image)


@pytest.fixture(scope="module")
def distorted_scene(tmp_path_factory):
    """12 frames of a 160x120 synthetic loop as a distorted camera sees them, written in the 7-Scenes
    layout with the distortion in camera.json; and the pinhole renderings."""
    config = SceneConfig(width=160, height=120, frames_per_sequence=240, train_sequences=1, test_sequences=0,
                         outside_sequences=0, val_sequences=0, variations=[])
    scene = SyntheticScene(config)
    camera = dataclasses.replace(scene.intrinsics, distortion=DISTORTION)
    frames = [scene.render(pose) for pose in scene.sequences[0].world_from_cam[:12]]
    root = tmp_path_factory.mktemp("distorted")
    write_seven_scenes(root, as_sequences([distort(frame, camera) for frame in frames]), camera)
    return load_seven_scenes(root), camera, frames


def test_depth_unit_and_invalid_values(tmp_path):
    path = tmp_path / "d.png"
    cv2.imwrite(str(path), np.array([[0, 65535, 5000, 1234]], dtype=np.uint16))
    assert read_depth(path, 1 / 5000).tolist() == [[0.0, 0.0, 1.0, pytest.approx(0.2468)]]
    assert read_depth(path).tolist() == [[0.0, 0.0, 5.0, pytest.approx(1.234)]]
    cv2.imwrite(str(path), np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"d\.png: depth must be a single-channel uint16 PNG"):
        read_depth(path)


def test_intrinsics_are_scaled_to_the_image_and_another_aspect_is_an_error(tmp_path):
    full = Intrinsics(640, 480, 585.0, 585.0, 320.0, 240.0, DISTORTION)
    half = scaled_intrinsics(full, 320, 240, tmp_path / "a.jpg")
    assert half == Intrinsics(320, 240, 292.5, 292.5, 159.75, 119.75, DISTORTION)
    assert scaled_intrinsics(full, 640, 480, tmp_path / "a.jpg") is full
    assert scaled_intrinsics(full, 333, 250, tmp_path / "a.jpg").fx == pytest.approx(585 * 333 / 640)
    with pytest.raises(DatasetError, match=r"a\.jpg: image is 320x320 px .* 640x480, another aspect ratio"):
        scaled_intrinsics(full, 320, 320, tmp_path / "a.jpg")


def test_depth_of_another_size_and_missing_depth_are_errors_naming_the_file(tmp_path):
    cv2.imwrite(str(tmp_path / "c.png"), np.zeros((6, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "d.png"), np.ones((3, 4), np.uint16))
    record = FrameRecord(tmp_path / "c.png", tmp_path / "d.png", np.eye(4),
                         Intrinsics(16, 12, 10.0, 10.0, 7.5, 5.5), "s", 0)
    rgb, camera = record_rgb(record)
    assert rgb.shape == (6, 8, 3) and camera == Intrinsics(8, 6, 5.0, 5.0, 3.5, 2.5)
    assert record_camera(record) == camera  # from the file's header, as evaluation computes K
    with pytest.raises(DatasetError, match=r"d\.png: depth is 4x3 px, its colour image 8x6"):
        record_depth(record, camera)
    with pytest.raises(DatasetError, match=r"c\.png: the frame has no depth image"):
        record_depth(dataclasses.replace(record, depth_path=None), camera)


def test_distorted_images_are_undistorted_to_the_pinhole_camera(distorted_scene):
    records, camera, frames = distorted_scene
    assert records[0].intrinsics == camera and camera.distorted
    inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
    errors = []
    for record, frame in zip(records[:3], frames, strict=False):
        rgb, pinhole = record_rgb(record)
        assert pinhole == camera.pinhole()
        distorted = cv2.imread(str(record.image_path))[..., ::-1]
        errors.append((np.abs(rgb[inner].astype(int) - frame.rgb_HW3[inner]).mean(),
                       np.abs(distorted[inner].astype(int) - frame.rgb_HW3[inner]).mean()))
        depth = record_depth(record, pinhole)
        close = np.abs(depth[inner] - frame.depth_HW[inner]) < 0.01
        assert close.mean() > 0.95
    # undistorted vs the pinhole rendering: about 1 grey level; the distorted file: more than twice that
    assert all(undistorted < 1.5 and undistorted < 0.5 * raw for undistorted, raw in errors), errors
    item = PoseDataset(records, FrameTransform(resize=None))[0]
    np.testing.assert_allclose(item["K"].numpy(), camera.matrix(), atol=1e-5)
    assert undistortion_maps(camera) is undistortion_maps(camera)  # computed once per camera


def test_ignoring_the_distortion_breaks_the_geometry(distorted_scene):
    records, _, _ = distorted_scene
    pairs = [(0, 3), (4, 8), (6, 11)]
    medians = assert_consistent(records, pairs, max_median_m=0.006)
    ignored = [dataclasses.replace(record, intrinsics=record.intrinsics.pinhole()) for record in records]
    wrong, _ = depth_disagreement(ignored, pairs)
    assert min(wrong) > 2.5 * max(medians), (medians, wrong)


def _plane_depth(camera: Intrinsics) -> np.ndarray:
    """Depth (metres) of the tilted plane n . X = 2 m seen by `camera`: z = 2 / (n . ray)."""
    normal = np.array([0.2, -0.3, 1.0]) / np.linalg.norm([0.2, -0.3, 1.0])
    u, v = np.meshgrid(np.arange(camera.width), np.arange(camera.height))
    rays = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones(u.shape)], axis=-1)
    return (2.0 / (rays @ normal)).astype(np.float32)


@pytest.mark.parametrize("declared", [True, False])
def test_unregistered_depth_is_read_into_the_colour_camera(tmp_path, declared):
    # 7-Scenes-like: colour 262.5 px, depth 292.5 px focal length at 320x240, one optical centre
    colour = Intrinsics(320, 240, 262.5, 262.5, 159.75, 119.75)
    depth_camera = Intrinsics(320, 240, 292.5, 292.5, 159.75, 119.75)
    cv2.imwrite(str(tmp_path / "frame-000000.color.png"), np.zeros((240, 320, 3), np.uint8))
    depth_mm = np.rint(_plane_depth(depth_camera) * 1000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "frame-000000.depth.png"), depth_mm)
    (tmp_path / "frame-000000.pose.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    camera_json = {**colour.to_dict(), **({"depth": depth_camera.to_dict()} if declared else {})}
    (tmp_path / "camera.json").write_text(json.dumps(camera_json))
    (record,) = load_seven_scenes(tmp_path, "train")
    _, camera = record_rgb(record)
    depth = record_depth(record, camera)
    assert depth.shape == (240, 320)
    inner = (slice(20, -20), slice(20, -20))  # the depth camera sees less than the colour camera
    error = np.abs(depth - _plane_depth(colour))[inner][depth[inner] > 0]
    if declared:
        assert (depth[inner] > 0).mean() > 0.99
        assert np.median(error) < 0.002  # measured: rounding to pixels and millimetres
    else:  # read as if registered: the zoom between the two cameras shows as centimetres of error
        assert np.median(error) > 0.005
