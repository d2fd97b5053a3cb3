"""NeRF captures (`transforms.json` of instant-ngp, nerfstudio and the Blender synthetic scenes): reader
and writer.

Layout::

    <root>/transforms.json                  one capture: frames split by `splits.TEST_BLOCKS`, or
    <root>/transforms_<split>.json          Blender style: one file per split (train, test, val, ...)
    <root>/<file_path>                      images, relative to the json; nerfstudio and instant-ngp
                                            write the extension, Blender leaves it out (.png is tried)
    <root>/<depth_file_path>                optional depth (nerfstudio): integer PNG (uint16)

The json holds `frames`, a list of `{"file_path": ..., "transform_matrix": 4x4, ...}`, and the camera,
either at the top level (shared) or in each frame (a frame's keys win): `fl_x`, `fl_y` (pixels; else
from `camera_angle_x` / `camera_angle_y`, the full field of view in radians; `fl_y` defaults to
`fl_x`), `cx`, `cy` (default the image centre), `w`, `h` (default: read from the image file), and
OpenCV distortion `k1 k2 p1 p2` (and `k3`). Fisheye and equirectangular cameras (`camera_model`
OPENCV_FISHEYE / EQUIRECTANGULAR, `is_fisheye`) and nerfstudio's r^8 term `k4` are rejected. Like COLMAP,
these tools put the centre of the top-left pixel at (0.5, 0.5): cx = cx_json - 0.5, cy = cy_json - 0.5
(this package has pixel centres at integers), so a centred camera has cx_json = w / 2.

Poses: `transform_matrix` is camera-to-world with OpenGL / Blender camera axes (x right, y up, z back,
the camera looks along -z). This package's camera frame is OpenCV's (x right, y down, z forward), so
world_from_cam = transform_matrix @ diag(1, -1, -1, 1) (the y and z columns negated). The world frame
and its scale are the capture's: instant-ngp's `aabb_scale` (a ray-marching bound), `scale`, `offset`
and nerfstudio's `applied_transform` are not applied, and records have `metric=False`.

Depth: `depth_file_path` images hold integer depth along the optical axis; `depth_unit_m` of the
records is the json's `depth_unit_scale_factor` when present, else nerfstudio's default 1e-3
(millimetres), taken to be in the poses' unit (nerfstudio assumes metric poses when depth is given).

Splits: with `transforms_<split>.json` files, a split is its file (one sequence per folder of
`file_path`). With only `transforms.json`, frames are ordered by `file_path` (natural order), one
sequence per folder, and `TEST_BLOCKS` holds out every fourth block of 25 frames as 'test'; 'train'
is the rest and 'all' every frame.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import PIL.Image

from posenet_ros.core.atomic_io import atomic_write_bytes, atomic_write_json
from posenet_ros.core.camera import Intrinsics
from posenet_ros.data.colmap import natural_key
from posenet_ros.data.frames import (
    BadFrames,
    DatasetError,
    FrameRecord,
    SequenceToWrite,
    image_file_problem,
    read_text_file,
)
from posenet_ros.data.seven_scenes import depth_to_millimetres
from posenet_ros.data.splits import TEST_BLOCKS

logger = logging.getLogger(__name__)

TRANSFORMS = "transforms.json"
OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Camera axes: OpenGL (x right, y up, z back) from OpenCV (x right, y down, z forward); its own inverse."""

