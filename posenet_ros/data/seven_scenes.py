"""Microsoft 7-Scenes layout: reader and writer.

Layout (one scene per root folder)::

    <root>/TrainSplit.txt, TestSplit.txt    lines "sequence1", "sequence2", ... -> folders seq-01, seq-02
    <root>/seq-XX/frame-NNNNNN.color.png    colour image, an ordinary 8-bit PNG (read as RGB)
    <root>/seq-XX/frame-NNNNNN.depth.png    uint16 depth in millimetres; 0 and 65535 mean "no depth"
    <root>/seq-XX/frame-NNNNNN.pose.txt     4x4 camera-to-world matrix (`world_from_cam`), metres,
                                            4 rows of 4 whitespace-separated numbers
    <root>/camera.json                      optional, ours: `Intrinsics.to_dict()` for every frame

A split named S is listed in `<S.capitalize()>Split.txt`, so besides train and test a dataset may
hold other splits (the synthetic writer adds e.g. OutsideSplit.txt, BlurSplit.txt).

Poses: the file holds `world_from_cam` directly (x_world = M @ x_cam); the camera frame is x right,
y down, z forward. The loader checks that the rotation block is a rotation (||R^T R - I|| < 1e-2,
det R > 0, last row 0 0 0 1) and re-orthonormalises it with an SVD (the files are printed with about
7 significant digits).

Intrinsics: `<root>/camera.json` if present, else the values published with 7-Scenes
(fx = fy = 585, cx = 320, cy = 240 at 640x480); an explicit `intrinsics=` argument overrides both.

Caveat for real 7-Scenes data: the depth maps come from the Kinect's depth camera and are *not*
registered to the colour camera (a different sensor with its own intrinsics and a few centimetres
of baseline), so depth pixel (u, v) does not see the same point as colour pixel (u, v). The
published 585 px focal length is the depth camera's; DSAC*/ACE use 525 px for the colour images
(pass `intrinsics=` or a camera.json for that). Data written by `write_seven_scenes` (our synthetic
scenes) has depth registered to the colour image and exact intrinsics.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from posenet_ros.core.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text
from posenet_ros.core.camera import Intrinsics
from posenet_ros.data.frames import (
    CAMERA_JSON,
    BadFrames,
    DatasetError,
    FrameRecord,
    RenderedFrame,
    SequenceToWrite,
    image_file_problem,
    read_camera_json,
    read_text_file,
)

logger = logging.getLogger(__name__)

SEVEN_SCENES_INTRINSICS = Intrinsics(width=640, height=480, fx=585.0, fy=585.0, cx=320.0, cy=240.0)
"""Intrinsics published with 7-Scenes (those of the depth camera; see the module docstring)."""

DEPTH_INVALID_VALUES = (0, 65535)
"""Raw uint16 depth values that mean "no measurement"."""

_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")
_SEQUENCE_LINE = re.compile(r"sequence(\d+)", re.IGNORECASE)
_FRAME_FILE = re.compile(r"frame-(\d+)\.(color\.png|depth\.png|pose\.txt)")


def split_file_name(split: str) -> str:
    """File listing the sequences of split `split`: 'train' -> 'TrainSplit.txt'."""
    if not _SPLIT_NAME.fullmatch(split):
        raise ValueError(f"split name {split!r} must be letters, digits or '_'")
    return f"{split.capitalize()}Split.txt"


def sequence_folder_name(number: int) -> str:
    """Folder of sequence `number` (1-based): 1 -> 'seq-01'."""
    return f"seq-{number:02d}"


def frame_file_stem(frame_index: int) -> str:
    """Common prefix of a frame's files: 0 -> 'frame-000000'."""
    return f"frame-{frame_index:06d}"


# --- reading --------------------------------------------------------------------------------------


