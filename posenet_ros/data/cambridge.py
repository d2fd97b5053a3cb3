"""Cambridge Landmarks layout: reader and writer.

Layout (one scene per root folder)::

    <root>/dataset_train.txt, dataset_test.txt   frame lists (a split named S is `dataset_<S>.txt`)
    <root>/seqN/frameNNNNN.png                    colour images; frames are numbered from 1
    <root>/camera.json                            optional, ours: `Intrinsics.to_dict()`

A frame list starts with 3 header lines::

    Visual Landmark Dataset V1
    ImageFile, Camera Position [X Y Z W P Q R]
    <blank>

followed by one line per frame: `seqN/frameNNNNN.png X Y Z W P Q R`.

Pose convention (the dataset does not document it; this is how it was made and how it is used):
  * X Y Z is the camera centre C in world coordinates (metres, up to the SfM scale).
  * W P Q R is the unit quaternion (w, x, y, z) of the *world-to-camera* rotation R_cam_from_world.
  * The camera frame is x right, y down, z forward, so x_cam = R (x_world - C), and
    world_from_cam = [R^T | C; 0 0 0 1].
  Reasoning: the poses were exported from the VisualSFM reconstruction shipped with each scene
  (reconstruction.nvm). An NVM camera line is `<file> <focal> <qw qx qy qz> <Cx Cy Cz> <k1> 0`,
  where the quaternion is the rotation R of x_cam = R (X - C) and C is the camera centre; the
  numbers in dataset_*.txt are those of the NVM for the same image. Public pipelines that check
  their poses against the SfM points read the file the same way, e.g. DSAC* / ACE
  (datasets/setup_cambridge.py): R = quat2mat(W P Q R), t = -R C, and [R | t] projects the NVM's
  3D points into the image, then world_from_cam is its inverse. A reading of the quaternion as
  camera-to-world would put the SfM points behind or beside the cameras.

Intrinsics: `<root>/camera.json` if present; an explicit `intrinsics=` argument overrides it; else
None. Real Cambridge Landmarks has no single camera model: the NVM holds one focal length per image
(and a radial distortion), so write a camera.json (e.g. the median focal length at the image size
used, principal point at the centre) if a method needs K; PoseNet itself needs none.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
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

logger = logging.getLogger(__name__)

HEADER_LINES = ("Visual Landmark Dataset V1", "ImageFile, Camera Position [X Y Z W P Q R]", "")
"""The 3 lines that start every Cambridge Landmarks frame list."""

_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")
_FRAME_NUMBER = re.compile(r"(\d+)")


def split_file_name(split: str) -> str:
    """File listing the frames of split `split`: 'train' -> 'dataset_train.txt'."""
    if not _SPLIT_NAME.fullmatch(split):
        raise ValueError(f"split name {split!r} must be letters, digits or '_'")
    return f"dataset_{split}.txt"


def frame_file_name(sequence_number: int, frame_number: int) -> str:
    """Relative image path of a frame: (1, 1) -> 'seq1/frame00001.png' (both numbered from 1)."""
    return f"seq{sequence_number}/frame{frame_number:05d}.png"


def pose_to_world_from_cam(position_xyz: np.ndarray, quat_wxyz: np.ndarray) -> np.ndarray:
    """Cambridge (camera centre C, quaternion of R_cam_from_world) -> world_from_cam (4, 4) float64.

    The quaternion need not be unit length; it must have a finite, non-zero norm.
    """
    quat = np.asarray(quat_wxyz, dtype=np.float64)
    norm = float(np.linalg.norm(quat))
    if not math.isfinite(norm) or norm < 1e-12:
        raise ValueError(f"quaternion {quat.tolist()} has norm {norm}")
    cam_from_world_rotation = quat_to_matrix(quat / norm)
    world_from_cam = np.eye(4)
    world_from_cam[:3, :3] = cam_from_world_rotation.T
    world_from_cam[:3, 3] = np.asarray(position_xyz, dtype=np.float64)
    return world_from_cam


def world_from_cam_to_pose(world_from_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """world_from_cam (4, 4) -> (camera centre xyz, quaternion wxyz of R_cam_from_world with w >= 0)."""
    matrix = np.asarray(world_from_cam, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"world_from_cam must be 4x4, got shape {matrix.shape}")
    return matrix[:3, 3].copy(), matrix_to_quat(matrix[:3, :3].T)


def _is_data_line(line: str) -> bool:
    fields = line.split()
    if len(fields) != 8:
        return False
    try:
        [float(field) for field in fields[1:]]
    except ValueError:
        return False
    return True


def _parse_line(line: str, where: str) -> tuple[str, np.ndarray]:
    """One frame line -> (relative image path, 7 numbers). Raises DatasetError mentioning `where`."""
    fields = line.split()
    if len(fields) != 8:
        raise DatasetError(f"{where}: expected 8 fields 'image X Y Z W P Q R', found {len(fields)}")
    try:
        values = np.array([float(field) for field in fields[1:]], dtype=np.float64)
    except ValueError as exc:
        raise DatasetError(f"{where}: not a number in {line.strip()!r}") from exc
    if not np.all(np.isfinite(values)):
        raise DatasetError(f"{where}: pose holds NaN or inf: {line.strip()!r}")
    if np.linalg.norm(values[3:]) < 1e-12:
        raise DatasetError(f"{where}: quaternion has zero norm: {line.strip()!r}")
    return fields[0], values


def _sequence_and_index(relative: str, fallback_index: int) -> tuple[str, int]:
    """'seq1/frame00007.png' -> ('seq1', 7); without digits in the name, the line's order is the index."""
    path = Path(relative)
    sequence = path.parent.as_posix() if path.parent.as_posix() != "." else ""
    numbers = _FRAME_NUMBER.findall(path.stem)
    return sequence, int(numbers[-1]) if numbers else fallback_index


