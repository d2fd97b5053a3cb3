"""Dataset layouts (7-Scenes, Cambridge Landmarks), layout detection and the torch PoseDataset.

Every test writes its own tiny dataset in tmp_path with the layout writers.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import transforms3d.quaternions as tq

from posenet_ros.core.camera import FrameTransform, Intrinsics
from posenet_ros.data.cambridge import load_cambridge, pose_to_world_from_cam, write_cambridge
from posenet_ros.data.dataset import PoseDataset, read_depth_mm, read_rgb
from posenet_ros.data.frames import DatasetError, RenderedFrame, SequenceToWrite
from posenet_ros.data.loading import detect_layouts, load_frames
from posenet_ros.data.seven_scenes import (
    SEVEN_SCENES_INTRINSICS,
    depth_to_millimetres,
    load_seven_scenes,
    write_seven_scenes,
)

WIDTH, HEIGHT = 32, 24
INTRINSICS = Intrinsics(width=WIDTH, height=HEIGHT, fx=30.0, fy=31.0, cx=15.7, cy=11.2)


def random_pose(rng: np.random.Generator) -> np.ndarray:
    quat = rng.normal(size=4)
    pose = np.eye(4)
    pose[:3, :3] = tq.quat2mat(quat / np.linalg.norm(quat))
    pose[:3, 3] = rng.uniform(-3.0, 3.0, size=3)
    return pose


def make_frame(rng: np.random.Generator, width: int = WIDTH, height: int = HEIGHT) -> RenderedFrame:
    rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    depth = rng.uniform(0.3, 6.0, size=(height, width)).astype(np.float32)
    depth[rng.random((height, width)) < 0.2] = 0.0  # invalid pixels
    return RenderedFrame(rgb_HW3=rgb, depth_HW=depth, world_from_cam=random_pose(rng))


def make_sequences(seed: int = 0, splits: tuple[str, ...] = ("train", "test"), frames: int = 4,
                   ) -> tuple[list[SequenceToWrite], list[list[RenderedFrame]]]:
    """Sequences whose `frames` are generators (as the writers must accept) and the frames themselves."""
    rng = np.random.default_rng(seed)
    all_frames = [[make_frame(rng) for _ in range(frames)] for _ in splits]
    sequences = [SequenceToWrite(split, (frame for frame in seq)) for split, seq in zip(splits, all_frames,
                                                                                         strict=True)]
    return sequences, all_frames


@pytest.fixture
def seven(tmp_path: Path) -> tuple[Path, list[list[RenderedFrame]]]:
    root = tmp_path / "seven"
    sequences, frames = make_sequences(0, ("train", "train", "test"))
    write_seven_scenes(root, sequences, INTRINSICS)
    return root, frames


@pytest.fixture
def cambridge(tmp_path: Path) -> tuple[Path, list[list[RenderedFrame]]]:
    root = tmp_path / "cambridge"
    sequences, frames = make_sequences(1, ("train", "train", "test"))
    write_cambridge(root, sequences, INTRINSICS)
    return root, frames


# --- 7-Scenes ---------------------------------------------------------------------------------------


def test_seven_scenes_round_trip(seven):
    root, frames = seven
    assert (root / "TrainSplit.txt").read_text() == "sequence1\nsequence2\n"
    assert (root / "TestSplit.txt").read_text() == "sequence3\n"
    train = load_seven_scenes(root, "train")
    test = load_seven_scenes(root, "test")
    assert [(r.sequence, r.frame_index) for r in train] == [
        (f"seq-0{s}", i) for s in (1, 2) for i in range(4)]
    assert [(r.sequence, r.frame_index) for r in test] == [("seq-03", i) for i in range(4)]
    expected = frames[0] + frames[1] + frames[2]
    for record, frame in zip(train + test, expected, strict=True):
        assert record.intrinsics == INTRINSICS
        np.testing.assert_allclose(record.world_from_cam, frame.world_from_cam, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(read_rgb(record.image_path), frame.rgb_HW3)
        depth = read_depth_mm(record.depth_path)
        np.testing.assert_array_equal(depth == 0, frame.depth_HW == 0)
        np.testing.assert_allclose(depth, frame.depth_HW, rtol=0, atol=0.5e-3 + 1e-6)


def test_seven_scenes_pose_text_has_full_precision(seven):
    root, frames = seven
    text = (root / "seq-01" / "frame-000000.pose.txt").read_text()
    parsed = np.array([[float(v) for v in line.split()] for line in text.splitlines()])
    np.testing.assert_array_equal(parsed, frames[0][0].world_from_cam)


def test_seven_scenes_intrinsics_default_and_override(seven):
    root, _ = seven
    (root / "camera.json").unlink()
    assert load_seven_scenes(root)[0].intrinsics == SEVEN_SCENES_INTRINSICS
    assert SEVEN_SCENES_INTRINSICS.matrix().tolist() == [[585, 0, 320], [0, 585, 240], [0, 0, 1]]
    other = Intrinsics(32, 24, 1.0, 2.0, 3.0, 4.0)
    assert load_seven_scenes(root, intrinsics=other)[0].intrinsics == other


def test_seven_scenes_extra_split_names(tmp_path):
    sequences, _ = make_sequences(2, ("train", "outside", "blur"), frames=2)
    folders = write_seven_scenes(tmp_path, sequences, INTRINSICS)
    assert [f.name for f in folders] == ["seq-01", "seq-02", "seq-03"]
    assert (tmp_path / "OutsideSplit.txt").read_text() == "sequence2\n"
    assert [r.sequence for r in load_seven_scenes(tmp_path, "blur")] == ["seq-03", "seq-03"]


def test_depth_to_millimetres():
    depth = np.array([[0.0, -1.0, np.nan, np.inf], [0.0004, 1.2344, 1.2346, 100.0]])
    assert depth_to_millimetres(depth).tolist() == [[0, 0, 0, 0], [1, 1234, 1235, 65534]]


def test_seven_scenes_invalid_raw_depth_reads_as_zero(tmp_path):
    path = tmp_path / "d.png"
    cv2.imwrite(str(path), np.array([[0, 65535, 1500]], dtype=np.uint16))
    assert read_depth_mm(path).tolist() == [[0.0, 0.0, 1.5]]


def test_writers_refuse_existing_layout(seven, cambridge):
    with pytest.raises(FileExistsError):
        write_seven_scenes(seven[0], make_sequences(3)[0], INTRINSICS)
    with pytest.raises(FileExistsError):
        write_cambridge(cambridge[0], make_sequences(3)[0], INTRINSICS)


# --- Cambridge --------------------------------------------------------------------------------------


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


# --- layout detection -------------------------------------------------------------------------------


def test_layout_detection(seven, cambridge, tmp_path):
    assert detect_layouts(seven[0]) == ["7scenes"]
    assert detect_layouts(cambridge[0]) == ["cambridge"]
    assert load_frames(seven[0], "test")[0].sequence == "seq-03"
    assert load_frames(cambridge[0], "test")[0].sequence == "seq3"
    assert load_frames(cambridge[0], "train", skip_bad=True)[0].depth_path is None
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty_folder"):
        load_frames(empty)
    with pytest.raises(DatasetError, match="no_such_folder"):
        load_frames(tmp_path / "no_such_folder")


def test_layout_detection_both_needs_layout_argument(tmp_path):
    write_seven_scenes(tmp_path, make_sequences(4, ("train",), 2)[0], INTRINSICS)
    (tmp_path / "camera.json").unlink()
    write_cambridge(tmp_path, make_sequences(5, ("train",), 3)[0], INTRINSICS)
    with pytest.raises(DatasetError, match="both"):
        load_frames(tmp_path)
    assert len(load_frames(tmp_path, layout="7scenes")) == 2
    assert len(load_frames(tmp_path, layout="cambridge")) == 3


# --- bad data ---------------------------------------------------------------------------------------


def _set_pose_text(root: Path, seq: str, index: int, text: str) -> Path:
    path = root / seq / f"frame-{index:06d}.pose.txt"
    path.write_text(text)
    return path


def test_seven_scenes_missing_root_and_split(tmp_path, seven):
    with pytest.raises(DatasetError, match="nothing_here"):
        load_seven_scenes(tmp_path / "nothing_here")
    with pytest.raises(DatasetError, match=r"OutsideSplit\.txt.*FileNotFoundError"):
        load_seven_scenes(seven[0], "outside")


@pytest.mark.parametrize("suffix", ["color.png", "depth.png", "pose.txt"])
def test_seven_scenes_missing_frame_file(seven, suffix):
    root, _ = seven
    (root / "seq-02" / f"frame-000002.{suffix}").unlink()
    with pytest.raises(DatasetError, match=rf"seq-02/frame-000002\.{suffix.replace('.', '[.]')}"):
        load_seven_scenes(root)
    assert len(load_seven_scenes(root, skip_bad=True)) == 7


def test_seven_scenes_missing_sequence_folder(seven):
    root, _ = seven
    (root / "TestSplit.txt").write_text("sequence3\nsequence9\n")
    with pytest.raises(DatasetError, match="seq-09"):
        load_seven_scenes(root, "test")


ROT = "1 0 0 0\n0 1 0 0\n0 0 1 0\n"


@pytest.mark.parametrize(("text", "pattern"), [
    ("1 0 0 0\n0 nan 0 0\n0 0 1 0\n0 0 0 1\n", r"frame-000001\.pose\.txt:2: .*NaN"),
    ("1 0 0 0\n0 1 0 0\n0 0 1 inf\n0 0 0 1\n", r"frame-000001\.pose\.txt:3: .*NaN or inf"),
    ("2 0 0 0\n0 2 0 0\n0 0 2 0\n0 0 0 1\n", r"frame-000001\.pose\.txt: .*not a rotation"),
    ("-1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", r"frame-000001\.pose\.txt: .*not a rotation.*det = -1"),
    (ROT + "0 0 1 1\n", r"frame-000001\.pose\.txt:4: last row"),
    (ROT, r"frame-000001\.pose\.txt: expected 4 rows"),
    ("1 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", r"frame-000001\.pose\.txt:1: expected 4 numbers"),
    ("1 0 0 x\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", r"frame-000001\.pose\.txt:1: not a number"),
])
def test_seven_scenes_bad_pose(seven, text, pattern):
    root, _ = seven
    _set_pose_text(root, "seq-01", 1, text)
    with pytest.raises(DatasetError, match=pattern):
        load_seven_scenes(root)


def test_seven_scenes_reorthonormalises_nearly_rotations(seven):
    root, _ = seven
    angle = 0.3
    c, s = math.cos(angle), math.sin(angle)
    text = f"{c + 1e-4} {-s} 0 1\n{s} {c} 0 2\n0 0 1.0002 3\n0 0 0 1\n"
    _set_pose_text(root, "seq-01", 0, text)
    pose = load_seven_scenes(root)[0].world_from_cam
    np.testing.assert_allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(pose[:3, :3], [[c, -s, 0], [s, c, 0], [0, 0, 1]], atol=2e-4)
    np.testing.assert_array_equal(pose[:3, 3], [1, 2, 3])


def test_seven_scenes_empty_split(seven):
    root, _ = seven
    (root / "TrainSplit.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"TrainSplit\.txt: the split lists no sequences"):
        load_seven_scenes(root)
    (root / "TrainSplit.txt").write_text("sequence1\nseq 2\n")
    with pytest.raises(DatasetError, match=r"TrainSplit\.txt:2: expected 'sequenceN'"):
        load_seven_scenes(root)


def test_skip_bad_counts_and_warns(seven, caplog):
    root, _ = seven
    _set_pose_text(root, "seq-01", 1, "nan " * 16)
    _set_pose_text(root, "seq-02", 3, "2 0 0 0\n0 2 0 0\n0 0 2 0\n0 0 0 1\n")
    with caplog.at_level(logging.WARNING, logger="posenet_ros.data"):
        records = load_seven_scenes(root, skip_bad=True)
    assert [(r.sequence, r.frame_index) for r in records] == [
        ("seq-01", 0), ("seq-01", 2), ("seq-01", 3), ("seq-02", 0), ("seq-02", 1), ("seq-02", 2)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "skipped 2 bad frame(s)" in message
    assert "seq-01/frame-000001.pose.txt" in message and "seq-02/frame-000003.pose.txt" in message


def test_skip_bad_all_frames_bad_is_an_error(seven):
    root, _ = seven
    for index in range(4):
        _set_pose_text(root, "seq-03", index, "nan " * 16)
    with pytest.raises(DatasetError, match=r"TestSplit\.txt: the split has no frames after skipping 4"):
        load_seven_scenes(root, "test", skip_bad=True)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_png_with_check_images(seven, caplog):
    root, _ = seven
    bad = root / "seq-01" / "frame-000002.color.png"
    _truncate(bad)
    with pytest.raises(DatasetError, match=r"seq-01/frame-000002\.color\.png: unreadable image"):
        load_seven_scenes(root, check_images=True)
    with caplog.at_level(logging.WARNING):
        records = load_seven_scenes(root, check_images=True, skip_bad=True)
    assert len(records) == 7 and "skipped 1 bad frame(s)" in caplog.text
    # Without check_images the loader accepts it and the torch dataset fails on reading it.
    records = load_seven_scenes(root)
    dataset = PoseDataset(records, FrameTransform(resize=None))
    assert dataset[1]["frame_index"] == 1
    with pytest.raises(DatasetError, match=r"frame-000002\.color\.png"):
        dataset[2]


def test_truncated_depth_with_check_images(seven):
    root, _ = seven
    _truncate(root / "seq-02" / "frame-000000.depth.png")
    with pytest.raises(DatasetError, match=r"seq-02/frame-000000\.depth\.png"):
        load_seven_scenes(root, check_images=True)
    dataset = PoseDataset(load_seven_scenes(root), FrameTransform(resize=None))
    with pytest.raises(DatasetError, match=r"seq-02/frame-000000\.depth\.png"):
        dataset[4]


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
    _truncate(root / "seq2" / "frame00003.png")
    with pytest.raises(DatasetError, match=r"seq2/frame00003\.png: unreadable image"):
        load_cambridge(root, check_images=True)
    assert len(load_cambridge(root, check_images=True, skip_bad=True)) == 7
    dataset = PoseDataset(load_cambridge(root), FrameTransform(resize=None))
    with pytest.raises(DatasetError, match=r"seq2/frame00003\.png"):
        dataset[6]


# --- PoseDataset ------------------------------------------------------------------------------------


def test_dataset_item_contents(seven):
    root, frames = seven
    records = load_seven_scenes(root)
    item = PoseDataset(records, FrameTransform(resize=None))[5]
    frame = frames[1][1]
    assert item["image"].shape == (3, HEIGHT, WIDTH) and item["image"].dtype == torch.float32
    np.testing.assert_allclose(item["image"].numpy().transpose(1, 2, 0) * 255, frame.rgb_HW3, atol=1e-3)
    assert item["depth"].shape == (1, HEIGHT, WIDTH)
    np.testing.assert_allclose(item["depth"][0].numpy(), frame.depth_HW, atol=0.5e-3 + 1e-6)
    np.testing.assert_allclose(item["world_from_cam"].numpy(), frame.world_from_cam, atol=1e-6)
    np.testing.assert_allclose(item["K"].numpy(), INTRINSICS.matrix(), atol=1e-6)
    pose = item["pose"].numpy().astype(np.float64)
    np.testing.assert_allclose(pose[:3], frame.world_from_cam[:3, 3], atol=1e-6)
    assert pose[3] >= 0 and abs(np.linalg.norm(pose[3:]) - 1) < 1e-6
    np.testing.assert_allclose(tq.quat2mat(pose[3:]), frame.world_from_cam[:3, :3], atol=1e-6)
    assert (item["sequence"], item["frame_index"]) == ("seq-02", 1)


def test_dataset_without_depth_or_intrinsics(cambridge):
    root, _ = cambridge
    (root / "camera.json").unlink()
    item = PoseDataset(load_cambridge(root), FrameTransform(resize=12, crop=10))[0]
    assert "depth" not in item and "K" not in item
    assert item["image"].shape == (3, 10, 10)
    assert (item["sequence"], item["frame_index"]) == ("seq1", 1)


def _blob_frame(width: int, height: int, x0: int, y0: int, size: int) -> RenderedFrame:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[y0:y0 + size, x0:x0 + size] = 255
    return RenderedFrame(rgb_HW3=rgb, depth_HW=np.ones((height, width), np.float32), world_from_cam=np.eye(4))


def _centroid(image_3HW: torch.Tensor) -> np.ndarray:
    weights = image_3HW[0].numpy().astype(np.float64)
    ys, xs = np.mgrid[: weights.shape[0], : weights.shape[1]]
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


@pytest.mark.parametrize("random_crop", [False, True])
def test_intrinsics_follow_resize_and_crop(tmp_path, random_crop):
    # A white 8x8 block centred at pixel (31.5, 19.5) of a 64x48 image (inside every possible crop).
    # The 3D point on the ray of that pixel must project, with the transformed K, onto the block's
    # centroid in the output image.
    intrinsics = Intrinsics(64, 48, 50.0, 55.0, 31.3, 22.9)
    frame = _blob_frame(64, 48, 28, 16, 8)
    write_seven_scenes(tmp_path, [SequenceToWrite("train", [frame])], intrinsics)
    records = load_seven_scenes(tmp_path)
    u, v = 31.5, 19.5
    point_cam = np.array([(u - 31.3) / 50.0, (v - 22.9) / 55.0, 1.0]) * 2.0
    full = intrinsics.matrix() @ point_cam
    np.testing.assert_allclose(full[:2] / full[2], [u, v])
    dataset = PoseDataset(records, FrameTransform(resize=24, crop=(18, 20), random_crop=random_crop))
    corners = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        item = dataset[0]
        assert item["image"].shape == (3, 18, 20)
        k = item["K"].numpy().astype(np.float64)
        projected = k @ point_cam
        projected = projected[:2] / projected[2]
        # Resize by 1/2 maps pixel x to (x + 0.5) / 2 - 0.5; the crop shifts by its corner.
        x0 = (u + 0.5) / 2 - 0.5 - projected[0]
        y0 = (v + 0.5) / 2 - 0.5 - projected[1]
        assert x0 == pytest.approx(round(x0), abs=1e-5) and y0 == pytest.approx(round(y0), abs=1e-5)
        assert 0 <= round(x0) <= 32 - 20 and 0 <= round(y0) <= 24 - 18
        corners.add((round(x0), round(y0)))
        np.testing.assert_allclose(_centroid(item["image"]), projected, atol=1e-4)
        np.testing.assert_allclose(k[[0, 1], [0, 1]], [25.0, 27.5], atol=1e-5)
    if random_crop:
        assert len(corners) > 1
    else:
        assert corners == {(6, 3)}


def test_random_crop_is_deterministic_per_seed_epoch_index(seven):
    records = load_seven_scenes(seven[0])
    transform = FrameTransform(resize=None, crop=12, random_crop=True, brightness=0.4, contrast=0.4,
                               saturation=0.4, hue=0.1)
    first = PoseDataset(records, transform, seed=7)
    second = PoseDataset(records, transform, seed=7)
    first.set_epoch(3)
    second.set_epoch(3)
    for index in (0, 5):
        a, b = first[index], second[index]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["K"], b["K"])
        assert torch.equal(a["depth"], b["depth"])
    corners = set()
    for epoch in range(6):
        first.set_epoch(epoch)
        corners.add(tuple(first[0]["K"][:2, 2].tolist()))
    assert len(corners) > 1  # the crop moves between epochs
    other_seed = PoseDataset(records, transform, seed=8)
    other_seed.set_epoch(3)
    first.set_epoch(3)
    assert not torch.equal(other_seed[0]["image"], first[0]["image"])


def test_centre_crop_is_the_same_every_epoch(seven):
    records = load_seven_scenes(seven[0])
    dataset = PoseDataset(records, FrameTransform(resize=None, crop=(10, 12), random_crop=False))
    items = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        items.append(dataset[2])
    assert all(torch.equal(items[0]["image"], item["image"]) for item in items)
    # centre crop of 32x24 to 12x10 starts at (10, 7)
    np.testing.assert_allclose(items[0]["K"][:2, 2].numpy(), [15.7 - 10, 11.2 - 7], atol=1e-5)
    full = read_rgb(records[2].image_path)[7:17, 10:22].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(items[0]["image"].numpy(), full, atol=1e-6)


def test_dataloader_workers_give_the_same_items(seven):
    records = load_seven_scenes(seven[0])
    dataset = PoseDataset(records, FrameTransform(resize=20, crop=16, random_crop=True, brightness=0.3))
    dataset.set_epoch(2)
    serial = list(torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=0))
    parallel = list(torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["K"], b["K"])
        assert a["sequence"] == b["sequence"]


def test_colour_jitter_changes_colours_within_range(seven):
    records = load_seven_scenes(seven[0])
    plain = PoseDataset(records, FrameTransform(resize=None))[0]["image"]
    for name in ("brightness", "contrast", "saturation", "hue"):
        amount = 0.2 if name == "hue" else 0.5
        jittered = PoseDataset(records, FrameTransform(resize=None, **{name: amount}))[0]["image"]
        assert jittered.min() >= 0 and jittered.max() <= 1
        assert (jittered - plain).abs().max() > 0.01, name


def test_windows_stay_in_sequences(seven):
    root, frames = seven
    records = load_seven_scenes(root)
    dataset = PoseDataset(records, FrameTransform(resize=None, window=3))
    assert len(dataset) == 4  # two windows in each 4-frame training sequence
    seen = []
    for item in dataset:
        assert item["image"].shape == (3, 3, HEIGHT, WIDTH)
        assert item["depth"].shape == (3, 1, HEIGHT, WIDTH)
        assert item["world_from_cam"].shape == (3, 4, 4) and item["pose"].shape == (3, 7)
        assert item["K"].shape == (3, 3, 3)
        indices = item["frame_index"].tolist()
        assert indices == list(range(indices[0], indices[0] + 3))
        sequence = int(item["sequence"][-1]) - 1
        for t, index in enumerate(indices):
            expected = frames[sequence][index]
            np.testing.assert_allclose(item["image"][t].numpy().transpose(1, 2, 0) * 255,
                                       expected.rgb_HW3, atol=1e-3)
            np.testing.assert_allclose(item["world_from_cam"][t].numpy(), expected.world_from_cam, atol=1e-6)
        seen.append((item["sequence"], indices[0]))
    assert seen == [("seq-01", 0), ("seq-01", 1), ("seq-02", 0), ("seq-02", 1)]
    strided = PoseDataset(records, FrameTransform(resize=None, window=2, window_stride=3))
    assert [item["frame_index"].tolist() for item in strided] == [[0, 3], [0, 3]]
    with pytest.raises(ValueError, match="window"):
        PoseDataset(records, FrameTransform(window=5))


def test_window_shares_crop_and_jitter(tmp_path):
    rng = np.random.default_rng(3)
    frame = make_frame(rng)
    poses = [random_pose(rng) for _ in range(3)]
    sequence = [RenderedFrame(frame.rgb_HW3, frame.depth_HW, pose) for pose in poses]
    write_seven_scenes(tmp_path, [SequenceToWrite("train", sequence)], INTRINSICS)
    transform = FrameTransform(resize=None, crop=10, random_crop=True, brightness=0.5, contrast=0.5,
                               saturation=0.5, hue=0.2, window=3)
    dataset = PoseDataset(load_seven_scenes(tmp_path), transform)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        item = dataset[0]
        assert torch.equal(item["image"][0], item["image"][1])
        assert torch.equal(item["image"][0], item["image"][2])
        assert torch.equal(item["K"][0], item["K"][2])
        assert torch.equal(item["depth"][0], item["depth"][2])


def test_depth_nearest_neighbour_resize_keeps_zeros(tmp_path):
    rng = np.random.default_rng(4)
    levels = np.array([0.0, 0.5, 1.25, 3.0], dtype=np.float32)
    depth = levels[rng.integers(0, 4, size=(HEIGHT, WIDTH))]
    frame = RenderedFrame(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), depth, np.eye(4))
    write_seven_scenes(tmp_path, [SequenceToWrite("train", [frame])], INTRINSICS)
    item = PoseDataset(load_seven_scenes(tmp_path), FrameTransform(resize=17))[0]
    out = item["depth"][0].numpy()
    assert out.shape == (17, 23) and item["image"].shape == (3, 17, 23)
    assert set(np.unique(out).tolist()) <= set(levels.tolist())
    assert (out == 0).mean() == pytest.approx((depth == 0).mean(), abs=0.1)
    # Exact nearest neighbour: output pixel centre x maps to source (x + 0.5) * 32 / 23 - 0.5; the
    # nearest source pixel is floor((x + 0.5) * 32 / 23) (columns exactly between two pixels skipped).
    y_source = (np.arange(17) + 0.5) * HEIGHT / 17
    x_source = (np.arange(23) + 0.5) * WIDTH / 23
    rows, cols = y_source % 1 != 0, x_source % 1 != 0
    assert rows.sum() >= 16 and cols.sum() >= 22
    expected = depth[np.ix_(np.floor(y_source).astype(int), np.floor(x_source).astype(int))]
    np.testing.assert_array_equal(out[np.ix_(rows, cols)], expected[np.ix_(rows, cols)])


def test_frame_transform_validation():
    assert FrameTransform(crop=[8, 6]).crop_size() == (8, 6)
    assert FrameTransform(crop=5).crop_size() == (5, 5)
    with pytest.raises(ValueError, match="hue"):
        FrameTransform(hue=0.7)
    with pytest.raises(ValueError, match="window"):
        FrameTransform(window=0)
