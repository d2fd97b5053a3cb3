"""Records shared by every dataset layout: pinhole intrinsics, one frame on disk or in a rosbag2,
rendered frames.

Conventions: `world_from_cam` is the 4x4 camera-to-world transform (metres); the camera frame is
OpenCV's (x right, y down, z forward). Depth is the z coordinate in the camera frame, in metres.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

from posenet_ros.core.camera import Intrinsics


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or holds invalid values; the message names the file."""


@dataclass(frozen=True)
class BagMessage:
    """Where one message of a rosbag2 is, so that a frame can be read from the bag when needed.

    `bag`: the rosbag2 (folder with metadata.yaml, or .mcap / .db3 file); `topic`; `log_time_ns`: the
    time the bag indexes the message by (ns since the epoch); `stamp_ns`: its header stamp (ns), which
    tells it from other messages of the topic logged at the same time.
    """

    bag: Path
    topic: str
    log_time_ns: int
    stamp_ns: int

    def __str__(self) -> str:
        return f"{self.bag} {self.topic} stamp {self.stamp_ns} ns"


@dataclass(frozen=True)
class FrameRecord:
    """One frame of a dataset; images are read lazily by the torch dataset (`read_frame_rgb`).

    `image_path` / `depth_path` are image files for the folder layouts, or a `BagMessage` for a frame
    read from a rosbag2 (`bag_dataset.py`). `intrinsics` may be for another size of the same image
    (scaled to the image's size when read) and may hold lens distortion (undistorted when read).
    `depth_unit_m`: metres per unit of an integer depth file (7-Scenes 0.001, TUM 1/5000).
    `metric`: whether poses are in metres; False for captures of arbitrary scale (COLMAP, NeRF), whose
    metric defaults then come from the data. `depth_intrinsics`: the depth sensor's own camera when the
    depth images are not registered to the colour images (read into the colour camera by
    `images.record_depth`); None: registered.
    """

    image_path: Path | BagMessage
    depth_path: Path | BagMessage | None
    world_from_cam: np.ndarray  # (4, 4) float64, metres (or the capture's unit when not `metric`)
    intrinsics: Intrinsics | None
    sequence: str
    frame_index: int
    depth_unit_m: float = 0.001
    metric: bool = True
    depth_intrinsics: Intrinsics | None = None


@dataclass
class RenderedFrame:
    """A frame held in memory: what the synthetic renderer produces and the layout writers take."""

    rgb_HW3: np.ndarray  # uint8
    depth_HW: np.ndarray  # float32 metres, 0 where invalid
    world_from_cam: np.ndarray  # (4, 4) float64


@dataclass
class SequenceToWrite:
    """A sequence for a layout writer: its split name ('train', 'test', 'outside', ...) and frames.

    `frames` may be a generator, so a writer streams frames to disk as they are rendered.
    """

    split: str
    frames: Iterable[RenderedFrame] = field(default_factory=list)


# --- helpers shared by the layout readers and writers -------------------------------------------

CAMERA_JSON = "camera.json"
"""Optional file in a dataset root holding `Intrinsics.to_dict()` for every frame of the dataset."""


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of a dataset file; DatasetError naming the file (and `what` it is) otherwise."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: no such {what} (FileNotFoundError)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read {what} ({exc})") from exc


def read_camera_json(root: Path) -> Intrinsics | None:
    """The intrinsics in `<root>/camera.json`, or None when there is no such file."""
    return _camera_json_entry(root, depth=False)


def read_depth_camera_json(root: Path) -> Intrinsics | None:
    """The depth sensor's intrinsics under the key "depth" of `<root>/camera.json` (width height fx fy
    cx cy, pinhole), for depth images that are not registered to the colour images; None when there is
    no such file or key."""
    return _camera_json_entry(root, depth=True)


def _camera_json_entry(root: Path, depth: bool) -> Intrinsics | None:
    """The colour camera of `<root>/camera.json`, or with `depth` its "depth" entry; checked."""
    path = Path(root) / CAMERA_JSON
    if not path.is_file():
        return None
    what = 'a valid "depth" camera' if depth else "a valid camera file"
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        if depth:
            values = values.get("depth")
            if values is None:
                return None
        intrinsics = Intrinsics.from_dict(values)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path}: not {what} ({exc}); expected keys width height fx fy cx cy") from exc
    numbers = (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy)
    if intrinsics.width <= 0 or intrinsics.height <= 0 or not np.all(np.isfinite(numbers)):
        raise DatasetError(f"{path}: invalid intrinsics {intrinsics}")
    if depth and intrinsics.distorted:
        raise DatasetError(f"{path}: the \"depth\" camera must be a pinhole camera, got {intrinsics}")
    return intrinsics


def image_file_problem(path: Path) -> str | None:
    """Why the image file at `path` cannot be read (missing, truncated, corrupt), or None if it is fine.

    Uses PIL's `verify()`, which walks the file's chunks and checksums without decoding the pixels.
    """
    if not path.is_file():
        return f"{path}: no such file (FileNotFoundError)"
    try:
        with PIL.Image.open(path) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        return f"{path}: unreadable image ({type(exc).__name__}: {exc})"
    return None


class BadFrames:
    """Collects problems with single frames while a layout is read.

    With `skip=False` the first problem raises a DatasetError; with `skip=True` problems are recorded
    and `finish` logs one warning with their count and the first few reasons.
    """

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.reasons: list[str] = []

    def reject(self, reason: str) -> None:
        """Report a bad frame; raises DatasetError(reason) unless skipping."""
        if not self.skip:
            raise DatasetError(reason)
        self.reasons.append(reason)

    def finish(self, records: list[FrameRecord], source: Path, logger: logging.Logger) -> list[FrameRecord]:
        """Warn about skipped frames; an empty result is an error naming `source` (the split file)."""
        if self.reasons:
            shown = "; ".join(self.reasons[:3])
            more = f" (and {len(self.reasons) - 3} more)" if len(self.reasons) > 3 else ""
            logger.warning("%s: skipped %d bad frame(s): %s%s", source, len(self.reasons), shown, more)
        if not records:
            skipped = f" after skipping {len(self.reasons)} bad frame(s)" if self.reasons else ""
            raise DatasetError(f"{source}: the split has no frames{skipped}")
        return records
