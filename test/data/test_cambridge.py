"""data/cambridge.py: the Cambridge Landmarks layout written and read back, its pose convention
(camera centre and world-to-camera quaternion), intrinsics, and bad data: malformed lines, missing
files, truncated images. Every test writes its own tiny dataset (data/conftest.py)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import transforms3d.quaternions as tq
from dataset_support import HEIGHT, INTRINSICS, WIDTH, make_sequences, truncate

from posenet_ros.core.camera import FrameTransform, Intrinsics
from posenet_ros.data.cambridge import load_cambridge, pose_to_world_from_cam, write_cambridge
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.frames import DatasetError
from posenet_ros.data.images import read_rgb


def test_cambridge_round_trip(cambridge):
    root, frames = cambridge
    lines = (root / "dataset_train.txt").read_text().splitlines()
    assert lines[:3] == ["Visual Landmark Dataset V1", "ImageFile, Camera Position [X Y Z W P Q R]", ""]
    assert lines[3].startswith("seq1/frame00001.png ")
    train = load_cambridge(root, "train")
    test = load_cambridge(root, "test")
    assert [(r.sequence, r.frame_index) for r in train] == [
        (f"seq{s}", i) for s in (1, 2) for i in range(1, 5)]
    assert [r.image_path.relative_to(root).as_posix() for r in test] == [
        f"seq3/frame{i:05d}.png" for i in range(1, 5)]
    expected = frames[0] + frames[1] + frames[2]
    for record, frame in zip(train + test, expected, strict=True):
        assert record.depth_path is None
        assert record.intrinsics == INTRINSICS
        np.testing.assert_allclose(record.world_from_cam, frame.world_from_cam, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(read_rgb(record.image_path), frame.rgb_HW3)


def test_cambridge_written_values_are_centre_and_world_to_camera_quaternion(cambridge):
    root, frames = cambridge
    fields = (root / "dataset_train.txt").read_text().splitlines()[3].split()
    values = np.array([float(v) for v in fields[1:]])
    world_from_cam = frames[0][0].world_from_cam
    np.testing.assert_allclose(values[:3], world_from_cam[:3, 3], atol=1e-12)
    assert values[3] >= 0
    np.testing.assert_allclose(tq.quat2mat(values[3:]), world_from_cam[:3, :3].T, atol=1e-12)


def test_writer_refuses_an_existing_layout(cambridge):
    with pytest.raises(FileExistsError):
        write_cambridge(cambridge[0], make_sequences(3)[0], INTRINSICS)


def _write_list(root: Path, lines: list[str], split: str = "train") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"dataset_{split}.txt"
    path.write_text("Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"
                    + "".join(line + "\n" for line in lines))
    return path


def _write_png(path: Path, width: int = WIDTH, height: int = HEIGHT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 128, np.uint8))


def test_cambridge_convention_by_hand(tmp_path):
    # Camera at C = (1, 2, 3). Its world-to-camera rotation is 90 degrees about z:
    # R_cam_from_world = [[0, -1, 0], [1, 0, 0], [0, 0, 1]], quaternion (cos 45, 0, 0, sin 45).
    _write_png(tmp_path / "seq4" / "frame00007.png")
    s = math.sqrt(0.5)
    _write_list(tmp_path, [f"seq4/frame00007.png 1 2 3 {s} 0 0 {s}"])
    (record,) = load_cambridge(tmp_path)
    assert (record.sequence, record.frame_index, record.intrinsics) == ("seq4", 7, None)
    expected = np.array([[0.0, 1.0, 0.0, 1.0], [-1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 3.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(record.world_from_cam, expected, atol=1e-12)
    # x_cam = R (X - C): the world point 5 m along the camera's optical axis is (0, 0, 5) in the camera.
    point_world = record.world_from_cam @ np.array([0.0, 0.0, 5.0, 1.0])
    r_cam_from_world = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(r_cam_from_world @ (point_world[:3] - [1, 2, 3]), [0, 0, 5], atol=1e-12)
    # An unnormalised quaternion means the same rotation.
    np.testing.assert_allclose(pose_to_world_from_cam([1, 2, 3], [2 * s, 0, 0, 2 * s]), expected, atol=1e-12)


def test_cambridge_intrinsics_from_argument(cambridge):
    root, _ = cambridge
    other = Intrinsics(32, 24, 1.0, 2.0, 3.0, 4.0)
    assert load_cambridge(root, intrinsics=other)[0].intrinsics == other
    (root / "camera.json").unlink()
    assert load_cambridge(root)[0].intrinsics is None


@pytest.mark.parametrize(("line", "pattern"), [
    ("seq1/frame00001.png 1 2 3 1 0 0", r"dataset_train\.txt:5: expected 8 fields"),
    ("seq1/frame00001.png 1 2 3 1 0 0 0 9", r"dataset_train\.txt:5: expected 8 fields"),
    ("seq1/frame00001.png 1 nan 3 1 0 0 0", r"dataset_train\.txt:5: pose holds NaN"),
    ("seq1/frame00001.png 1 2 3 inf 0 0 0", r"dataset_train\.txt:5: pose holds NaN or inf"),
    ("seq1/frame00001.png 1 2 3 0 0 0 0", r"dataset_train\.txt:5: quaternion has zero norm"),
    ("seq1/frame00001.png 1 2 3 a 0 0 0", r"dataset_train\.txt:5: not a number"),
    ("seq1/frame00009.png 1 2 3 1 0 0 0", r"seq1/frame00009\.png: no such image.*dataset_train\.txt:5"),
])


def test_cambridge_bad_lines(tmp_path, line, pattern):
    _write_png(tmp_path / "seq1" / "frame00001.png")
    good = "seq1/frame00001.png 0 0 0 1 0 0 0"
    path = _write_list(tmp_path, [good, line, good])
    with pytest.raises(DatasetError, match=pattern):
        load_cambridge(tmp_path)
    assert len(load_cambridge(tmp_path, skip_bad=True)) == 2
    assert path.name == "dataset_train.txt"


def test_cambridge_missing_root_split_header_empty(tmp_path, cambridge):
    with pytest.raises(DatasetError, match="nothing_here"):
        load_cambridge(tmp_path / "nothing_here")
    with pytest.raises(DatasetError, match=r"dataset_night\.txt.*FileNotFoundError"):
        load_cambridge(cambridge[0], "night")
    _write_png(tmp_path / "seq1" / "frame00001.png")
    (tmp_path / "dataset_train.txt").write_text("seq1/frame00001.png 0 0 0 1 0 0 0\n")
    with pytest.raises(DatasetError, match=r"dataset_train\.txt:1: frame line inside the 3 header lines"):
        load_cambridge(tmp_path)
    _write_list(tmp_path, [])
    with pytest.raises(DatasetError, match=r"dataset_train\.txt: the split has no frames"):
        load_cambridge(tmp_path)


def test_cambridge_truncated_png_with_check_images(cambridge):
    root, _ = cambridge
    truncate(root / "seq2" / "frame00003.png")
    with pytest.raises(DatasetError, match=r"seq2/frame00003\.png: unreadable image"):
        load_cambridge(root, check_images=True)
    assert len(load_cambridge(root, check_images=True, skip_bad=True)) == 7
    dataset = PoseDataset(load_cambridge(root), FrameTransform(resize=None))
    with pytest.raises(DatasetError, match=r"seq2/frame00003\.png"):
        dataset[6]
