"""Fixtures of the dataset tests: a tiny 7-Scenes and a tiny Cambridge dataset (two training sequences
and a test sequence of four random frames each), written in tmp_path by the layout writers."""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_support import INTRINSICS, make_sequences

from posenet_ros.data.cambridge import write_cambridge
from posenet_ros.data.frames import RenderedFrame
from posenet_ros.data.seven_scenes import write_seven_scenes


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
