"""TUM RGB-D layout (Sturm et al., IROS 2012): reader and writer.

Layout (one recording per root folder, as the TUM RGB-D sequences unpack)::

    <root>/rgb.txt           lines "timestamp filename" (seconds; filename relative to root, e.g.
                             rgb/1305031102.175304.png); '#' starts a comment line
    <root>/depth.txt         the same for depth images (optional: without it the recording loads
                             RGB-only, `depth_path=None`)
    <root>/groundtruth.txt   lines "timestamp tx ty tz qx qy qz qw"
    <root>/rgb/*.png         colour images (8-bit, read as RGB)
    <root>/depth/*.png       uint16 depth, 5000 units per metre (`TUM_DEPTH_UNIT_M`); 0 = no depth
    <root>/camera.json       optional, ours: `Intrinsics.to_dict()` for every frame

Poses: a ground-truth line is the pose of the colour camera's optical centre in the world (motion
capture) frame: position (tx, ty, tz) in metres and the unit quaternion (qx, qy, qz, qw) -- scalar
*last* -- of the camera-to-world rotation, so `world_from_cam` = [R(q) | t]. The camera frame is
OpenCV's optical frame (x right, y down, z forward).

Association: the streams are not synchronised. Each colour frame takes the depth image and the
ground-truth pose with the nearest timestamp, each within `max_time_difference` seconds (0.02 s by
default, as TUM's associate.py); colour frames without either are left out (counted in one log
line), and a recording where no colour frame associates is a DatasetError naming the files.

Intrinsics: an explicit `intrinsics=` argument, else `<root>/camera.json`, else the TUM default
(fx = fy = 525, cx = 319.5, cy = 239.5 at 640x480, `TUM_DEFAULT_INTRINSICS`) with a warning, once
per file, naming the camera.json it looked for. (TUM's calibrated values per sensor, freiburg1/2/3,
differ and have distortion: write them to camera.json.)

Splits: a recording is split by time blocks (`data.splits.TEST_BLOCKS`) over its associated colour
frames in time order: split "test" is every fourth block of 25 frames, split "train" the rest.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from posenet_ros.core.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text
from posenet_ros.core.camera import Intrinsics
from posenet_ros.core.geometry import matrix_to_quat, quat_to_matrix
from posenet_ros.data.frames import (
    CAMERA_JSON,
    BadFrames,
    DatasetError,
    FrameRecord,
    SequenceToWrite,
    image_file_problem,
    read_camera_json,
    read_text_file,
)
from posenet_ros.data.splits import TEST_BLOCKS

logger = logging.getLogger(__name__)

TUM_DEPTH_UNIT_M = 1.0 / 5000.0
"""Metres per unit of a TUM depth image (the depth factor 5000)."""

TUM_DEFAULT_INTRINSICS = Intrinsics(width=640, height=480, fx=525.0, fy=525.0, cx=319.5, cy=239.5)
"""TUM's "ROS default" intrinsics, used when a recording has no camera.json."""

DEFAULT_MAX_TIME_DIFFERENCE = 0.02
"""Largest time difference (seconds) between associated colour, depth and ground truth."""

RGB_LIST, DEPTH_LIST, GROUNDTRUTH = "rgb.txt", "depth.txt", "groundtruth.txt"

_warned_default_intrinsics: set[Path] = set()


@dataclass(frozen=True)
class _Entry:
    """One line of a TUM list: its timestamp (s), the values after it, and where it is."""

    stamp: float
    values: list[str]
    line_number: int


