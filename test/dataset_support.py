"""Shared by the dataset tests (data/): tiny random frames and sequences for the layout writers
(`write_seven_scenes`, `write_cambridge`), and a file truncation. Fixtures writing such datasets are
in data/conftest.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import transforms3d.quaternions as tq

from posenet_ros.core.camera import Intrinsics
from posenet_ros.data.frames import RenderedFrame, SequenceToWrite

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


def truncate(path: Path) -> None:
    """Cut the file at `path` to half its size."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
