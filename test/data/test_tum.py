"""data/tum.py: a TUM RGB-D recording written from synthetic frames reads back with its poses, depth in
1/5000 m and association by nearest timestamp, and is geometrically consistent; the other quaternion
order or the millimetre depth unit break the geometry; bad files give one DatasetError naming the file
and line."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from geometry_check import as_sequences, assert_consistent, depth_disagreement, rendered_frames

from posenet_ros.core.camera import FrameTransform
from posenet_ros.data import tum
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.frames import DatasetError
from posenet_ros.data.images import record_depth
from posenet_ros.data.loading import detect_layouts, load_frames
from posenet_ros.data.tum import TUM_DEFAULT_INTRINSICS, TUM_DEPTH_UNIT_M, load_tum, write_tum

PAIRS = [(0, 2), (20, 23), (50, 52)]


@pytest.fixture(scope="module")
def rendered():
    """100 consecutive synthetic frames (64x48, exact depth, a few cm apart) and their intrinsics."""
    return rendered_frames(100)


@pytest.fixture
def recording(tmp_path, rendered):
    intrinsics, frames = rendered
    root = tmp_path / "rgbd_dataset_synthetic"
    write_tum(root, as_sequences(frames), intrinsics)
    return root, intrinsics, frames


def test_tum_round_trip_is_geometrically_consistent(recording):
    root, intrinsics, frames = recording
    assert detect_layouts(root) == ["tum"]
    train, test = load_frames(root, "train"), load_frames(root, "test")
    assert len(train) == 75 and len(test) == 25
    assert [r.frame_index for r in test] == list(range(75, 100))
    for record in train + test:
        assert record.sequence == "rgbd_dataset_synthetic" and record.intrinsics == intrinsics
        assert record.depth_unit_m == TUM_DEPTH_UNIT_M == 1 / 5000
        frame = frames[record.frame_index]
        np.testing.assert_allclose(record.world_from_cam, frame.world_from_cam, rtol=0, atol=1e-9)
    depth = record_depth(train[7], intrinsics)
    expected = frames[7].depth_HW
    np.testing.assert_array_equal(depth > 0, expected > 0)
    np.testing.assert_allclose(depth, expected, rtol=0, atol=0.5 / 5000 + 1e-6)
    assert_consistent(train, PAIRS)
    item = PoseDataset(train, FrameTransform(resize=None))[3]
    np.testing.assert_allclose(item["depth"][0].numpy(), frames[3].depth_HW, atol=0.5 / 5000 + 1e-6)


def test_association_takes_the_nearest_timestamps_within_the_limit(tmp_path, rendered):
    intrinsics, frames = rendered
    root = tmp_path / "rec"
    # Depth 12 ms after its colour frame, the next colour frame 33 ms later: nearest is its own.
    write_tum(root, as_sequences(frames[:10]), intrinsics, depth_offset_s=0.012, truth_offset_s=-0.015)
    records = load_tum(root)
    assert [r.frame_index for r in records] == list(range(10))
    assert [r.depth_path.name for r in records[:2]] == ["1305031102.012000.png", "1305031102.045333.png"]
    with pytest.raises(DatasetError, match=r"rgb\.txt:3: no colour frame .* within 0\.01 s .*never"):
        load_tum(root, max_time_difference=0.01)
    # Ground truth that starts late (at frame 5) leaves the first colour frames out: frame 4's nearest
    # pose is 18 ms away.
    lines = (root / "groundtruth.txt").read_text().splitlines(keepends=True)
    (root / "groundtruth.txt").write_text("".join(lines[:2] + lines[7:]))
    assert [r.frame_index for r in load_tum(root, max_time_difference=0.016)] == list(range(5, 10))


def test_rgb_only_recording_loads_without_depth(tmp_path, rendered):
    intrinsics, frames = rendered
    write_tum(tmp_path, as_sequences(frames[:8]), intrinsics, depth=False)
    records = load_tum(tmp_path)
    assert len(records) == 8 and all(r.depth_path is None for r in records)
    assert_consistent(records, [(0, 2), (3, 6)], depths=[frame.depth_HW for frame in frames[:8]])


def test_quaternions_read_in_the_other_order_break_the_geometry(recording):
    root, _, _ = recording
    path = root / "groundtruth.txt"
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            lines.append(line)
            continue
        stamp, tx, ty, tz, qx, qy, qz, qw = line.split()
        lines.append(" ".join([stamp, tx, ty, tz, qw, qx, qy, qz]))  # w first, as a wxyz writer would
    path.write_text("\n".join(lines) + "\n")
    medians, _ = depth_disagreement(load_tum(root), PAIRS)
    assert min(medians) > 0.05, medians


def test_depth_read_as_millimetres_breaks_the_geometry(recording):
    root, _, _ = recording
    records = [dataclasses.replace(r, depth_unit_m=0.001) for r in load_tum(root)]
    medians, _ = depth_disagreement(records, PAIRS)
    assert min(medians) > 0.05, medians


def test_default_intrinsics_warn_once_naming_the_file(recording, caplog, monkeypatch):
    root, _, _ = recording
    (root / "camera.json").unlink()
    monkeypatch.setattr(tum, "_warned_default_intrinsics", set())
    with caplog.at_level(logging.WARNING):
        records = load_tum(root)
        load_tum(root, "test")
    assert records[0].intrinsics == TUM_DEFAULT_INTRINSICS
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "camera.json: no such file" in warnings[0] and "525" in warnings[0]


@pytest.mark.parametrize(("name", "edit", "pattern"), [
    ("rgb.txt", lambda lines: [*lines[:3], "1305031102.1 rgb/a.png extra", *lines[3:]],
     r"rgb\.txt:4: expected a timestamp and 1 field"),
    ("depth.txt", lambda lines: [*lines[:2], "yesterday depth/x.png", *lines[2:]],
     r"depth\.txt:3: the timestamp is not a number"),
    ("groundtruth.txt", lambda lines: [*lines[:2], "1305031102.0 1 2 3 0 0 0", *lines[3:]],
     r"groundtruth\.txt:3: expected a timestamp and 7 field"),
    ("groundtruth.txt", lambda lines: [*lines[:2], "1305031101.997 1 2 3 0 0 0 0", *lines[3:]],
     r"groundtruth\.txt:3: expected tx ty tz qx qy qz qw with a unit quaternion"),
    ("groundtruth.txt", lambda lines: lines[:2] + [f"{9e9 + i} 0 0 0 0 0 0 1" for i in range(3)],
     r"rgb\.txt:3: no colour frame .* never associate"),
    ("rgb.txt", lambda lines: ["# nothing"], r"rgb\.txt: the file lists no colour image list entries"),
])
def test_bad_lists_name_file_and_line(recording, name, edit, pattern):
    root, _, _ = recording
    path = root / name
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(DatasetError, match=pattern):
        load_tum(root)


def test_missing_files(recording):
    root, _, _ = recording
    (root / "groundtruth.txt").unlink()
    with pytest.raises(DatasetError, match=r"groundtruth\.txt: no such ground-truth pose \(FileNotFound"):
        load_tum(root)


def test_missing_image_names_it_and_skip_bad_counts_it(recording):
    root, _, _ = recording
    missing = sorted((root / "rgb").iterdir())[4]
    missing.unlink()
    with pytest.raises(DatasetError, match=rf"rgb/{missing.name}: no such image file"):
        load_tum(root)
    assert len(load_tum(root, skip_bad=True)) == 74
    with pytest.raises(DatasetError, match="no split 'val'"):
        load_tum(root, "val")
