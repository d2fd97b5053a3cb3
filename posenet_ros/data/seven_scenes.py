"""Microsoft 7-Scenes layout, as 7-Scenes publishes it and as users bring it: reader and writer.

Layout (one scene per root folder)::

    <root>/TrainSplit.txt, TestSplit.txt    lines "sequence1", "sequence2", ... -> folders seq-01, seq-02
    <root>/seq-XX/frame-NNNNNN.color.png    colour image, an ordinary 8-bit PNG (read as RGB), or
    <root>/seq-XX/frame-NNNNNN.color.jpg    a JPEG (either, per sequence folder; not both)
    <root>/seq-XX/frame-NNNNNN.depth.png    optional: uint16 depth in millimetres; 0 and 65535 mean
                                            "no depth". A split whose folders hold no depth file at
                                            all loads RGB-only (`depth_path=None`); once any frame
                                            has one, a frame without is a bad frame (DatasetError)
    <root>/seq-XX/frame-NNNNNN.pose.txt     4x4 camera-to-world matrix (`world_from_cam`), metres,
                                            4 rows of 4 whitespace-separated numbers
    <root>/camera.json                      optional, ours: `Intrinsics.to_dict()` for every frame
    <root>/camera-intrinsics.txt            optional: the 3x3 K, 3 lines of 3 numbers, for the size of
                                            the first colour image of the split

A split named S is listed in `<S.capitalize()>Split.txt`, so besides train and test a dataset may
hold other splits (the synthetic writer adds e.g. OutsideSplit.txt, BlurSplit.txt).

Flat layout: a root without any *Split.txt whose frame-NNNNNN.* files lie directly in it (like the
7-Scenes excerpt ../shared/data/7scenes-redkitchen-500) is one recording, its `sequence` the root
folder's name. Its splits are time blocks (`data.splits.TEST_BLOCKS`): split "test" is every fourth
block of 25 frames (in frame order), split "train" the other frames; no other split exists.

Poses: the file holds `world_from_cam` directly (x_world = M @ x_cam); the camera frame is x right,
y down, z forward. The loader checks that the rotation block is a rotation (||R^T R - I|| < 1e-2,
det R > 0, last row 0 0 0 1) and re-orthonormalises it with an SVD (the files are printed with about
7 significant digits).

Intrinsics: an explicit `intrinsics=` argument, else `<root>/camera.json`, else
`<root>/camera-intrinsics.txt`, else the values published with 7-Scenes (fx = fy = 585, cx = 320,
cy = 240 at 640x480). Intrinsics of another image size with the same aspect ratio are scaled to the
images' size when they are read (data/images.py), so the published K serves images halved to 320x240.

Caveat for real 7-Scenes data: the depth maps come from the Kinect's depth camera and are *not*
registered to the colour camera (a different sensor with its own intrinsics and a few centimetres
of baseline), so depth pixel (u, v) does not see the same point as colour pixel (u, v). The
published 585 px focal length is the depth camera's; DSAC*/ACE use 525 px for the colour images
(pass `intrinsics=` or a camera.json for that). A camera.json may also hold the depth camera under the
key "depth" (its width height fx fy cx cy); the depth images are then registered to the colour images
as they are read (data/images.py `register_depth`), e.g. for 7-Scenes at 640x480:
`{"width": 640, "height": 480, "fx": 525, "fy": 525, "cx": 320, "cy": 240, "depth": {"width": 640,
"height": 480, "fx": 585, "fy": 585, "cx": 320, "cy": 240}}`. Data written by `write_seven_scenes`
(our synthetic scenes) has depth registered to the colour image and exact intrinsics.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import PIL.Image

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
    read_depth_camera_json,
    read_text_file,
)
from posenet_ros.data.splits import TEST_BLOCKS

logger = logging.getLogger(__name__)

SEVEN_SCENES_INTRINSICS = Intrinsics(width=640, height=480, fx=585.0, fy=585.0, cx=320.0, cy=240.0)
"""Intrinsics published with 7-Scenes (those of the depth camera; see the module docstring)."""

DEPTH_INVALID_VALUES = (0, 65535)
"""Raw uint16 depth values that mean "no measurement"."""

_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")
_SEQUENCE_LINE = re.compile(r"sequence(\d+)", re.IGNORECASE)
_FRAME_FILE = re.compile(r"frame-(\d+)\.(color\.png|color\.jpg|depth\.png|pose\.txt)")
COLOR_SUFFIXES = (".color.png", ".color.jpg")
INTRINSICS_TXT = "camera-intrinsics.txt"
"""Optional file in a dataset root: the 3x3 K as 3 lines of 3 numbers (7-Scenes excerpts, tsdf-fusion)."""


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


def _color_suffix(folder: Path) -> str:
    """'.color.png' or '.color.jpg': the colour files of `folder` (PNG when it has neither, so that
    missing files are named as 7-Scenes names them); DatasetError naming the folder if it holds both."""
    found = [suffix for suffix in COLOR_SUFFIXES if any(folder.glob(f"frame-*{suffix}"))]
    if len(found) > 1:
        raise DatasetError(f"{folder}: holds both .color.png and .color.jpg frames; use one format per "
                           "sequence")
    return found[0] if found else COLOR_SUFFIXES[0]


def is_flat_layout(root: Path) -> bool:
    """Whether `root` is a flat 7-Scenes folder: no *Split.txt, frame-NNNNNN.pose.txt files in it."""
    return not any(root.glob("*Split.txt")) and any(root.glob("frame-*.pose.txt"))


def read_intrinsics_txt(path: Path, width: int, height: int) -> Intrinsics:
    """The 3x3 K in `path` (3 lines of 3 numbers, blank lines ignored) as intrinsics of a
    `width` x `height` image. DatasetError naming the file and line for anything else (a skewed K, a
    last row other than 0 0 1)."""
    text = read_text_file(path, "intrinsics file")
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(field) for field in line.split()]
        except ValueError as exc:
            raise DatasetError(f"{path}:{line_number}: not a number in {line.strip()!r}") from exc
        if len(values) != 3 or not np.all(np.isfinite(values)):
            raise DatasetError(f"{path}:{line_number}: expected 3 finite numbers (a row of K), found "
                               f"{line.strip()!r}")
        rows.append(values)
    if len(rows) != 3:
        raise DatasetError(f"{path}: expected the 3x3 K as 3 lines of 3 numbers, found {len(rows)} lines")
    K = np.array(rows)
    if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0.0 or K[0, 1] != 0.0:
        raise DatasetError(f"{path}: not a pinhole K without skew (expected fx 0 cx / 0 fy cy / 0 0 1), "
                           f"found {K.tolist()}")
    if K[0, 0] <= 0.0 or K[1, 1] <= 0.0:
        raise DatasetError(f"{path}: focal lengths must be positive, found fx={K[0, 0]} fy={K[1, 1]}")
    return Intrinsics(width, height, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image file at `path`, from its header."""
    try:
        with PIL.Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the image size ({type(exc).__name__}: {exc})") from exc