def _read_list(path: Path, columns: int, what: str) -> list[_Entry]:
    """The entries of a TUM list file (`columns` fields after the timestamp), sorted by timestamp.
    DatasetError naming the file and line for a line that is not a timestamp and `columns` fields."""
    entries = []
    for line_number, line in enumerate(read_text_file(path, what).splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        if len(fields) != columns + 1:
            raise DatasetError(f"{path}:{line_number}: expected a timestamp and {columns} field(s), found "
                               f"{text!r}")
        try:
            stamp = float(fields[0])
        except ValueError as exc:
            raise DatasetError(f"{path}:{line_number}: the timestamp is not a number in {text!r}") from exc
        if not np.isfinite(stamp):
            raise DatasetError(f"{path}:{line_number}: the timestamp is not finite in {text!r}")
        entries.append(_Entry(stamp, fields[1:], line_number))
    if not entries:
        raise DatasetError(f"{path}: the file lists no {what} entries")
    entries.sort(key=lambda entry: entry.stamp)
    return entries


def _pose(entry: _Entry, path: Path) -> np.ndarray:
    """(4, 4) world_from_cam of a ground-truth line "tx ty tz qx qy qz qw" (quaternion normalised)."""
    try:
        values = np.array([float(value) for value in entry.values])
    except ValueError as exc:
        raise DatasetError(f"{path}:{entry.line_number}: not a number in {' '.join(entry.values)!r}") from exc
    norm = float(np.linalg.norm(values[3:]))
    if not np.all(np.isfinite(values)) or not 0.9 < norm < 1.1:
        raise DatasetError(f"{path}:{entry.line_number}: expected tx ty tz qx qy qz qw with a unit "
                           f"quaternion, found {' '.join(entry.values)!r} (|q| = {norm:.3g})")
    qx, qy, qz, qw = values[3:] / norm
    world_from_cam = np.eye(4)
    world_from_cam[:3, :3] = quat_to_matrix([qw, qx, qy, qz])
    world_from_cam[:3, 3] = values[:3]
    return world_from_cam


def _nearest(stamps: list[float], stamp: float, max_difference: float) -> int | None:
    """Index of the timestamp in sorted `stamps` nearest to `stamp`, if within `max_difference`."""
    right = bisect.bisect_left(stamps, stamp)
    candidates = [i for i in (right - 1, right) if 0 <= i < len(stamps)]
    best = min(candidates, key=lambda i: abs(stamps[i] - stamp))
    return best if abs(stamps[best] - stamp) <= max_difference else None


def _intrinsics(root: Path) -> Intrinsics:
    found = read_camera_json(root)
    if found is not None:
        return found
    path = (root / CAMERA_JSON).resolve()
    if path not in _warned_default_intrinsics:
        _warned_default_intrinsics.add(path)
        logger.warning("%s: no such file; using TUM's default intrinsics fx=fy=525 cx=319.5 cy=239.5 at "
                       "640x480 (write the sensor's calibration there)", path)
    return TUM_DEFAULT_INTRINSICS


def load_tum(
    root: str | Path,
    split: str = "train",
    *,
    intrinsics: Intrinsics | None = None,
    max_time_difference: float = DEFAULT_MAX_TIME_DIFFERENCE,
    skip_bad: bool = False,
    check_images: bool = False,
) -> list[FrameRecord]:
    """Read split "train" or "test" of a TUM RGB-D recording (module docstring for the convention).

    Returns records in time order, `sequence` the root folder's name, `frame_index` the colour
    frame's position in rgb.txt (sorted by timestamp), `depth_unit_m` 1/5000. A missing or
    unparseable list file, or one whose colour frames never associate, is a DatasetError naming the
    file and line; a missing image is one naming the image (with `skip_bad=True` such frames are
    skipped and counted). `check_images=True` also opens every image now (PIL verify).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder (FileNotFoundError)")
    if split not in ("train", "test"):
        raise DatasetError(f"{root}: a TUM RGB-D recording is split by time blocks into 'train' and 'test'; "
                           f"there is no split {split!r}")
    if max_time_difference <= 0:
        raise ValueError(f"max_time_difference must be positive, got {max_time_difference}")
    rgb_path, depth_list_path, truth_path = root / RGB_LIST, root / DEPTH_LIST, root / GROUNDTRUTH
    rgb = _read_list(rgb_path, 1, "colour image list")
    truth = _read_list(truth_path, 7, "ground-truth pose")
    depth = _read_list(depth_list_path, 1, "depth image list") if depth_list_path.is_file() else None
    truth_stamps = [entry.stamp for entry in truth]
    depth_stamps = [entry.stamp for entry in depth] if depth is not None else []
    associated = []  # (frame index, rgb entry, depth entry or None, truth entry)
    without_truth = without_depth = 0
    for index, entry in enumerate(rgb):
        pose_at = _nearest(truth_stamps, entry.stamp, max_time_difference)
        depth_at = _nearest(depth_stamps, entry.stamp, max_time_difference) if depth is not None else None
        if pose_at is None:
            without_truth += 1
        elif depth is not None and depth_at is None:
            without_depth += 1
        else:
            associated.append((index, entry, None if depth is None else depth[depth_at], truth[pose_at]))
    if not associated:
        first = rgb[0]
        others = f"{GROUNDTRUTH} ({truth[0].stamp:.6f}..{truth[-1].stamp:.6f} s)"
        if depth is not None:
            others += f" and {DEPTH_LIST} ({depth[0].stamp:.6f}..{depth[-1].stamp:.6f} s)"
        raise DatasetError(f"{rgb_path}:{first.line_number}: no colour frame ({rgb[0].stamp:.6f}.."
                           f"{rgb[-1].stamp:.6f} s) has a pose and depth within {max_time_difference} s in "
                           f"{others}; the timestamps never associate (raise max_time_difference?)")
    if without_truth or without_depth:
        logger.info("%s: %d of %d colour frames associate (%d without a ground-truth pose, %d without "
                    "depth within %g s)", root, len(associated), len(rgb), without_truth, without_depth,
                    max_time_difference)
    associated = [frame for position, frame in enumerate(associated)
                  if TEST_BLOCKS.held_out(position) == (split == "test")]
    if intrinsics is None:
        intrinsics = _intrinsics(root)
    sequence = root.resolve().name
    bad = BadFrames(skip_bad)
    records: list[FrameRecord] = []
    for index, colour, depth_entry, pose_entry in associated:
        world_from_cam = _pose(pose_entry, truth_path)
        image_path = root / colour.values[0]
        depth_path = None if depth_entry is None else root / depth_entry.values[0]
        problem = None
        for path in (image_path, depth_path):
            if path is None:
                continue
            problem = image_file_problem(path) if check_images else (
                None if path.is_file() else f"{path}: no such image file (FileNotFoundError)")
            if problem is not None:
                break
        if problem is not None:
            bad.reject(problem)
            continue
        records.append(FrameRecord(image_path=image_path, depth_path=depth_path,
                                   world_from_cam=world_from_cam, intrinsics=intrinsics, sequence=sequence,
                                   frame_index=index,
                                   depth_unit_m=TUM_DEPTH_UNIT_M))
    return bad.finish(records, rgb_path, logger)


# --- writing --------------------------------------------------------------------------------------


def _quaternion_xyzw(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a 3x3 rotation."""
    w, x, y, z = matrix_to_quat(rotation)
    return np.array([x, y, z, w])


def write_tum(root: str | Path, sequences: Sequence[SequenceToWrite], intrinsics: Intrinsics, *,
              depth: bool = True, start_s: float = 1305031102.0, rate_hz: float = 30.0,
              depth_offset_s: float = 0.004, truth_offset_s: float = -0.003) -> Path:
    """Write the frames of `sequences`, in order, as one TUM RGB-D recording in `root`; returns `root`.

    Colour frame i is stamped `start_s + i / rate_hz` (rgb/<stamp>.png), its depth (uint16, 5000 per
    metre, 0 = invalid; only with `depth`) `depth_offset_s` later and its ground truth
    `truth_offset_s` later, so that the reader must associate them; camera.json holds `intrinsics`.
    The sequences' split names are not written (the reader splits by time blocks). `root` must not
    already hold rgb.txt.
    """
    root = Path(root)
    if (root / RGB_LIST).exists():
        raise FileExistsError(f"{root} already holds a TUM recording ({RGB_LIST}); write into an empty or "
                              "new folder")
    rgb_lines = ["# color images\n# timestamp filename\n"]
    depth_lines = ["# depth maps\n# timestamp filename\n"]
    truth_lines = ["# ground truth trajectory\n# timestamp tx ty tz qx qy qz qw\n"]
    index = 0
    for sequence in sequences:
        for frame in sequence.frames:
            if frame.rgb_HW3.shape != (intrinsics.height, intrinsics.width, 3):
                raise ValueError(f"frame {index}: rgb must be {(intrinsics.height, intrinsics.width, 3)}, "
                                 f"got {frame.rgb_HW3.shape}")
            stamp = start_s + index / rate_hz
            name = f"rgb/{stamp:.6f}.png"
            bgr = cv2.cvtColor(np.ascontiguousarray(frame.rgb_HW3), cv2.COLOR_RGB2BGR)
            ok, png = cv2.imencode(".png", bgr)
            if not ok:
                raise ValueError(f"cannot encode {name} as PNG")
            atomic_write_bytes(root / name, png.tobytes())
            rgb_lines.append(f"{stamp:.6f} {name}\n")
            if depth:
                depth_stamp = stamp + depth_offset_s
                depth_name = f"depth/{depth_stamp:.6f}.png"
                metres = np.asarray(frame.depth_HW, dtype=np.float64)
                valid = np.isfinite(metres) & (metres > 0.0)
                units = np.where(valid, np.clip(np.round(np.where(valid, metres, 0.0) / TUM_DEPTH_UNIT_M),
                                                1, 65534), 0).astype(np.uint16)
                ok, png = cv2.imencode(".png", units)
                if not ok:
                    raise ValueError(f"cannot encode {depth_name} as PNG")
                atomic_write_bytes(root / depth_name, png.tobytes())
                depth_lines.append(f"{depth_stamp:.6f} {depth_name}\n")
            pose = np.asarray(frame.world_from_cam, dtype=np.float64)
            values = [*pose[:3, 3], *_quaternion_xyzw(pose[:3, :3])]
            numbers = " ".join(f"{value:.17g}" for value in values)
            truth_lines.append(f"{stamp + truth_offset_s:.6f} {numbers}\n")
            index += 1
    if index == 0:
        raise ValueError("no frames to write")
    atomic_write_text(root / RGB_LIST, "".join(rgb_lines))
    if depth:
        atomic_write_text(root / DEPTH_LIST, "".join(depth_lines))
    atomic_write_text(root / GROUNDTRUTH, "".join(truth_lines))
    atomic_write_json(root / CAMERA_JSON, intrinsics.to_dict())
    logger.info("wrote %d frame(s) in TUM RGB-D layout to %s", index, root)
    return root