DEFAULT_DEPTH_UNIT = 1e-3
"""Units of a depth image per integer step without `depth_unit_scale_factor` (nerfstudio's default)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
"""Tried in this order for a `file_path` without an extension."""

_UNSUPPORTED_MODELS = ("OPENCV_FISHEYE", "EQUIRECTANGULAR", "FISHEYE624", "OMNIDIRECTIONALSTEREO_L",
                       "OMNIDIRECTIONALSTEREO_R", "VR180_L", "VR180_R")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")
_NUMERIC_CAMERA_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y", "k1", "k2",
                        "k3", "k4", "p1", "p2")
_CAMERA_KEYS = (*_NUMERIC_CAMERA_KEYS, "camera_model", "is_fisheye")


def split_file_name(split: str) -> str:
    """Blender-style file of split `split`: 'train' -> 'transforms_train.json'."""
    if not _SPLIT_NAME.fullmatch(split):
        raise ValueError(f"split name {split!r} must be letters, digits or '_'")
    return f"transforms_{split}.json"


def world_from_cam_from_nerf(transform_matrix: np.ndarray) -> np.ndarray:
    """A NeRF `transform_matrix` (camera-to-world, OpenGL camera axes) -> world_from_cam (OpenCV axes)."""
    return np.asarray(transform_matrix, dtype=np.float64) @ OPENGL_FROM_OPENCV


def nerf_from_world_from_cam(world_from_cam: np.ndarray) -> np.ndarray:
    """world_from_cam (OpenCV camera axes) -> a NeRF `transform_matrix` (OpenGL camera axes)."""
    return np.asarray(world_from_cam, dtype=np.float64) @ OPENGL_FROM_OPENCV


# --- reading ---------------------------------------------------------------------------------------


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def frame_lines(text: str) -> list[int]:
    """Line numbers (1-based) where each element of the top-level `frames` array of valid JSON `text`
    starts; empty when there is no such array."""
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if text[position:position + 1] != "{":
        return []
    position = _skip_space(text, position + 1)
    while position < len(text) and text[position] != "}":
        key, position = decoder.raw_decode(text, position)
        position = _skip_space(text, _skip_space(text, position) + 1)  # past the ':'
        if key == "frames" and text[position] == "[":
            lines = []
            position = _skip_space(text, position + 1)
            while text[position] != "]":
                lines.append(text.count("\n", 0, position) + 1)
                _, position = decoder.raw_decode(text, position)
                position = _skip_space(text, position)
                if text[position] == ",":
                    position = _skip_space(text, position + 1)
            return lines
        _, position = decoder.raw_decode(text, position)
        position = _skip_space(text, position)
        if text[position] == ",":
            position = _skip_space(text, position + 1)
    return []


def read_transforms(path: Path) -> tuple[dict[str, Any], list[str]]:
    """(the json object, 'file:line' of each frame) of a transforms file; DatasetError naming the file
    and line when it is missing, not JSON or has no `frames` list."""
    text = read_text_file(path, "NeRF transforms file")
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
    if not isinstance(values, dict) or not isinstance(values.get("frames"), list):
        raise DatasetError(f"{path}:1: expected a JSON object with a 'frames' list (instant-ngp / "
                           "nerfstudio transforms.json)")
    lines = frame_lines(text)
    if len(lines) != len(values["frames"]):  # a duplicate 'frames' key; fall back to the file alone
        lines = [0] * len(values["frames"])
    return values, [f"{path}:{line} (frames[{i}])" if line else f"{path} (frames[{i}])"
                    for i, line in enumerate(lines)]


def _number(values: dict[str, Any], key: str, where: str) -> float | None:
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def frame_intrinsics(camera: dict[str, Any], image_path: Path, where: str) -> Intrinsics:
    """Intrinsics of one frame from its camera keys (global keys updated by the frame's own)."""
    model = camera.get("camera_model", "OPENCV")
    if model in _UNSUPPORTED_MODELS or camera.get("is_fisheye"):
        raise DatasetError(f"{where}: camera model {model if not camera.get('is_fisheye') else 'fisheye'} "
                           "is not supported (pinhole with OpenCV k1 k2 p1 p2 k3 only); undistort the "
                           "images first")
    if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        raise DatasetError(f"{where}: unknown camera model {model!r}")
    number = {key: _number(camera, key, where) for key in _NUMERIC_CAMERA_KEYS}
    width, height = number["w"], number["h"]
    if width is None or height is None:
        try:
            with PIL.Image.open(image_path) as image:
                width, height = image.size
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{where}: no 'w'/'h' and the image {image_path} cannot be read for its "
                               f"size ({exc})") from exc
    fx, fy = number["fl_x"], number["fl_y"]
    if fx is None and number["camera_angle_x"] is not None:
        fx = 0.5 * width / math.tan(0.5 * number["camera_angle_x"])
    if fy is None and number["camera_angle_y"] is not None:
        fy = 0.5 * height / math.tan(0.5 * number["camera_angle_y"])
    if fx is None:
        raise DatasetError(f"{where}: no focal length: expected 'fl_x' or 'camera_angle_x' in the frame "
                           "or at the top level")
    fy = fx if fy is None else fy
    if number["k4"]:
        raise DatasetError(f"{where}: k4 = {number['k4']} (nerfstudio's r^8 radial term) is not supported")
    k1, k2, k3, p1, p2 = (number[key] or 0.0 for key in ("k1", "k2", "k3", "p1", "p2"))
    distortion = (k1, k2, p1, p2, k3) if k3 else (k1, k2, p1, p2) if any((k1, k2, p1, p2)) else ()
    cx = number["cx"] if number["cx"] is not None else width / 2.0
    cy = number["cy"] if number["cy"] is not None else height / 2.0
    intrinsics = Intrinsics(round(width), round(height), fx, fy, cx - 0.5, cy - 0.5, distortion)
    if intrinsics.width <= 0 or intrinsics.height <= 0 or fx <= 0 or fy <= 0:
        raise DatasetError(f"{where}: invalid camera {intrinsics}")
    return intrinsics


