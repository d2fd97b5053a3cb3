"""COLMAP sparse models: reader and writer (text and binary `cameras` / `images`; points3D is not used).

Layout::

    <root>/images/<name>                    the images; <name> as images.txt / images.bin lists it, may
                                            hold sub-folders (one sequence per sub-folder)
    <root>/sparse/0/cameras.bin|txt         the model: the first of <root>/sparse/0/, <root>/sparse/,
    <root>/sparse/0/images.bin|txt          <root>/ that holds cameras + images (binary before text)

Only the first model (`sparse/0`) is read; a reconstruction split into several models (sparse/1, ...)
has poses in unrelated world frames, so pick one (point `root` at a folder holding it) or merge them.

Formats (https://colmap.github.io/format.html), little-endian in the binary files:
  * cameras.txt: `CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`; cameras.bin: uint64 count, then per camera
    int32 id, int32 model id, uint64 width, uint64 height, float64 params.
  * images.txt: two lines per image, `IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME` and the
    (possibly empty) POINTS2D line `X Y POINT3D_ID ...`; images.bin: uint64 count, then per image int32
    id, 7 float64 (qw qx qy qz tx ty tz), int32 camera id, NUL-terminated name, uint64 point count and
    that many (float64 x, float64 y, int64 point3D id).

Poses: COLMAP stores the *world-to-camera* transform, x_cam = R(q) x_world + t, with the camera frame
x right, y down, z forward (OpenCV's), so world_from_cam = [R^T | -R^T t; 0 0 0 1]. The world frame is
the reconstruction's, of arbitrary scale and orientation: records have `metric=False`.

Intrinsics: one camera per CAMERA_ID, shared by the images that name it (or one per image). Models:
SIMPLE_PINHOLE (f cx cy), PINHOLE (fx fy cx cy), SIMPLE_RADIAL (f cx cy k), RADIAL (f cx cy k1 k2),
OPENCV (fx fy cx cy k1 k2 p1 p2) and FULL_OPENCV (fx fy cx cy k1 k2 p1 p2 k3 k4 k5 k6), mapped to
`Intrinsics` with OpenCV distortion (k1 k2 p1 p2 [k3 [k4 k5 k6]]); the radial models are OpenCV's
with the missing terms zero. Fisheye and other models are rejected. COLMAP puts the centre of the
top-left pixel at (0.5, 0.5), this package at (0, 0): cx = cx_colmap - 0.5, cy = cy_colmap - 0.5.

Splits: no split files. The images are ordered by name (natural order: digits compare as numbers),
grouped into one sequence per sub-folder of images/ ('' for images at the top), and
`splits.TEST_BLOCKS` holds out every fourth block of 25 frames of each sequence as 'test'; 'train' is
the rest and 'all' every image.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from posenet_ros.core.atomic_io import atomic_write_bytes, atomic_write_text
from posenet_ros.core.camera import Intrinsics
from posenet_ros.core.geometry import matrix_to_quat, quat_to_matrix
from posenet_ros.data.frames import (
    BadFrames,
    DatasetError,
    FrameRecord,
    SequenceToWrite,
    image_file_problem,
    read_text_file,
)
from posenet_ros.data.splits import TEST_BLOCKS

logger = logging.getLogger(__name__)

MODEL_FOLDERS = ("sparse/0", "sparse", ".")
"""Where a model is looked for under the root, in this order."""

IMAGES_FOLDER = "images"

SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class CameraModel:
    """A COLMAP camera model: its id in the binary files and its parameter names."""

    name: str
    model_id: int
    params: tuple[str, ...]


CAMERA_MODELS = {model.name: model for model in (
    CameraModel("SIMPLE_PINHOLE", 0, ("f", "cx", "cy")),
    CameraModel("PINHOLE", 1, ("fx", "fy", "cx", "cy")),
    CameraModel("SIMPLE_RADIAL", 2, ("f", "cx", "cy", "k1")),
    CameraModel("RADIAL", 3, ("f", "cx", "cy", "k1", "k2")),
    CameraModel("OPENCV", 4, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
    CameraModel("FULL_OPENCV", 6, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")),
)}
"""The camera models read; COLMAP's other models (fisheye, FOV, thin prism) are not."""

