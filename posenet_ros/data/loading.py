"""Pick the reader for a data root from what it is: a 7-Scenes (split files or flat), Cambridge
Landmarks, TUM RGB-D, COLMAP or NeRF folder, or a rosbag2 (`bag_dataset.py`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from posenet_ros.data.bag_dataset import load_bag_frames
from posenet_ros.data.cambridge import load_cambridge
from posenet_ros.data.colmap import has_model_files, load_colmap
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.data.nerf import load_nerf
from posenet_ros.data.seven_scenes import is_flat_layout, load_seven_scenes
from posenet_ros.data.splits import validation_split
from posenet_ros.data.tum import GROUNDTRUTH, RGB_LIST, load_tum
from posenet_ros.runtime.train_config import VALIDATION_BLOCKS_SPLIT, BagDataConfig, DataConfig

logger = logging.getLogger(__name__)

LAYOUTS = ("7scenes", "cambridge", "tum", "colmap", "nerf", "rosbag2")
BAG_SUFFIXES = (".mcap", ".db3")


def is_bag(root: str | Path) -> bool:
    """Whether `root` is a rosbag2: a folder holding metadata.yaml, or a .mcap or .db3 file."""
    root = Path(root)
    if root.is_dir():
        return (root / "metadata.yaml").is_file()
    return root.suffix in BAG_SUFFIXES and root.is_file()


def detect_layouts(root: str | Path) -> list[str]:
    """Layouts found in `root`: 'rosbag2' for a bag (`is_bag`); otherwise '7scenes' if any
    `*Split.txt` or frame-NNNNNN.pose.txt files directly in it (flat), 'cambridge' if any
    `dataset_*.txt`, 'tum' if rgb.txt and groundtruth.txt, 'colmap' if COLMAP model files are found
    (`colmap.has_model_files`), 'nerf' if any `transforms.json` / `transforms_*.json`."""
    root = Path(root)
    if is_bag(root):
        return ["rosbag2"]
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder (FileNotFoundError)")
    found = []
    if any(root.glob("*Split.txt")) or is_flat_layout(root):
        found.append("7scenes")
    if any(root.glob("dataset_*.txt")):
        found.append("cambridge")
    if (root / RGB_LIST).is_file() and (root / GROUNDTRUTH).is_file():
        found.append("tum")
    if has_model_files(root):
        found.append("colmap")
    if any(root.glob("transforms*.json")):
        found.append("nerf")
    return found


def load_frames(root: str | Path, split: str = "train", *, layout: str | None = None,
                bag: BagDataConfig | None = None, **kwargs: Any) -> list[FrameRecord]:
    """Read one split of the dataset in `root`, detecting its layout unless `layout` is given.

    A rosbag2 is read by `load_bag_frames` with the options `bag` (None: the defaults, every split
    the whole bag); `kwargs` go to the folder readers (`load_seven_scenes`, `load_cambridge`,
    `load_tum`, `load_colmap`, `load_nerf`: intrinsics, skip_bad, check_images; TUM also
    max_time_difference) and do not apply to a bag, whose frames without ground truth are always
    skipped and counted. A folder holding no layout, or several without `layout=`, is a DatasetError
    naming it.
    """
    if layout is None:
        found = detect_layouts(root)
        if not found:
            raise DatasetError(f"{root}: not a dataset folder: no *Split.txt or frame-*.pose.txt (7-Scenes), "
                               "no dataset_*.txt (Cambridge Landmarks), no rgb.txt + groundtruth.txt (TUM "
                               "RGB-D), no sparse/0/cameras+images (COLMAP), no transforms.json (NeRF) and "
                               "no metadata.yaml (rosbag2)")
        if len(found) > 1:
            raise DatasetError(f"{root}: holds the files of several layouts ({', '.join(found)}); "
                               f"pass layout= one of {LAYOUTS}")
        layout = found[0]
    if layout == "7scenes":
        return load_seven_scenes(root, split, **kwargs)
    if layout == "cambridge":
        return load_cambridge(root, split, **kwargs)
    if layout == "tum":
        return load_tum(root, split, **kwargs)
    if layout == "colmap":
        return load_colmap(root, split, **kwargs)
    if layout == "nerf":
        return load_nerf(root, split, **kwargs)
    if layout == "rosbag2":
        return load_bag_frames(root, split, bag)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def load_training_frames(root: str | Path, data: DataConfig, bag: BagDataConfig | None = None,
                         ) -> tuple[list[FrameRecord], list[FrameRecord]]:
    """(training frames, validation frames) as `data` (a training config's `data`) names them: with
    `val_split` "blocks", whole time blocks held out of the training split's own sequences
    (`splits.validation_split`) and the other frames; with "", all of the training split and no
    validation; otherwise the training split and the named split. What training and `calibrate` use."""
    records = load_frames(root, data.train_split, skip_bad=data.skip_bad, bag=bag)
    if data.val_split == VALIDATION_BLOCKS_SPLIT:
        kept, held = validation_split(records)
        if not held:
            logger.warning("%s: the training split (%d frames) is too short to hold out validation blocks",
                           root, len(records))
        return kept, held
    if data.val_split == "test":
        logger.warning("data.val_split='test': validating on the test split lets the test frames guide "
                       "the run; the default 'blocks' holds out frames of the training split instead")
    val = load_frames(root, data.val_split, skip_bad=data.skip_bad, bag=bag) if data.val_split else []
    return records, val