def frame_pose(frame: dict[str, Any], where: str) -> np.ndarray:
    """world_from_cam (OpenCV axes) of a frame's `transform_matrix`, rotation re-orthonormalised."""
    try:
        matrix = np.array(frame["transform_matrix"], dtype=np.float64)
    except KeyError as exc:
        raise DatasetError(f"{where}: no 'transform_matrix'") from exc
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: transform_matrix is not a 4x4 (or 3x4) list of numbers") from exc
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise DatasetError(f"{where}: transform_matrix must be 4x4 finite numbers, got shape {matrix.shape}")
    rotation = matrix[:3, :3]
    error = float(np.linalg.norm(rotation.T @ rotation - np.eye(3)))
    rigid_last_row = np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6)
    if error >= 1e-2 or np.linalg.det(rotation) <= 0.0 or not rigid_last_row:
        raise DatasetError(f"{where}: transform_matrix is not a rigid transform (||R^T R - I|| = "
                           f"{error:.3g}, "
                           f"det = {np.linalg.det(rotation):.3g}, last row {matrix[3].tolist()})")
    u, _, vt = np.linalg.svd(rotation)
    matrix[:3, :3] = u @ vt
    matrix[3] = [0.0, 0.0, 0.0, 1.0]
    return world_from_cam_from_nerf(matrix)


def resolve_image(folder: Path, file_path: str) -> Path:
    """`file_path` relative to the json's folder; without an extension, the first of `IMAGE_SUFFIXES`
    that exists (Blender's './train/r_0' -> train/r_0.png)."""
    path = folder / file_path
    if path.is_file() or path.suffix:
        return path
    for suffix in IMAGE_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return path


def detect_split_files(root: Path) -> bool:
    """Whether `root` holds Blender-style `transforms_<split>.json` files."""
    return any(root.glob("transforms_*.json"))