def _dataset_intrinsics(root: Path, first_color: Path) -> Intrinsics:
    """camera.json, else camera-intrinsics.txt (for the size of `first_color`), else the default."""
    found = read_camera_json(root)
    if found is not None:
        return found
    if (root / INTRINSICS_TXT).is_file():
        return read_intrinsics_txt(root / INTRINSICS_TXT, *_image_size(first_color))
    return SEVEN_SCENES_INTRINSICS


def _sequences(root: Path, split: str) -> tuple[list[tuple[Path, str]], Path]:
    """(folder, sequence name) of each sequence of `split`, and the file the split comes from (the
    split file, or the root of a flat layout)."""
    split_path = root / split_file_name(split)
    if is_flat_layout(root):
        if split not in ("train", "test"):
            raise DatasetError(f"{root}: a folder of frames without *Split.txt is one recording split by "
                               f"time blocks into 'train' and 'test'; there is no split {split!r}")
        return [(root, root.resolve().name)], root
    folders = []
    for folder_name in read_split_file(split_path):
        folder = root / folder_name
        if not folder.is_dir():
            raise DatasetError(f"{folder}: sequence folder listed in {split_path.name} does not exist "
                               "(FileNotFoundError)")
        folders.append((folder, folder_name))
    return folders, split_path


