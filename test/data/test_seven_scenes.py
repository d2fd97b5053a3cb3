"""data/seven_scenes.py: the 7-Scenes layout written and read back, its conventions (full-precision
pose text, default intrinsics, depth in millimetres), split files, and bad data: missing files, bad
poses, skip_bad, truncated images. Every test writes its own tiny dataset (data/conftest.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from dataset_support import INTRINSICS, make_sequences, truncate
from geometry_check import as_sequences, assert_consistent, depth_disagreement, rendered_frames

from posenet_ros.core.camera import FrameTransform, Intrinsics
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.frames import DatasetError, SequenceToWrite
from posenet_ros.data.images import read_depth_mm, read_rgb, record_rgb
from posenet_ros.data.loading import detect_layouts, load_frames
from posenet_ros.data.seven_scenes import (
    SEVEN_SCENES_INTRINSICS,
    depth_to_millimetres,
    format_intrinsics_txt,
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


# --- the layout as users bring it: JPEG, no depth, camera-intrinsics.txt, flat folders ------------

KITCHEN = Path(__file__).resolve().parents[3] / "shared" / "data" / "7scenes-redkitchen-500"


@pytest.fixture(scope="module")
def rendered():
    """100 consecutive synthetic frames (64x48, exact depth, a few cm apart) and their intrinsics."""
    return rendered_frames(100)


def test_written_variants_round_trip_and_are_geometrically_consistent(tmp_path, rendered):
    intrinsics, frames = rendered
    pairs = [(0, 2), (10, 13), (30, 32)]
    for color, intrinsics_file in [("png", "camera.json"), ("jpg", "camera-intrinsics.txt")]:
        root = tmp_path / color
        write_seven_scenes(root, as_sequences(frames[:40]), intrinsics, color=color,
                           intrinsics_file=intrinsics_file)
        records = load_seven_scenes(root)
        assert [r.image_path.name for r in records[:2]] == [f"frame-00000{i}.color.{color}" for i in (0, 1)]
        assert records[0].intrinsics.matrix() == pytest.approx(intrinsics.matrix(), abs=1e-12)
        for record, frame in zip(records, frames, strict=False):
            np.testing.assert_allclose(record.world_from_cam, frame.world_from_cam, rtol=0, atol=1e-9)
        rgb = read_rgb(records[5].image_path).astype(int)
        assert np.abs(rgb - frames[5].rgb_HW3).mean() < (0.01 if color == "png" else 6.0)
        assert_consistent(records, pairs)


def test_intrinsics_of_another_size_are_scaled_and_unscaled_ones_break_the_geometry(tmp_path, rendered):
    intrinsics, frames = rendered
    root = tmp_path / "scaled"
    write_seven_scenes(root, as_sequences(frames[:20]), intrinsics, intrinsics_file="camera-intrinsics.txt")
    full_size = intrinsics.resized(2 * intrinsics.width, 2 * intrinsics.height)  # 640x480 K, 320x240 files
    (root / "camera-intrinsics.txt").write_text(format_intrinsics_txt(full_size))
    records = load_seven_scenes(root)
    assert (records[0].intrinsics.width, records[0].intrinsics.height) == (64, 48)
    assert records[0].intrinsics == Intrinsics(64, 48, *full_size.matrix()[[0, 1, 0, 1], [0, 1, 2, 2]])
    pairs = [(0, 3), (10, 14)]
    # camera-intrinsics.txt holds the K of the images' size: a 2x K written there is taken at face value
    # and breaks the geometry ...
    medians, _ = depth_disagreement(records, pairs)
    assert min(medians) > 0.02, medians
    # ... while a camera.json that says its size is scaled to the images (record_rgb / record_depth).
    (root / "camera.json").write_text(json.dumps(full_size.to_dict()))
    records = load_seven_scenes(root)
    assert records[0].intrinsics == full_size
    _, camera = record_rgb(records[0])
    assert camera.matrix() == pytest.approx(intrinsics.matrix(), abs=1e-9)
    assert_consistent(records, pairs)
    item = PoseDataset(records, FrameTransform(resize=None))[0]
    np.testing.assert_allclose(item["K"].numpy(), intrinsics.matrix(), atol=1e-5)


def test_other_aspect_ratio_is_an_error_naming_the_image(tmp_path, rendered):
    intrinsics, frames = rendered
    write_seven_scenes(tmp_path, as_sequences(frames[:2]), intrinsics)
    (tmp_path / "camera.json").write_text(json.dumps(Intrinsics(64, 64, 50.0, 50.0, 31.5, 31.5).to_dict()))
    records = load_seven_scenes(tmp_path)
    with pytest.raises(DatasetError, match=r"frame-000000\.color\.png: image is 64x48 px .* 64x64"):
        record_rgb(records[0])


def test_rgb_only_sequence_loads_without_depth(tmp_path, rendered):
    intrinsics, frames = rendered
    write_seven_scenes(tmp_path, as_sequences(frames[:6]), intrinsics, depth=False, color="jpg")
    records = load_seven_scenes(tmp_path)
    assert len(records) == 6 and all(r.depth_path is None for r in records)
    item = PoseDataset(records, FrameTransform(resize=None))[0]
    assert "depth" not in item and item["image"].shape == (3, 48, 64)
    # The geometry of the poses, checked with the renderer's depth of the same frames.
    assert_consistent(records, [(0, 2), (2, 5)], depths=[frame.depth_HW for frame in frames[:6]])


def test_some_frames_without_depth_is_an_error_naming_the_first(tmp_path, rendered):
    intrinsics, frames = rendered
    write_seven_scenes(tmp_path, as_sequences(frames[:6]), intrinsics)
    for index in (4, 2):
        (tmp_path / "seq-01" / f"frame-00000{index}.depth.png").unlink()
    with pytest.raises(DatasetError, match=r"seq-01/frame-000002\.depth\.png: no such image file.*every"):
        load_seven_scenes(tmp_path)


def test_png_and_jpg_in_one_sequence_is_an_error(tmp_path, rendered):
    intrinsics, frames = rendered
    write_seven_scenes(tmp_path, as_sequences(frames[:3]), intrinsics)
    (tmp_path / "seq-01" / "frame-000001.color.png").rename(tmp_path / "seq-01" / "frame-000001.color.jpg")
    with pytest.raises(DatasetError, match=r"seq-01: holds both \.color\.png and \.color\.jpg"):
        load_seven_scenes(tmp_path)


def test_flat_folder_is_one_recording_split_by_time_blocks(tmp_path, rendered):
    intrinsics, frames = rendered
    root = tmp_path / "flat"
    sequences = [SequenceToWrite("train", frames[:60]), SequenceToWrite("test", frames[60:])]
    folders = write_seven_scenes(root, sequences, intrinsics, color="jpg",
                                 intrinsics_file="camera-intrinsics.txt", flat=True)
    assert folders == [root] and not list(root.glob("*Split.txt"))
    assert detect_layouts(root) == ["7scenes"]
    train, test = load_frames(root, "train"), load_frames(root, "test")
    assert len(train) == 75 and len(test) == 25
    assert [r.frame_index for r in test] == list(range(75, 100))
    assert {r.sequence for r in train + test} == {"flat"}
    for record in train + test:
        expected = frames[record.frame_index].world_from_cam
        np.testing.assert_allclose(record.world_from_cam, expected, rtol=0, atol=1e-9)
    assert_consistent(test, [(0, 2), (20, 23)])
    with pytest.raises(DatasetError, match=r"flat: a folder of frames without \*Split\.txt .* split 'val'"):
        load_seven_scenes(root, "val")


@pytest.mark.parametrize(("text", "pattern"), [
    ("292.5 0 159.75\n0 292.5 119.75\n", r"camera-intrinsics\.txt: expected the 3x3 K as 3 lines"),
    ("292.5 0 159.75\n0 292.5 oops\n0 0 1\n", r"camera-intrinsics\.txt:2: not a number"),
    ("292.5 0 159.75\n0 292.5\n0 0 1\n", r"camera-intrinsics\.txt:2: expected 3 finite numbers"),
    ("292.5 1 159.75\n0 292.5 119.75\n0 0 1\n", r"camera-intrinsics\.txt: not a pinhole K without skew"),
])
def test_bad_intrinsics_txt_names_file_and_line(tmp_path, rendered, text, pattern):
    intrinsics, frames = rendered
    write_seven_scenes(tmp_path, as_sequences(frames[:2]), intrinsics,
                       intrinsics_file="camera-intrinsics.txt")
    (tmp_path / "camera-intrinsics.txt").write_text(text)
    with pytest.raises(DatasetError, match=pattern):
        load_seven_scenes(tmp_path)


@pytest.mark.skipif(not KITCHEN.is_dir(), reason="the shared 7-Scenes kitchen frames are not here")
def test_real_kitchen_frames_load_and_their_depth_agrees_between_nearby_frames():
    train, test = load_frames(KITCHEN, "train"), load_frames(KITCHEN, "test")
    assert len(train) == 375 and len(test) == 125
    assert [r.frame_index for r in test[:2]] == [75, 76] and test[-1].frame_index == 499
    assert train[0].image_path.name == "frame-000000.color.jpg"
    assert train[0].intrinsics == Intrinsics(320, 240, 292.5, 292.5, 159.75, 119.75)
    # Frames 4 files (0.27 s) apart. Kinect depth is noisy and occlusions differ between views, so the
    # median disagreement is a few millimetres (measured: 4.1 to 12.5 mm, median 6.1 mm over 15 such
    # pairs), not zero; the poses read with the other convention (rotation transposed) give 11-172 mm.
    pairs = [(i, i + 4) for i in range(0, 370, 50)]
    medians = assert_consistent(train, pairs, max_median_m=0.02, min_overlap=0.5)
    wrong = [dataclasses.replace(r, world_from_cam=_transposed_rotation(r.world_from_cam)) for r in train]
    wrong_medians, _ = depth_disagreement(wrong, pairs)
    assert np.median(wrong_medians) > 4 * np.median(medians), (medians, wrong_medians)


def _transposed_rotation(world_from_cam: np.ndarray) -> np.ndarray:
    """The pose read with the other convention (cam_from_world's rotation taken as world_from_cam's)."""
    out = world_from_cam.copy()
    out[:3, :3] = out[:3, :3].T
    return out
