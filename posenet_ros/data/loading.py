"""Pick the reader for a dataset folder from the files in it: 7-Scenes or Cambridge Landmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posenet_ros.data.cambridge import load_cambridge
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.data.seven_scenes import load_seven_scenes

LAYOUTS = ("7scenes", "cambridge")


def detect_layouts(root: str | Path) -> list[str]:
    """Layouts found in `root`: '7scenes' if any `*Split.txt`, 'cambridge' if any `dataset_*.txt`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder (FileNotFoundError)")
    found = []
    if any(root.glob("*Split.txt")):
        found.append("7scenes")
    if any(root.glob("dataset_*.txt")):
        found.append("cambridge")
    return found


def load_frames(root: str | Path, split: str = "train", *, layout: str | None = None,
                **kwargs: Any) -> list[FrameRecord]:
    """Read one split of the dataset in `root`, detecting its layout unless `layout` is given.

    `kwargs` go to `load_seven_scenes` / `load_cambridge` (intrinsics, skip_bad, check_images).
    A folder holding neither layout, or both without `layout=`, is a DatasetError naming it.
    """
    if layout is None:
        found = detect_layouts(root)
        if not found:
            raise DatasetError(f"{root}: not a dataset folder: no *Split.txt (7-Scenes) and no "
                               "dataset_*.txt (Cambridge Landmarks)")
        if len(found) > 1:
            raise DatasetError(f"{root}: holds both 7-Scenes and Cambridge Landmarks files; "
                               f"pass layout= one of {LAYOUTS}")
        layout = found[0]
    if layout == "7scenes":
        return load_seven_scenes(root, split, **kwargs)
    if layout == "cambridge":
        return load_cambridge(root, split, **kwargs)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