_MODEL_BY_ID = {model.model_id: model for model in CAMERA_MODELS.values()}
_OTHER_MODEL_IDS = {5: "OPENCV_FISHEYE", 7: "FOV", 8: "SIMPLE_RADIAL_FISHEYE", 9: "RADIAL_FISHEYE",
                    10: "THIN_PRISM_FISHEYE", 11: "RAD_TAN_THIN_PRISM_FISHEYE"}
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that compares runs of digits as numbers: 'r_2' < 'r_10'."""
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS.split(name))


# --- camera models <-> Intrinsics ------------------------------------------------------------------


def intrinsics_from_model(model: CameraModel, width: int, height: int, params: Sequence[float]
                          ) -> Intrinsics:
    """COLMAP camera (model, size, params in COLMAP's pixel convention) -> Intrinsics (OpenCV's)."""
    values = dict(zip(model.params, (float(p) for p in params), strict=True))
    fx = values.get("fx", values.get("f"))
    fy = values.get("fy", values.get("f"))
    names = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")
    distortion: tuple[float, ...] = ()
    if "k1" in values:
        count = 8 if "k3" in values else 4
        distortion = tuple(values.get(name, 0.0) for name in names[:count])
    return Intrinsics(width, height, fx, fy, values["cx"] - 0.5, values["cy"] - 0.5, distortion)


def model_for_intrinsics(intrinsics: Intrinsics) -> CameraModel:
    """The simplest COLMAP model that holds `intrinsics` exactly."""
    d = tuple(intrinsics.distortion) + (0.0,) * (8 - len(intrinsics.distortion))
    same_focal = intrinsics.fx == intrinsics.fy
    if any(d[4:]):
        return CAMERA_MODELS["FULL_OPENCV"]
    if any(d[1:4]) and not (same_focal and not any(d[2:4])):
        return CAMERA_MODELS["OPENCV"]
    if same_focal:
        return CAMERA_MODELS["RADIAL" if d[1] else "SIMPLE_RADIAL" if d[0] else "SIMPLE_PINHOLE"]
    return CAMERA_MODELS["OPENCV" if d[0] else "PINHOLE"]


def model_params(model: CameraModel, intrinsics: Intrinsics) -> list[float]:
    """Params of `intrinsics` for `model` (COLMAP pixel convention); ValueError if it cannot hold them."""
    names = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")
    values = dict(zip(names, tuple(intrinsics.distortion) + (0.0,) * (8 - len(intrinsics.distortion)),
                      strict=True))
    dropped = [name for name in names if values[name] and name not in model.params]
    if dropped or ("f" in model.params and intrinsics.fx != intrinsics.fy):
        raise ValueError(f"camera model {model.name} cannot hold {intrinsics}")
    values.update(fx=intrinsics.fx, fy=intrinsics.fy, f=intrinsics.fx, cx=intrinsics.cx + 0.5,
                  cy=intrinsics.cy + 0.5)
    return [values[name] for name in model.params]


# --- poses -----------------------------------------------------------------------------------------


def world_from_cam_from_colmap(quat_wxyz: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """COLMAP's cam_from_world (quaternion w x y z, translation) -> world_from_cam (4, 4) float64."""
    quat = np.asarray(quat_wxyz, dtype=np.float64)
    cam_from_world = quat_to_matrix(quat / np.linalg.norm(quat))
    world_from_cam = np.eye(4)
    world_from_cam[:3, :3] = cam_from_world.T
    world_from_cam[:3, 3] = -cam_from_world.T @ np.asarray(translation, dtype=np.float64)
    return world_from_cam


