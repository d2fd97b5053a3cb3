"""data/loading.py: the layout of a dataset folder is detected (7-Scenes with split files or flat,
Cambridge, TUM RGB-D), a folder with several needs the layout named, and an empty or missing folder
is a DatasetError naming it."""

from __future__ import annotations

import pytest
from dataset_support import INTRINSICS, make_sequences

from posenet_ros.data.cambridge import write_cambridge
from posenet_ros.data.frames import DatasetError
from posenet_ros.data.loading import detect_layouts, load_frames
from posenet_ros.data.seven_scenes import (
    write_seven_scenes,
)


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
    with pytest.raises(DatasetError, match=r"several layouts \(7scenes, cambridge\)"):
        load_frames(tmp_path)
    assert len(load_frames(tmp_path, layout="7scenes")) == 2
    assert len(load_frames(tmp_path, layout="cambridge")) == 3