def read_pose_file(path: Path) -> np.ndarray:
    """Read and check a 4x4 `world_from_cam` pose file; returns float64 (4, 4), rotation re-orthonormalised.

    Raises DatasetError naming the file (and line) when it is missing or does not hold a rigid transform.
    """
    text = read_text_file(path, "pose file")
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            values = [float(field) for field in fields]
        except ValueError as exc:
            raise DatasetError(f"{path}:{line_number}: not a number in {line.strip()!r}") from exc
        if len(values) != 4:
            raise DatasetError(f"{path}:{line_number}: expected 4 numbers, found {len(values)}")
        if not np.all(np.isfinite(values)):
            raise DatasetError(f"{path}:{line_number}: pose holds NaN or inf: {line.strip()!r}")
        rows.append(values)
    if len(rows) != 4:
        raise DatasetError(f"{path}: expected 4 rows of 4 numbers, found {len(rows)} rows")
    matrix = np.array(rows, dtype=np.float64)
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise DatasetError(f"{path}:4: last row must be 0 0 0 1, found {matrix[3].tolist()}")
    rotation = matrix[:3, :3]
    error = float(np.linalg.norm(rotation.T @ rotation - np.eye(3)))
    if error >= 1e-2 or np.linalg.det(rotation) <= 0.0:
        raise DatasetError(f"{path}: the 3x3 block is not a rotation (||R^T R - I|| = {error:.3g}, "
                           f"det = {np.linalg.det(rotation):.3g})")
    u, _, vt = np.linalg.svd(rotation)
    matrix[:3, :3] = u @ vt
    matrix[3] = [0.0, 0.0, 0.0, 1.0]
    return matrix


def read_split_file(path: Path) -> list[str]:
    """Sequence folder names listed in a split file: 'sequence1' -> 'seq-01'. Blank lines are ignored."""
    text = read_text_file(path, "split file")
    folders = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _SEQUENCE_LINE.fullmatch(line.strip())
        if match is None:
            raise DatasetError(f"{path}:{line_number}: expected 'sequenceN', found {line.strip()!r}")
        folders.append(sequence_folder_name(int(match.group(1))))
    if not folders:
        raise DatasetError(f"{path}: the split lists no sequences")
    return folders


def _frame_indices(folder: Path) -> list[int]:
    """Indices of all frames with at least one file (colour, depth or pose) in `folder`, sorted."""
    indices = set()
    for child in folder.iterdir():
        match = _FRAME_FILE.fullmatch(child.name)
        if match is not None:
            indices.add(int(match.group(1)))
    return sorted(indices)


