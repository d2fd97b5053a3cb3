"""Decode cache: every frame of a training set decoded once, at the training resolution, into
memory-mapped files, so that epochs after the first read pixels instead of decoding PNG/JPEG files.

What is stored: each frame's colour image resized as `FrameTransform.resize` resizes it (shorter side
in pixels; cv2 area resampling when shrinking, linear when enlarging, exactly as `CropBox.apply_rgb`
does before its crop) as uint8 RGB (h, w, 3), and, when the method uses depth, its depth in float32
metres (h, w) resized with exact nearest neighbour (as `CropBox.apply_depth`), 0 = invalid. The random
crop and the colour jitter are applied afterwards, per item and epoch, so augmentation still varies;
an item from the cache is identical to the one decoded directly from the files.

Layout: `<folder>/<key>/` holds `rgb.u8` and `depth.f32` (all frames one after another, raw arrays a
numpy memmap reads) and `index.json` (per frame: source size, resized size, offsets). The key is a hash
of what the pixels depend on: for every record the path, size and modification time (ns) of its
colour and depth sources (for a frame in a rosbag2: the bag's files, the topic and the message
times), its intrinsics and depth unit, plus the resize and whether depth is stored. A changed source
gives a new key, so a stale cache is never read. The arrays are written through temporary files
renamed into place (core/atomic_io.py) and `index.json` last: a build interrupted at any point leaves
no index, and a folder without its index is rebuilt, never trusted.

The memmaps are opened lazily in the process that reads them (each DataLoader worker opens its own),
and are not pickled with the dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from posenet_ros.core.atomic_io import atomic_output, atomic_write_json
from posenet_ros.core.camera import FrameTransform, crop_box
from posenet_ros.core.progress import progress_bar
from posenet_ros.data.frames import BagMessage, DatasetError, FrameRecord

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
INDEX_FILE = "index.json"
RGB_FILE = "rgb.u8"
DEPTH_FILE = "depth.f32"

Decoder = Callable[[FrameRecord, bool], tuple[np.ndarray, "np.ndarray | None"]]
"""(record, with_depth) -> (uint8 RGB (H, W, 3), float32 depth in metres (H, W) or None), at the
source's size: how the dataset decodes one frame (`dataset.decode_frame`)."""


@dataclass(frozen=True)
class CachedFrame:
    """Where one frame lies in the cache: its source size (px), its stored (resized) size (px) and the
    element offsets of its colour and depth arrays in the flat files."""

    width: int
    height: int
    new_width: int
    new_height: int
    rgb_offset: int
    depth_offset: int


def _stat_key(path: Path) -> list:
    try:
        stat = path.stat()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _bag_files_key(bag: Path, memo: dict[Path, list]) -> list:
    """The stat keys of the files of a rosbag2 (the folder's files, or the single .mcap/.db3)."""
    if bag not in memo:
        files = sorted(p for p in bag.iterdir() if p.is_file()) if bag.is_dir() else [bag]
        memo[bag] = [_stat_key(p) for p in files]
    return memo[bag]


def _source_key(source: Path | BagMessage | None, memo: dict[Path, list]) -> list | None:
    if source is None:
        return None
    if isinstance(source, BagMessage):
        return [_bag_files_key(Path(source.bag), memo), source.topic, source.log_time_ns, source.stamp_ns]
    return _stat_key(Path(source))


def cache_key(records: Sequence[FrameRecord], resize: int | None, with_depth: bool) -> str:
    """A hash of everything the cached pixels depend on (module docstring); stats every source file."""
    memo: dict[Path, list] = {}
    parts = []
    for record in records:
        parts.append([_source_key(record.image_path, memo),
                      _source_key(record.depth_path, memo) if with_depth else None,
                      record.intrinsics.to_dict() if record.intrinsics is not None else None,
                      record.depth_unit_m,
                      record.depth_intrinsics.to_dict() if record.depth_intrinsics is not None else None])
    text = json.dumps({"version": CACHE_VERSION, "resize": resize, "with_depth": with_depth, "frames": parts})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


