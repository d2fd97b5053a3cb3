"""data/seven_scenes.py: the 7-Scenes layout written and read back, its conventions (full-precision
pose text, default intrinsics, depth in millimetres), split files, and bad data: missing files, bad
poses, skip_bad, truncated images. Every test writes its own tiny dataset (data/conftest.py)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from dataset_support import INTRINSICS, make_sequences, truncate

from posenet_ros.core.camera import FrameTransform, Intrinsics
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.frames import DatasetError
from posenet_ros.data.images import read_depth_mm, read_rgb
from posenet_ros.data.seven_scenes import (
    SEVEN_SCENES_INTRINSICS,
    depth_to_millimetres,
    load_seven_scenes,
    write_seven_scenes,
)


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


def test_writer_refuses_an_existing_layout(seven):
    with pytest.raises(FileExistsError):
        write_seven_scenes(seven[0], make_sequences(3)[0], INTRINSICS)


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


def test_truncated_png_with_check_images(seven, caplog):
    root, _ = seven
    bad = root / "seq-01" / "frame-000002.color.png"
    truncate(bad)
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
    truncate(root / "seq-02" / "frame-000000.depth.png")
    with pytest.raises(DatasetError, match=r"seq-02/frame-000000\.depth\.png"):
        load_seven_scenes(root, check_images=True)
    dataset = PoseDataset(load_seven_scenes(root), FrameTransform(resize=None))
    with pytest.raises(DatasetError, match=r"seq-02/frame-000000\.depth\.png"):
        dataset[4]