def load_seven_scenes(
    root: str | Path,
    split: str = "train",
    *,
    intrinsics: Intrinsics | None = None,
    skip_bad: bool = False,
    check_images: bool = False,
) -> list[FrameRecord]:
    """Read the frames of one split of a 7-Scenes-layout scene (split files or flat; module docstring).

    Returns records sorted by sequence (split-file order) then frame index, with `sequence` the
    folder name ('seq-01'; the root's name when flat) and `frame_index` the NNNNNN of the file names.
    A missing or invalid pose, image or depth file raises DatasetError naming the file; with
    `skip_bad=True` such frames are skipped and reported in one warning. A split without any depth
    file loads RGB-only (`depth_path=None`). `check_images=True` also opens every colour and depth
    file now (PIL verify), so truncated files count as bad frames here rather than failing later.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder (FileNotFoundError)")
    sequences, split_path = _sequences(root, split)
    frames = []  # (folder, sequence, index, colour suffix)
    for folder, sequence in sequences:
        indices = _frame_indices(folder)
        if not indices:
            raise DatasetError(f"{folder}: no frame-NNNNNN.color.png / .color.jpg / .pose.txt files")
        suffix = _color_suffix(folder)
        frames.extend((folder, sequence, index, suffix) for index in indices)
    if split_path == root:  # flat: one recording (frames in index order), split by time blocks
        frames = [frame for position, frame in enumerate(frames)
                  if TEST_BLOCKS.held_out(position) == (split == "test")]
    with_depth = any(any(folder.glob("frame-*.depth.png")) for folder, _ in sequences)
    if intrinsics is None:
        folder, _, index, suffix = frames[0]
        intrinsics = _dataset_intrinsics(root, folder / f"{frame_file_stem(index)}{suffix}")
    depth_camera = read_depth_camera_json(root) if with_depth else None
    bad = BadFrames(skip_bad)
    records: list[FrameRecord] = []
    for folder, sequence, index, suffix in frames:
        stem = frame_file_stem(index)
        image_path = folder / f"{stem}{suffix}"
        depth_path = folder / f"{stem}.depth.png" if with_depth else None
        try:
            world_from_cam = read_pose_file(folder / f"{stem}.pose.txt")
        except DatasetError as exc:
            bad.reject(str(exc))
            continue
        problem = None
        for path in (image_path, depth_path):
            if path is None:
                continue
            if check_images:
                problem = image_file_problem(path)
            elif not path.is_file():
                problem = f"{path}: no such image file (FileNotFoundError)"
                if path == depth_path:
                    problem += "; other frames of the split have depth: give every frame depth, or none"
            if problem is not None:
                break
        if problem is not None:
            bad.reject(problem)
            continue
        records.append(FrameRecord(image_path=image_path, depth_path=depth_path,
                                   world_from_cam=world_from_cam, intrinsics=intrinsics,
                                   sequence=sequence, frame_index=index, depth_intrinsics=depth_camera))
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


def encode_jpeg(image: np.ndarray, path: Path, quality: int = 95) -> bytes:
    """JPEG bytes of an 8-bit BGR image (cv2 channel order) at `quality` (0-100)."""
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot encode {path.name} as JPEG (shape {image.shape}, dtype {image.dtype})")
    return buffer.tobytes()


def format_intrinsics_txt(intrinsics: Intrinsics) -> str:
    """The pinhole K of `intrinsics` as camera-intrinsics.txt holds it: 3 lines of 3 numbers (%.17g)."""
    if intrinsics.distorted:
        raise ValueError("camera-intrinsics.txt holds a pinhole K only; write camera.json for a camera "
                         "with distortion")
    return "".join(" ".join(f"{value:.17g}" for value in row) + "\n" for row in intrinsics.matrix())


def write_seven_scenes(root: str | Path, sequences: Sequence[SequenceToWrite], intrinsics: Intrinsics, *,
                       color: Literal["png", "jpg"] = "png", depth: bool = True,
                       intrinsics_file: Literal["camera.json", "camera-intrinsics.txt"] = CAMERA_JSON,
                       flat: bool = False) -> list[Path]:
    """Write `sequences` as a 7-Scenes-layout scene under `root`; returns the sequence folders written.

    Sequences are numbered 1..N in the order given (folders seq-01, seq-02, ...), frames 0.. within
    each; frames are streamed (a sequence's `frames` may be a generator). Every split name gets a
    `<Split>Split.txt` listing its sequences. Poses are written with full precision, depth as uint16
    millimetres (rounded; 0 = invalid). `root` must not already hold 7-Scenes files (seq-* folders,
    *Split.txt or frame-* files), so stale frames never mix with new ones.

    Variants (what users bring): `color` "png" or "jpg" (quality 95) colour files; `depth=False`
    writes no depth files (an RGB-only dataset); `intrinsics_file` "camera.json" (ours, any
    `Intrinsics`) or "camera-intrinsics.txt" (the 3x3 K only); `flat=True` writes the frames of all
    sequences, in order and numbered 0.. consecutively, directly into `root` as one recording
    without split files (the reader splits it by time blocks; the sequences' split names are not
    written) and returns [root].
    """
    root = Path(root)
    sequences = list(sequences)
    if color not in ("png", "jpg"):
        raise ValueError(f"color must be 'png' or 'jpg', got {color!r}")
    if intrinsics_file not in (CAMERA_JSON, INTRINSICS_TXT):
        raise ValueError(f"intrinsics_file must be {CAMERA_JSON!r} or {INTRINSICS_TXT!r}, "
                         f"got {intrinsics_file!r}")
    if root.is_dir():
        stale = sorted(root.glob("seq-*")) + sorted(root.glob("*Split.txt")) + sorted(root.glob("frame-*"))
        if stale:
            raise FileExistsError(f"{root} already holds a 7-Scenes layout ({stale[0].name}); "
                                  "write into an empty or new folder")
    split_files = {sequence.split: split_file_name(sequence.split) for sequence in sequences}
    splits: dict[str, list[int]] = {split: [] for split in split_files}
    folders = []
    index = 0
    for number, sequence in enumerate(sequences, start=1):
        folder = root if flat else root / sequence_folder_name(number)
        if not flat:
            index = 0
        count = 0
        for frame in sequence.frames:
            stem = frame_file_stem(index)
            _check_frame(frame, intrinsics, f"{folder}/{stem}")
            bgr = cv2.cvtColor(np.ascontiguousarray(frame.rgb_HW3), cv2.COLOR_RGB2BGR)
            color_path = folder / f"{stem}.color.{color}"
            atomic_write_bytes(color_path, encode_png(bgr, color_path) if color == "png"
                               else encode_jpeg(bgr, color_path))
            if depth:
                depth_path = folder / f"{stem}.depth.png"
                depth_HW = (frame.depth_HW if frame.depth_HW is not None
                            else np.zeros(bgr.shape[:2], np.float32))
                atomic_write_bytes(depth_path, encode_png(depth_to_millimetres(depth_HW), depth_path))
            atomic_write_text(folder / f"{stem}.pose.txt", format_pose(frame.world_from_cam))
            count += 1
            index += 1
        if count == 0:
            raise ValueError(f"sequence {number} (split {sequence.split!r}) has no frames")
        splits[sequence.split].append(number)
        if folder not in folders:
            folders.append(folder)
    if not flat:
        for split, numbers in splits.items():
            atomic_write_text(root / split_files[split], "".join(f"sequence{n}\n" for n in numbers))
    if intrinsics_file == CAMERA_JSON:
        atomic_write_json(root / CAMERA_JSON, intrinsics.to_dict())
    else:
        atomic_write_text(root / INTRINSICS_TXT, format_intrinsics_txt(intrinsics))
    logger.info("wrote %d sequence(s) in 7-Scenes layout to %s%s", len(sequences), root,
                " (flat)" if flat else "")
    return folders