def colmap_from_world_from_cam(world_from_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """world_from_cam (4, 4) -> COLMAP's (quaternion w x y z of R_cam_from_world, w >= 0; translation)."""
    matrix = np.asarray(world_from_cam, dtype=np.float64)
    rotation = matrix[:3, :3].T
    return matrix_to_quat(rotation), -rotation @ matrix[:3, 3]


# --- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColmapImage:
    """One registered image of a model: its name (relative to images/), pose and camera id."""

    name: str
    world_from_cam: np.ndarray
    camera_id: int
    where: str  # file and line (or record) it came from, for messages


def has_model_files(root: Path) -> bool:
    """Whether any cameras.bin|txt or images.bin|txt lies where `find_model` looks."""
    return any((root / relative / f"{name}.{extension}").is_file() for relative in MODEL_FOLDERS
               for name in ("cameras", "images") for extension in ("bin", "txt"))


def find_model(root: Path) -> tuple[Path, str]:
    """(folder, 'bin' or 'txt') of the model under `root` (search order: `MODEL_FOLDERS`)."""
    for relative in MODEL_FOLDERS:
        folder = root / relative
        for extension in ("bin", "txt"):
            files = [folder / f"{name}.{extension}" for name in ("cameras", "images")]
            present = [file.is_file() for file in files]
            if all(present):
                return folder, extension
            if any(present):
                missing, found = files[present.index(False)], files[present.index(True)]
                raise DatasetError(f"{missing}: no such COLMAP model file beside {found.name} "
                                   "(FileNotFoundError)")
    raise DatasetError(f"{root}: no COLMAP model: expected cameras.bin + images.bin or cameras.txt + "
                       f"images.txt in one of {', '.join(MODEL_FOLDERS)} (FileNotFoundError)")


def _check_camera(intrinsics: Intrinsics, where: str) -> None:
    numbers = (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy, *intrinsics.distortion)
    if intrinsics.width <= 0 or intrinsics.height <= 0 or not np.all(np.isfinite(numbers)) \
            or intrinsics.fx <= 0 or intrinsics.fy <= 0:
        raise DatasetError(f"{where}: invalid camera {intrinsics}")


def _unknown_model(name: str, where: str) -> DatasetError:
    return DatasetError(f"{where}: unknown or unsupported camera model {name}; supported: "
                        f"{', '.join(CAMERA_MODELS)}")


def read_cameras_text(path: Path) -> dict[int, Intrinsics]:
    """Cameras of a cameras.txt by id; DatasetError naming the file and line on bad input."""
    cameras = {}
    for line_number, line in enumerate(read_text_file(path, "COLMAP cameras file").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{path}:{line_number}"
        if len(fields) < 4:
            raise DatasetError(f"{where}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', found "
                               f"{line.strip()!r}")
        model = CAMERA_MODELS.get(fields[1])
        if model is None:
            raise _unknown_model(fields[1], where)
        if len(fields) != 4 + len(model.params):
            raise DatasetError(f"{where}: camera model {model.name} takes {len(model.params)} params "
                               f"({' '.join(model.params)}), found {len(fields) - 4}")
        try:
            camera_id, width, height = int(fields[0]), int(fields[2]), int(fields[3])
            params = [float(field) for field in fields[4:]]
        except ValueError as exc:
            raise DatasetError(f"{where}: not a number in {line.strip()!r}") from exc
        intrinsics = intrinsics_from_model(model, width, height, params)
        _check_camera(intrinsics, where)
        cameras[camera_id] = intrinsics
    return cameras


def _image_line(fields: list[str], line: str, where: str) -> tuple[int, np.ndarray, int, str]:
    if len(fields) != 10:
        raise DatasetError(f"{where}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', found "
                           f"{len(fields)} fields in {line.strip()!r}")
    try:
        image_id, camera_id = int(fields[0]), int(fields[8])
        values = np.array([float(field) for field in fields[1:8]])
    except ValueError as exc:
        raise DatasetError(f"{where}: not a number in {line.strip()!r}") from exc
    return image_id, values, camera_id, fields[9].strip()


def read_images_text(path: Path) -> list[ColmapImage]:
    """Images of an images.txt in file order; DatasetError naming the file and line on bad input."""
    lines = read_text_file(path, "COLMAP images file").splitlines()
    images = []
    line_number = 0
    while line_number < len(lines):
        line = lines[line_number]
        line_number += 1
        fields = line.split(maxsplit=9)  # NAME is the rest of the line (it may hold spaces)
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{path}:{line_number}"
        _, values, camera_id, name = _image_line(fields, line, where)
        if line_number < len(lines):  # the POINTS2D line: triples X Y POINT3D_ID (may be empty)
            points = lines[line_number].split()
            line_number += 1
            try:
                [float(field) for field in points]
                if len(points) % 3:
                    raise ValueError
            except ValueError as exc:
                raise DatasetError(f"{path}:{line_number}: expected the POINTS2D line of the image on "
                                   f"line {line_number - 1} (triples 'X Y POINT3D_ID', or empty); every "
                                   "image takes two lines") from exc
        images.append(ColmapImage(name, _pose(values, where), camera_id, where))
    return images


def _pose(values: np.ndarray, where: str) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise DatasetError(f"{where}: pose holds NaN or inf: {values.tolist()}")
    if np.linalg.norm(values[:4]) < 1e-12:
        raise DatasetError(f"{where}: quaternion has zero norm")
    return world_from_cam_from_colmap(values[:4], values[4:])


class _BinaryReader:
    """Little-endian reads from a binary model file; errors name the file and byte offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read COLMAP model file ({exc})") from exc
        self.offset = 0

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.data):
            raise DatasetError(f"{self.path}: truncated at byte {self.offset} (file has {len(self.data)} "
                               "bytes)")
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += size
        return values

    def read_name(self) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise DatasetError(f"{self.path}: truncated at byte {self.offset} (image name without NUL)")
        try:
            name = self.data[self.offset:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{self.path}: byte {self.offset}: image name is not UTF-8") from exc
        self.offset = end + 1
        return name

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise DatasetError(f"{self.path}: {len(self.data) - self.offset} bytes left after the last "
                               "record (not a COLMAP model file?)")


def read_cameras_binary(path: Path) -> dict[int, Intrinsics]:
    """Cameras of a cameras.bin by id; DatasetError naming the file and record on bad input."""
    reader = _BinaryReader(path)
    (count,) = reader.read("Q")
    cameras = {}
    for index in range(count):
        where = f"{path}: camera record {index} (byte {reader.offset})"
        camera_id, model_id, width, height = reader.read("iiQQ")
        model = _MODEL_BY_ID.get(model_id)
        if model is None:
            raise _unknown_model(_OTHER_MODEL_IDS.get(model_id, f"id {model_id}"), where)
        params = reader.read("d" * len(model.params))
        intrinsics = intrinsics_from_model(model, width, height, params)
        _check_camera(intrinsics, where)
        cameras[camera_id] = intrinsics
    reader.finish()
    return cameras


def read_images_binary(path: Path) -> list[ColmapImage]:
    """Images of an images.bin in file order; DatasetError naming the file and record on bad input."""
    reader = _BinaryReader(path)
    (count,) = reader.read("Q")
    images = []
    for index in range(count):
        where = f"{path}: image record {index} (byte {reader.offset})"
        fields = reader.read("i7di")
        name = reader.read_name()
        (points,) = reader.read("Q")
        reader.read("ddq" * points)
        images.append(ColmapImage(name, _pose(np.array(fields[1:8]), where), fields[8], where))
    reader.finish()
    return images


def read_model(folder: Path, extension: str) -> tuple[dict[int, Intrinsics], list[ColmapImage]]:
    """(cameras by id, images) of the model in `folder` ('bin' or 'txt' files)."""
    if extension == "bin":
        return read_cameras_binary(folder / "cameras.bin"), read_images_binary(folder / "images.bin")
    return read_cameras_text(folder / "cameras.txt"), read_images_text(folder / "images.txt")


def load_colmap(
    root: str | Path,
    split: str = "train",
    *,
    intrinsics: Intrinsics | None = None,
    skip_bad: bool = False,
    check_images: bool = False,
) -> list[FrameRecord]:
    """Read one split ('train', 'test' or 'all'; see the module docstring) of a COLMAP capture.

    Records are in name order per sequence (the sub-folder of images/, '' at the top), `frame_index`
    the position in that order, `depth_path` None, `metric` False, `intrinsics` the image's camera
    (an explicit `intrinsics=` replaces every camera). An image naming an unknown camera, or missing
    from images/, raises DatasetError naming the model file and line; with `skip_bad=True` such images
    are skipped and reported in one warning. `check_images=True` also opens every image now.
    """
    root = Path(root)
    if split not in SPLITS:
        raise DatasetError(f"{root}: a COLMAP capture has the splits {', '.join(SPLITS)} (test: "
                           f"every fourth block of 25 images), not {split!r}")
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder (FileNotFoundError)")
    folder, extension = find_model(root)
    cameras, images = read_model(folder, extension)
    images_path = folder / f"images.{extension}"
    bad = BadFrames(skip_bad)
    by_sequence: dict[str, list[FrameRecord]] = {}
    for image in sorted(images, key=lambda image: natural_key(image.name)):
        camera = intrinsics or cameras.get(image.camera_id)
        if camera is None:
            bad.reject(f"{image.where}: camera {image.camera_id} is not in cameras.{extension}")
            continue
        image_path = root / IMAGES_FOLDER / image.name
        problem = image_file_problem(image_path) if check_images else (
            None if image_path.is_file() else f"{image_path}: no such image file (FileNotFoundError)")
        if problem is not None:
            bad.reject(f"{problem} (listed at {image.where})")
            continue
        sequence = PurePosixPath(image.name).parent.as_posix()
        members = by_sequence.setdefault("" if sequence == "." else sequence, [])
        members.append(FrameRecord(image_path=image_path, depth_path=None,
                                   world_from_cam=image.world_from_cam, intrinsics=camera,
                                   sequence="" if sequence == "." else sequence,
                                   frame_index=len(members), metric=False))
    records = [record for name in sorted(by_sequence, key=natural_key) for record in by_sequence[name]]
    if split != "all":
        kept, held_out = TEST_BLOCKS.split(records)
        records = held_out if split == "test" else kept
    return bad.finish(records, images_path, logger)


# --- writing ---------------------------------------------------------------------------------------


def write_colmap(root: str | Path, sequences: Sequence[SequenceToWrite], intrinsics: Intrinsics, *,
                 binary: bool = False, per_image_cameras: bool = False, model: str | None = None
                 ) -> list[Path]:
    """Write `sequences` as a COLMAP capture: images/<split>-NN/NNNNNN.png and sparse/0/ model files.

    Every sequence goes into the one model (COLMAP has no splits; the reader's block split applies);
    its images go to the sub-folder `<split>-<number>` (numbered from 1 in the order given). `binary`:
    cameras.bin + images.bin, else .txt; `per_image_cameras`: one camera per image, else one shared;
    `model`: the COLMAP camera model (default: the simplest that holds `intrinsics`). Images are
    written as given (already distorted when `intrinsics` has distortion); no depth, no points3D
    (an empty points3D file is written, as COLMAP expects one). `root` must not hold images/ or
    sparse/ already. Returns the image folders written.
    """
    root = Path(root)
    for existing in (root / IMAGES_FOLDER, root / "sparse"):
        if existing.exists():
            raise FileExistsError(f"{root} already holds {existing.name}/; write into an empty or new folder")
    camera_model = CAMERA_MODELS[model] if model is not None else model_for_intrinsics(intrinsics)
    params = model_params(camera_model, intrinsics)
    camera_ids: list[int] = []
    images: list[tuple[int, np.ndarray, np.ndarray, int, str]] = []
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
            ok, buffer = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
            if not ok:
                raise ValueError(f"cannot encode {name} as PNG")
            atomic_write_bytes(root / IMAGES_FOLDER / name, buffer.tobytes())
            image_id = len(images) + 1
            if per_image_cameras or not camera_ids:
                camera_ids.append(image_id)
            quat, translation = colmap_from_world_from_cam(frame.world_from_cam)
            images.append((image_id, quat, translation, camera_ids[-1], name))
            count += 1
        if count == 0:
            raise ValueError(f"sequence {number} (split {sequence.split!r}) has no frames")
        folders.append(root / IMAGES_FOLDER / folder_name)
    model_folder = root / "sparse" / "0"
    if binary:
        cameras_bin = struct.pack("<Q", len(camera_ids)) + b"".join(
            struct.pack("<iiQQ", camera_id, camera_model.model_id, intrinsics.width, intrinsics.height)
            + struct.pack("<" + "d" * len(params), *params) for camera_id in camera_ids)
        images_bin = struct.pack("<Q", len(images)) + b"".join(
            struct.pack("<i7di", image_id, *quat, *translation, camera_id) + name.encode() + b"\0"
            + struct.pack("<Q", 0) for image_id, quat, translation, camera_id, name in images)
        atomic_write_bytes(model_folder / "cameras.bin", cameras_bin)
        atomic_write_bytes(model_folder / "images.bin", images_bin)
        atomic_write_bytes(model_folder / "points3D.bin", struct.pack("<Q", 0))
    else:
        camera_lines = [f"{camera_id} {camera_model.name} {intrinsics.width} {intrinsics.height} "
                        + " ".join(f"{value:.17g}" for value in params) for camera_id in camera_ids]
        image_lines = [f"{image_id} " + " ".join(f"{value:.17g}" for value in (*quat, *translation))
                       + f" {camera_id} {name}\n\n"  # the second line: POINTS2D, empty
                       for image_id, quat, translation, camera_id, name in images]
        atomic_write_text(model_folder / "cameras.txt", "# Camera list with one line of data per camera:\n"
                          "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n" + "\n".join(camera_lines) + "\n")
        atomic_write_text(model_folder / "images.txt", "# Image list with two lines of data per image:\n"
                          "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                          "#   POINTS2D[] as (X, Y, POINT3D_ID)\n" + "".join(image_lines))
        atomic_write_text(model_folder / "points3D.txt", "# 3D point list with one line of data per point:\n")
    logger.info("wrote %d image(s) as a COLMAP model (%s) to %s", len(images), "binary" if binary else "text",
                root)
    return folders