def load_nerf(
    root: str | Path,
    split: str = "train",
    *,
    intrinsics: Intrinsics | None = None,
    skip_bad: bool = False,
    check_images: bool = False,
) -> list[FrameRecord]:
    """Read one split of a NeRF capture (see the module docstring for files, axes, splits and depth).

    Records are ordered by sequence (folder of `file_path`) and `file_path` (natural order),
    `frame_index` the position in that order, `metric` False; `intrinsics=` replaces every frame's
    camera. A bad frame (no or non-rigid transform_matrix, no focal length, missing image) raises
    DatasetError naming the json file and line; with `skip_bad=True` such frames are skipped and
    reported in one warning. `check_images=True` also opens every image (and depth) file now.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder (FileNotFoundError)")
    blender = detect_split_files(root)
    if blender:
        path = root / split_file_name(split)
    else:
        if split not in ("train", "test", "all"):
            raise DatasetError(f"{root / TRANSFORMS}: a single transforms.json has the splits train, test "
                               f"(every fourth block of 25 frames) and all, not {split!r}")
        path = root / TRANSFORMS
    values, wheres = read_transforms(path)
    camera = {key: values[key] for key in _CAMERA_KEYS if key in values}
    depth_unit = _number(values, "depth_unit_scale_factor", f"{path}:1") or DEFAULT_DEPTH_UNIT
    bad = BadFrames(skip_bad)
    by_sequence: dict[str, list[tuple[str, FrameRecord]]] = {}
    for frame, where in zip(values["frames"], wheres, strict=True):
        try:
            if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
                raise DatasetError(f"{where}: expected an object with a 'file_path' string")
            image_path = resolve_image(path.parent, frame["file_path"])
            depth_path = frame.get("depth_file_path")
            depth_path = path.parent / depth_path if isinstance(depth_path, str) else None
            world_from_cam = frame_pose(frame, where)
            for file in (image_path, depth_path):
                if file is None:
                    continue
                problem = image_file_problem(file) if check_images else (
                    None if file.is_file() else f"{file}: no such image file (FileNotFoundError)")
                if problem is not None:
                    raise DatasetError(f"{problem} (listed at {where})")
            frame_camera = intrinsics or frame_intrinsics(
                {**camera, **{key: frame[key] for key in _CAMERA_KEYS if key in frame}}, image_path, where)
        except DatasetError as exc:
            bad.reject(str(exc))
            continue
        sequence = PurePosixPath(frame["file_path"]).parent.as_posix()
        sequence = "" if sequence == "." else sequence.removeprefix("./")
        by_sequence.setdefault(sequence, []).append((frame["file_path"], FrameRecord(
            image_path=image_path, depth_path=depth_path, world_from_cam=world_from_cam,
            intrinsics=frame_camera, sequence=sequence, frame_index=0, depth_unit_m=depth_unit,
            metric=False)))
    records = []
    for sequence in sorted(by_sequence, key=natural_key):
        members = sorted(by_sequence[sequence], key=lambda member: natural_key(member[0]))
        records.extend(replace(record, frame_index=index)
                       for index, (_, record) in enumerate(members))
    if not blender and split != "all":
        kept, held_out = TEST_BLOCKS.split(records)
        records = held_out if split == "test" else kept
    return bad.finish(records, path, logger)


# --- writing ---------------------------------------------------------------------------------------


def camera_keys(intrinsics: Intrinsics) -> dict[str, Any]:
    """The json camera keys of `intrinsics` (fl_x fl_y cx cy w h k1 k2 p1 p2 k3; the tools' pixels)."""
    if len(intrinsics.distortion) > 5 and any(intrinsics.distortion[5:]):
        raise ValueError(f"a NeRF transforms file cannot hold the rational terms k4..k6 of {intrinsics}")
    keys: dict[str, Any] = {"camera_model": "OPENCV", "fl_x": intrinsics.fx, "fl_y": intrinsics.fy,
                            "cx": intrinsics.cx + 0.5, "cy": intrinsics.cy + 0.5, "w": intrinsics.width,
                            "h": intrinsics.height}
    distortion = tuple(intrinsics.distortion) + (0.0,) * (5 - min(len(intrinsics.distortion), 5))
    keys.update(zip(("k1", "k2", "p1", "p2", "k3"), distortion[:5], strict=True))
    return keys


def write_nerf(root: str | Path, sequences: Sequence[SequenceToWrite], intrinsics: Intrinsics, *,
               split_files: bool = False, per_frame_intrinsics: bool = False, depth: bool = False
               ) -> list[Path]:
    """Write `sequences` as a NeRF capture: images/<split>-NN/NNNNNN.png and a transforms json.

    `split_files`: one Blender-style `transforms_<split>.json` per split name, else one
    `transforms.json` holding every frame (the reader's block split applies). `per_frame_intrinsics`:
    the camera keys in every frame, else at the top level. `depth`: also depth/<split>-NN/NNNNNN.png,
    uint16 millimetres (0 = invalid), as `depth_file_path`. Poses in the OpenGL camera axes of the
    format; images as given (already distorted when `intrinsics` has distortion); `aabb_scale` 16.
    `root` must not hold images/ or a transforms file already. Returns the image folders written.
    """
    root = Path(root)
    if (root / "images").exists() or any(root.glob("transforms*.json")):
        raise FileExistsError(f"{root} already holds a NeRF capture; write into an empty or new folder")
    keys = camera_keys(intrinsics)
    frames: dict[str, list[dict[str, Any]]] = {}
    folders = []
    for number, sequence in enumerate(sequences, start=1):
        folder_name = f"{sequence.split}-{number:02d}"
        count = 0
        for index, frame in enumerate(sequence.frames):
            name = f"{folder_name}/{index:06d}.png"
            rgb = frame.rgb_HW3
            if rgb.shape != (intrinsics.height, intrinsics.width, 3) or rgb.dtype != np.uint8:
                raise ValueError(f"{name}: rgb must be uint8 {(intrinsics.height, intrinsics.width, 3)}, "
                                 f"got {rgb.dtype} {rgb.shape}")
            atomic_write_bytes(root / "images" / name, _png(cv2.cvtColor(np.ascontiguousarray(rgb),
                                                                        cv2.COLOR_RGB2BGR), name))
            transform_matrix = nerf_from_world_from_cam(frame.world_from_cam).tolist()
            entry: dict[str, Any] = {"file_path": f"images/{name}", "transform_matrix": transform_matrix}
            if depth:
                if frame.depth_HW is None:
                    raise ValueError(f"{name}: depth=True but the frame has no depth")
                atomic_write_bytes(root / "depth" / name, _png(depth_to_millimetres(frame.depth_HW), name))
                entry["depth_file_path"] = f"depth/{name}"
            if per_frame_intrinsics:
                entry.update(keys)
            frames.setdefault(sequence.split if split_files else "", []).append(entry)
            count += 1
        if count == 0:
            raise ValueError(f"sequence {number} (split {sequence.split!r}) has no frames")
        folders.append(root / "images" / folder_name)
    for split, entries in frames.items():
        document: dict[str, Any] = {} if per_frame_intrinsics else dict(keys)
        document["aabb_scale"] = 16
        if depth:
            document["depth_unit_scale_factor"] = 1e-3
        document["frames"] = entries
        atomic_write_json(root / (split_file_name(split) if split_files else TRANSFORMS), document)
    logger.info("wrote %d sequence(s) as a NeRF capture to %s", len(folders), root)
    return folders


def _png(image: np.ndarray, name: str) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode {name} as PNG")
    return buffer.tobytes()