def load_seven_scenes(
    root: str | Path,
    split: str = "train",
    *,
    intrinsics: Intrinsics | None = None,
    skip_bad: bool = False,
    check_images: bool = False,
) -> list[FrameRecord]:
    """Read the frames of one split of a 7-Scenes-layout scene.

    Returns records sorted by sequence (split-file order) then frame index, with `sequence` the
    folder name ('seq-01') and `frame_index` the NNNNNN of the file names. A missing or invalid
    pose, image or depth file raises DatasetError naming the file; with `skip_bad=True` such frames
    are skipped and reported in one warning. `check_images=True` also opens every colour and depth
    file now (PIL verify), so truncated files count as bad frames here rather than failing later.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder (FileNotFoundError)")
    if intrinsics is None:
        intrinsics = read_camera_json(root) or SEVEN_SCENES_INTRINSICS
    split_path = root / split_file_name(split)
    bad = BadFrames(skip_bad)
    records: list[FrameRecord] = []
    for folder_name in read_split_file(split_path):
        folder = root / folder_name
        if not folder.is_dir():
            raise DatasetError(f"{folder}: sequence folder listed in {split_path.name} does not exist "
                               "(FileNotFoundError)")
        indices = _frame_indices(folder)
        if not indices:
            raise DatasetError(f"{folder}: no frame-NNNNNN.color.png / .pose.txt files")
        for index in indices:
            stem = frame_file_stem(index)
            image_path = folder / f"{stem}.color.png"
            depth_path = folder / f"{stem}.depth.png"
            pose_path = folder / f"{stem}.pose.txt"
            try:
                world_from_cam = read_pose_file(pose_path)
            except DatasetError as exc:
                bad.reject(str(exc))
                continue
            problem = None
            for path in (image_path, depth_path):
                if check_images:
                    problem = image_file_problem(path)
                elif not path.is_file():
                    problem = f"{path}: no such image file (FileNotFoundError)"
                if problem is not None:
                    break
            if problem is not None:
                bad.reject(problem)
                continue
            records.append(FrameRecord(image_path=image_path, depth_path=depth_path,
                                       world_from_cam=world_from_cam, intrinsics=intrinsics,
                                       sequence=folder_name, frame_index=index))
    return bad.finish(records, split_path, logger)


# --- writing --------------------------------------------------------------------------------------


def depth_to_millimetres(depth_HW: np.ndarray) -> np.ndarray:
    """Metres (0, NaN, inf or < 0 = invalid) -> uint16 millimetres, rounded, valid clipped to 1..65534."""
    depth = np.asarray(depth_HW, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0.0)
    millimetres = np.clip(np.round(np.where(valid, depth, 0.0) * 1000.0), 1, 65534)
    return np.where(valid, millimetres, 0).astype(np.uint16)


def format_pose(world_from_cam: np.ndarray) -> str:
    """A 4x4 matrix as 4 lines of 4 numbers with full float64 precision (%.17g)."""
    matrix = np.asarray(world_from_cam, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"world_from_cam must be 4x4, got shape {matrix.shape}")
    return "".join(" ".join(f"{value:.17g}" for value in row) + "\n" for row in matrix)


def encode_png(image: np.ndarray, path: Path) -> bytes:
    """PNG bytes of an 8-bit BGR/grey or 16-bit grey image (cv2 channel order)."""
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode {path.name} as PNG (shape {image.shape}, dtype {image.dtype})")
    return buffer.tobytes()


def _check_frame(frame: RenderedFrame, intrinsics: Intrinsics, where: str) -> None:
    expected = (intrinsics.height, intrinsics.width)
    if frame.rgb_HW3.shape != (*expected, 3) or frame.rgb_HW3.dtype != np.uint8:
        raise ValueError(f"{where}: rgb must be uint8 {(*expected, 3)}, got {frame.rgb_HW3.dtype} "
                         f"{frame.rgb_HW3.shape}")
    if frame.depth_HW is not None and frame.depth_HW.shape != expected:
        raise ValueError(f"{where}: depth must be {expected}, got {frame.depth_HW.shape}")


def write_seven_scenes(root: str | Path, sequences: Sequence[SequenceToWrite],
                       intrinsics: Intrinsics) -> list[Path]:
    """Write `sequences` as a 7-Scenes-layout scene under `root`; returns the sequence folders written.

    Sequences are numbered 1..N in the order given (folders seq-01, seq-02, ...), frames 0.. within
    each; frames are streamed (a sequence's `frames` may be a generator). Every split name gets a
    `<Split>Split.txt` listing its sequences, and camera.json holds `intrinsics`. Poses are written
    with full precision, depth as uint16 millimetres (rounded; 0 = invalid). `root` must not already
    hold 7-Scenes files (seq-* folders or *Split.txt), so stale frames never mix with new ones.
    """
    root = Path(root)
    sequences = list(sequences)
    if root.is_dir():
        stale = sorted(root.glob("seq-*")) + sorted(root.glob("*Split.txt"))
        if stale:
            raise FileExistsError(f"{root} already holds a 7-Scenes layout ({stale[0].name}); "
                                  "write into an empty or new folder")
    split_files = {sequence.split: split_file_name(sequence.split) for sequence in sequences}
    splits: dict[str, list[int]] = {split: [] for split in split_files}
    folders = []
    for number, sequence in enumerate(sequences, start=1):
        folder = root / sequence_folder_name(number)
        count = 0
        for index, frame in enumerate(sequence.frames):
            stem = frame_file_stem(index)
            _check_frame(frame, intrinsics, f"{folder}/{stem}")
            bgr = cv2.cvtColor(np.ascontiguousarray(frame.rgb_HW3), cv2.COLOR_RGB2BGR)
            color_path = folder / f"{stem}.color.png"
            atomic_write_bytes(color_path, encode_png(bgr, color_path))
            depth_path = folder / f"{stem}.depth.png"
            depth = frame.depth_HW if frame.depth_HW is not None else np.zeros(bgr.shape[:2], np.float32)
            atomic_write_bytes(depth_path, encode_png(depth_to_millimetres(depth), depth_path))
            atomic_write_text(folder / f"{stem}.pose.txt", format_pose(frame.world_from_cam))
            count += 1
        if count == 0:
            raise ValueError(f"sequence {number} (split {sequence.split!r}) has no frames")
        splits[sequence.split].append(number)
        folders.append(folder)
    for split, numbers in splits.items():
        atomic_write_text(root / split_files[split], "".join(f"sequence{n}\n" for n in numbers))
    atomic_write_json(root / CAMERA_JSON, intrinsics.to_dict())
    logger.info("wrote %d sequence(s) in 7-Scenes layout to %s", len(folders), root)
    return folders