class DecodeCache:
    """The decoded frames of `records` at `resize` (shorter side, px; None = source size) in a folder
    under `folder` (module docstring). `build` fills it if needed; `rgb(i)` / `depth(i)` read frame `i`
    (the order of `records`) without decoding; `frame(i)` says its sizes."""

    def __init__(self, records: Sequence[FrameRecord], resize: int | None, folder: str | Path,
                 with_depth: bool) -> None:
        self.records = list(records)
        self.resize = resize
        self.with_depth = bool(with_depth)
        self.key = cache_key(self.records, resize, self.with_depth)
        self.path = Path(folder) / self.key
        self.frames: list[CachedFrame] = []
        self._arrays: tuple[int, np.ndarray, np.ndarray | None] | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = None  # memmaps are reopened by the process that reads them
        return state

    def is_built(self) -> bool:
        """Whether the folder holds a complete cache for this key (an index whose sizes match)."""
        index = self.path / INDEX_FILE
        if not index.is_file():
            return False
        try:
            values = json.loads(index.read_text(encoding="utf-8"))
            frames = [CachedFrame(**frame) for frame in values["frames"]]
            rgb_size, depth_size = int(values["rgb_elements"]), int(values["depth_elements"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if values.get("key") != self.key or len(frames) != len(self.records):
            return False
        if not (self.path / RGB_FILE).is_file() or (self.path / RGB_FILE).stat().st_size != rgb_size:
            return False
        if self.with_depth and (not (self.path / DEPTH_FILE).is_file()
                                or (self.path / DEPTH_FILE).stat().st_size != 4 * depth_size):
            return False
        self.frames = frames
        return True

    def build(self, decode: Decoder, progress: bool = True) -> bool:
        """Decode every frame with `decode` unless a complete cache exists; True if it was built now."""
        if self.is_built():
            logger.info("decode cache %s: %d frames (reused)", self.path, len(self.records))
            return False
        if self.path.exists():
            shutil.rmtree(self.path)  # an interrupted build: nothing in it is trusted
        self.path.mkdir(parents=True)
        logger.info("decode cache %s: decoding %d frames once (resize %s%s)", self.path, len(self.records),
                    self.resize, ", with depth" if self.with_depth else "")
        frames: list[CachedFrame] = []
        rgb_offset = depth_offset = 0
        with ExitStack() as stack:
            # streamed to temporary files renamed into place when every frame is written
            rgb_tmp = stack.enter_context(atomic_output(self.path / RGB_FILE))
            rgb_file = stack.enter_context(open(rgb_tmp, "wb"))
            depth_file = None
            if self.with_depth:
                depth_tmp = stack.enter_context(atomic_output(self.path / DEPTH_FILE))
                depth_file = stack.enter_context(open(depth_tmp, "wb"))
            bar = stack.enter_context(progress_bar(self.records, desc="decode cache", unit="frame",
                                                   disable=not progress))
            for record in bar:
                rgb, depth = decode(record, self.with_depth)
                height, width = rgb.shape[:2]
                box = crop_box(width, height, FrameTransform(resize=self.resize, crop=None))
                rgb = _resize(rgb, box.new_width, box.new_height,
                              cv2.INTER_AREA if box.new_width < width else cv2.INTER_LINEAR)
                rgb_file.write(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
                if depth_file is not None:
                    if depth is None:
                        raise DatasetError(f"{record.image_path}: the decode cache stores depth but the "
                                           "frame has none")
                    depth = _resize(depth, box.new_width, box.new_height, cv2.INTER_NEAREST_EXACT)
                    depth_file.write(np.ascontiguousarray(depth, dtype=np.float32).tobytes())
                frames.append(CachedFrame(width, height, box.new_width, box.new_height, rgb_offset,
                                          depth_offset))
                rgb_offset += box.new_width * box.new_height * 3
                depth_offset += box.new_width * box.new_height if self.with_depth else 0
        atomic_write_json(self.path / INDEX_FILE, {
            "key": self.key, "version": CACHE_VERSION, "resize": self.resize, "with_depth": self.with_depth,
            "rgb_elements": rgb_offset, "depth_elements": depth_offset,
            "frames": [frame.__dict__ for frame in frames]})
        self.frames = frames
        return True

    def _open(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._arrays is None or self._arrays[0] != os.getpid():
            if not self.frames:
                raise RuntimeError(f"decode cache {self.path} is not built; call build() first")
            rgb = np.memmap(self.path / RGB_FILE, dtype=np.uint8, mode="r")
            depth = (np.memmap(self.path / DEPTH_FILE, dtype=np.float32, mode="r") if self.with_depth
                     else None)
            self._arrays = (os.getpid(), rgb, depth)
        return self._arrays[1], self._arrays[2]

    def frame(self, index: int) -> CachedFrame:
        """The sizes and offsets of frame `index`."""
        return self.frames[index]

    def rgb(self, index: int) -> np.ndarray:
        """uint8 RGB (h, w, 3) of frame `index` at the cached size (a read-only view of the memmap)."""
        frame, (rgb, _) = self.frames[index], self._open()
        size = frame.new_width * frame.new_height * 3
        return rgb[frame.rgb_offset:frame.rgb_offset + size].reshape(frame.new_height, frame.new_width, 3)

    def depth(self, index: int) -> np.ndarray:
        """float32 depth in metres (h, w) of frame `index` at the cached size, 0 = invalid."""
        frame, (_, depth) = self.frames[index], self._open()
        if depth is None:
            raise RuntimeError(f"decode cache {self.path} holds no depth (built with with_depth=False)")
        size = frame.new_width * frame.new_height
        return depth[frame.depth_offset:frame.depth_offset + size].reshape(frame.new_height, frame.new_width)


def _resize(image: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=interpolation)