def load_cambridge(
    root: str | Path,
    split: str = "train",
    *,
    intrinsics: Intrinsics | None = None,
    skip_bad: bool = False,
    check_images: bool = False,
) -> list[FrameRecord]:
    """Read the frames of one split of a Cambridge-Landmarks-layout scene, in file order.

    `sequence` is the image's folder ('seq1'), `frame_index` the number in its file name (from 1),
    `depth_path` None, `intrinsics` as described in the module docstring (may be None). A line with
    the wrong number of fields, NaN/inf or a zero quaternion, or a missing image raises DatasetError
    naming the file and line; with `skip_bad=True` such frames are skipped and reported in one
    warning. `check_images=True` also opens every image now (PIL verify).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder (FileNotFoundError)")
    if intrinsics is None:
        intrinsics = read_camera_json(root)
    split_path = root / split_file_name(split)
    lines = read_text_file(split_path, "split file").splitlines()
    for line_number, line in enumerate(lines[: len(HEADER_LINES)], start=1):
        if _is_data_line(line):
            raise DatasetError(f"{split_path}:{line_number}: frame line inside the 3 header lines; "
                               f"the file must start with {HEADER_LINES[0]!r}, {HEADER_LINES[1]!r}, ''")
    bad = BadFrames(skip_bad)
    records: list[FrameRecord] = []
    for line_number, line in enumerate(lines, start=1):
        if line_number <= len(HEADER_LINES) or not line.strip():
            continue
        where = f"{split_path}:{line_number}"
        try:
            relative, values = _parse_line(line, where)
        except DatasetError as exc:
            bad.reject(str(exc))
            continue
        image_path = root / relative
        problem = image_file_problem(image_path) if check_images else None
        if not check_images and not image_path.is_file():
            problem = f"{image_path}: no such image file (FileNotFoundError)"
        if problem is not None:
            bad.reject(f"{problem} (listed at {where})")
            continue
        sequence, frame_index = _sequence_and_index(relative, line_number - len(HEADER_LINES))
        records.append(FrameRecord(image_path=image_path, depth_path=None,
                                   world_from_cam=pose_to_world_from_cam(values[:3], values[3:]),
                                   intrinsics=intrinsics, sequence=sequence, frame_index=frame_index))
    return bad.finish(records, split_path, logger)


def write_cambridge(root: str | Path, sequences: Sequence[SequenceToWrite],
                    intrinsics: Intrinsics) -> list[Path]:
    """Write `sequences` as a Cambridge-Landmarks-layout scene under `root` (images only, PNG).

    Sequences are numbered seq1..seqN in the order given and frames from 1; frames are streamed.
    Each split name gets a `dataset_<split>.txt` in the convention `load_cambridge` reads (camera
    centre, quaternion of R_cam_from_world, full precision), and camera.json holds `intrinsics`.
    Depth is not written. `root` must not already hold Cambridge files (seq* folders or
    dataset_*.txt). Returns the sequence folders written.
    """
    root = Path(root)
    sequences = list(sequences)
    if root.is_dir():
        stale = sorted(root.glob("dataset_*.txt")) + sorted(p for p in root.glob("seq*")
                                                           if re.fullmatch(r"seq\d+", p.name))
        if stale:
            raise FileExistsError(f"{root} already holds a Cambridge layout ({stale[0].name}); "
                                  "write into an empty or new folder")
    lines: dict[str, list[str]] = {split_file_name(sequence.split): [] for sequence in sequences}
    folders = []
    for number, sequence in enumerate(sequences, start=1):
        count = 0
        for frame_number, frame in enumerate(sequence.frames, start=1):
            relative = frame_file_name(number, frame_number)
            rgb = frame.rgb_HW3
            if rgb.shape != (intrinsics.height, intrinsics.width, 3) or rgb.dtype != np.uint8:
                raise ValueError(f"{relative}: rgb must be uint8 {(intrinsics.height, intrinsics.width, 3)},"
                                 f" got {rgb.dtype} {rgb.shape}")
            ok, buffer = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
            if not ok:
                raise ValueError(f"cannot encode {relative} as PNG")
            atomic_write_bytes(root / relative, buffer.tobytes())
            position, quat = world_from_cam_to_pose(frame.world_from_cam)
            numbers = " ".join(f"{value:.17g}" for value in (*position, *quat))
            lines[split_file_name(sequence.split)].append(f"{relative} {numbers}")
            count += 1
        if count == 0:
            raise ValueError(f"sequence {number} (split {sequence.split!r}) has no frames")
        folders.append(root / f"seq{number}")
    for file_name, frame_lines in lines.items():
        atomic_write_text(root / file_name, "\n".join([*HEADER_LINES, *frame_lines]) + "\n")
    atomic_write_json(root / CAMERA_JSON, intrinsics.to_dict())
    logger.info("wrote %d sequence(s) in Cambridge Landmarks layout to %s", len(folders), root)
    return folders
