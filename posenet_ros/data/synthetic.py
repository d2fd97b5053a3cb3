"""A synthetic indoor scene, ray-cast in numpy, with exact depth, intrinsics and camera poses.

No dataset can be downloaded in CI, so the package renders its own. The world frame is metric with z
up and the floor at z = 0. Two rooms share a partition wall with a doorway: room A (x < 7 m) is the
mapped area that training and test sequences move through; room B (x > 7 m) is only entered by the
"outside" sequences, which start in room A and leave the mapped area through the door (for the
loop-closure work). Surfaces are textured with photographs bundled with scikit-image and with
procedural patterns, tiled with mirroring and modulated by a smooth world-space field so no two places
look alike; shading is Lambertian from point lights (view independent, no shadows), so a surface looks
the same from every viewpoint.

Cameras follow the OpenCV convention (x right, y down, z forward); poses are `world_from_cam` 4x4
(camera to world) and depth is the z coordinate in the camera frame in metres.

Scenes that differ (`SceneConfig`; the defaults give the original scene): `world_axes` writes the
poses in a rotated world frame (`z_up`: the render frame itself; `y_down`: gravity along +y, as in
an OpenCV first camera or COLMAP model; `y_up`: OpenGL / NeRF style), `room_scale` multiplies every
length (room, furniture, camera paths, depth) and `heading_deg` keeps the cameras' heading (about the
up axis, from the render frame's +x) in a range instead of looking outwards around their loops.

Rendering one 640x480 frame takes a few hundred milliseconds on one core (`posenet-ros synth` prints
the measured time).

Sequences of a scene (split names as the layout writers use them):
- `train`: loops around room A at several radii, heights and viewing directions;
- `test`: loops between the training ones, at other heights and yaw offsets (same places, other
  viewpoints);
- `outside`: from room A through the door into room B (`in_map` is False once past the partition);
- `val`: more loops between the training ones (like `test`), held out for calibrating the
  uncertainty (`posenet-ros calibrate --split val`);
- one sequence per photometric variation (`lighting`, `blur`, `occlusion`): the first test sequence's
  poses rendered with that change.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from tqdm import tqdm

from posenet_ros.core.atomic_io import atomic_write_json
from posenet_ros.core.camera import Intrinsics
from posenet_ros.core.config import config_to_dict
from posenet_ros.core.progress import progress_bar
from posenet_ros.data.cambridge import write_cambridge
from posenet_ros.data.colmap import write_colmap
from posenet_ros.data.frames import RenderedFrame, SequenceToWrite
from posenet_ros.data.nerf import write_nerf
from posenet_ros.data.seven_scenes import INTRINSICS_TXT, write_seven_scenes
from posenet_ros.data.tum import write_tum

logger = logging.getLogger(__name__)

VARIATIONS: tuple[str, ...] = ("lighting", "blur", "occlusion")
# Rotation world_from_render of each `SceneConfig.world_axes` (columns: the render x, y, z axes).
WORLD_AXES: dict[str, np.ndarray] = {
    "z_up": np.eye(3),
    "y_down": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
    "y_up": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
}

ROOM_MIN = np.array([0.0, 0.0, 0.0])
ROOM_MAX = np.array([12.0, 6.0, 3.0])
PARTITION_X = 7.0  # the partition wall's centre plane; room A (mapped) is x < PARTITION_X
_PARTITION_HALF_THICKNESS = 0.1
_DOOR_Y = (2.4, 3.6)
_DOOR_HEIGHT = 2.2
_ROOM_A_CENTRE = np.array([3.5, 3.0])
_ROOM_B_CENTRE = np.array([9.5, 3.0])
_LOOP_RADII = np.array([2.0, 1.6])  # largest loop half-axes in room A (x, y), metres
_TILE = 512  # texture tile side in texels
_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
           "hubble_deep_field", "immunohistochemistry", "moon", "rocket", "clock", "cell", "retina")


@dataclass
class SceneConfig:
    """What `posenet-ros synth` renders. Every random choice derives from `seed`."""

    seed: int = 0
    width: int = 640
    height: int = 480
    hfov_deg: float = 57.4  # 7-Scenes' Kinect: fx = 585 px at 640 px width
    frames_per_sequence: int = 120
    train_sequences: int = 3
    test_sequences: int = 1
    outside_sequences: int = 1
    val_sequences: int = 1
    variations: list[str] = field(default_factory=lambda: list(VARIATIONS))
    # The world frame the poses are written in (a fixed rotation of the render frame, which has z up):
    # z_up (the render frame), y_down (render z -> world -y), y_up (render z -> world +y).
    world_axes: Literal["z_up", "y_down", "y_up"] = "z_up"
    room_scale: float = 1.0  # every length of the scene times this (room 12 x 6 x 3 m at 1)
    # [] : cameras look outwards around their loops (every heading); [lo, hi]: the heading about the up
    # axis (degrees from the render frame's +x, counter-clockwise seen from above) stays in lo..hi
    heading_deg: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"image size {self.width}x{self.height} is too small (8x8 at least)")
        if not 10.0 <= self.hfov_deg <= 150.0:
            raise ValueError(f"hfov_deg={self.hfov_deg} is outside 10..150 degrees")
        if self.frames_per_sequence < 2:
            raise ValueError("frames_per_sequence must be at least 2")
        if self.train_sequences < 1 or min(self.test_sequences, self.outside_sequences,
                                           self.val_sequences) < 0:
            raise ValueError("a scene needs at least one training sequence and non-negative counts")
        unknown = sorted(set(self.variations) - set(VARIATIONS))
        if unknown:
            raise ValueError(f"unknown variation(s) {unknown}; choose from {list(VARIATIONS)}")
        if self.variations and self.test_sequences < 1:
            raise ValueError("photometric variations re-render a test sequence: test_sequences >= 1")
        if self.world_axes not in WORLD_AXES:
            raise ValueError(f"unknown world_axes {self.world_axes!r}; choose from {sorted(WORLD_AXES)}")
        if not (math.isfinite(self.room_scale) and 0.01 <= self.room_scale <= 100.0):
            raise ValueError(f"room_scale={self.room_scale} is outside 0.01..100")
        if self.heading_deg and not (len(self.heading_deg) == 2
                                     and 0.0 < self.heading_deg[1] - self.heading_deg[0] <= 360.0):
            raise ValueError(f"heading_deg={self.heading_deg} must be [] or [lo, hi] with "
                             "lo < hi <= lo + 360")

    def world_from_render(self) -> np.ndarray:
        """The 4x4 similarity from the render frame (metres at room_scale 1, z up) to the world frame
        the poses are written in: rotation `world_axes`, scale `room_scale`."""
        transform = np.eye(4)
        transform[:3, :3] = WORLD_AXES[self.world_axes] * self.room_scale
        return transform


@dataclass(frozen=True)
class Box:
    """A solid box: centre (3,), half extents (3,) along its own axes, yaw about world z (rad)."""

    centre: np.ndarray
    half_size: np.ndarray
    yaw: float
    material: int


@dataclass(frozen=True)
class Lighting:
    """Point lights (positions (L, 3), metres; RGB intensities (L, 3)) and an RGB ambient term."""

    positions: np.ndarray
    intensities: np.ndarray
    ambient: np.ndarray


@dataclass
class SequencePlan:
    """A sequence to render: its split name, camera poses, per-frame in-map flags, variation."""

    split: str
    world_from_cam: list[np.ndarray]
    in_map: list[bool]
    variation: str | None = None


def camera_pose(position: np.ndarray, yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """world_from_cam (4x4) of an OpenCV camera at `position` looking along yaw (about +z from +x)
    and pitch (positive up), rolled about its optical axis (radians)."""
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = math.cos(roll), math.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    world_from_cam = np.eye(4)
    world_from_cam[:3, 0], world_from_cam[:3, 1], world_from_cam[:3, 2] = right, down, forward
    world_from_cam[:3, 3] = position
    return world_from_cam


def in_mapped_area(position: np.ndarray) -> bool:
    """Whether a camera position (metres) lies in room A, the area training sequences cover."""
    return bool(position[0] < PARTITION_X)


class SyntheticScene:
    """The two-room scene of a SceneConfig: geometry, materials, lights and sequence plans."""

    def __init__(self, config: SceneConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        fx = 0.5 * config.width / math.tan(math.radians(config.hfov_deg) / 2.0)
        self.intrinsics = Intrinsics(config.width, config.height, fx, fx,
                                     (config.width - 1) / 2.0, (config.height - 1) / 2.0)
        self.atlas, self.texels_per_metre = _make_atlas(rng)
        n_materials = len(self.texels_per_metre)
        order = rng.permutation(n_materials)
        # Room surfaces: material per (face, room); faces are -x, +x, -y, +y, floor, ceiling.
        self.room_materials = order[:12].reshape(6, 2)
        self.boxes = _make_boxes(rng, order[12:])
        self.occluder_material = int(order[-1])
        self.lighting = Lighting(
            positions=np.array([[3.5, 3.0, 2.8], [9.5, 3.0, 2.8], [1.0, 1.0, 2.5]]),
            intensities=np.array([[0.9, 0.88, 0.85], [0.8, 0.85, 0.9], [0.35, 0.35, 0.3]]),
            ambient=np.array([0.35, 0.35, 0.37]),
        )
        waves = rng.normal(size=(3, 3))
        waves *= rng.uniform(0.8, 1.6, (3, 1)) / np.linalg.norm(waves, axis=1, keepdims=True)
        self._field_dirs = waves
        self._field_phases = rng.uniform(0, 2 * math.pi, 3)
        self._pixel_rays_N3 = _pixel_rays(self.intrinsics)
        self.world_from_render = config.world_from_render()
        self._render_from_world = np.linalg.inv(self.world_from_render)
        self.sequences = [_in_world(plan, self.world_from_render) for plan in _plan_sequences(config, rng)]

    def render(self, world_from_cam: np.ndarray, variation: str | None = None,
               frame_seed: int = 0) -> RenderedFrame:
        """Render RGB (uint8 HxWx3) and depth (float32 HxW, metres) seen from `world_from_cam`, a
        camera pose in the scene's world frame (`SceneConfig.world_axes`, `room_scale`).

        `variation` applies one photometric change ('lighting', 'blur', 'occlusion'); its random
        parameters derive from the scene seed and `frame_seed`.
        """
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 7919, frame_seed])
        render_from_cam = self._render_from_world @ world_from_cam
        scale = cfg.room_scale
        rotation = (render_from_cam[:3, :3] * scale).astype(np.float32)  # undo the scale: a rotation
        origin = render_from_cam[:3, 3].astype(np.float32)
        render_pose = np.eye(4)
        render_pose[:3, :3], render_pose[:3, 3] = rotation, origin
        dirs_N3 = self._pixel_rays_N3 @ rotation.T
        boxes = list(self.boxes)
        if variation == "occlusion":
            boxes.append(_occluder_box(render_pose, rng, self.occluder_material))
        t_N, normal_N3, material_N, uv_N2 = _trace(origin, dirs_N3, self.room_materials, boxes)
        points_N3 = origin + t_N[:, None] * dirs_N3
        lighting = _changed_lighting(self.lighting, rng) if variation == "lighting" else self.lighting
        albedo_N3 = self._albedo(material_N, uv_N2, points_N3)
        shade_N3 = _shade(points_N3, normal_N3, lighting)
        rgb = np.clip(albedo_N3 * shade_N3 * 255.0, 0, 255).astype(np.uint8)
        rgb_HW3 = rgb.reshape(cfg.height, cfg.width, 3)
        if variation == "blur":
            rgb_HW3 = _motion_blur(rgb_HW3, rng)
        depth_HW = (t_N.reshape(cfg.height, cfg.width) * scale).astype(np.float32)
        return RenderedFrame(rgb_HW3=rgb_HW3, depth_HW=depth_HW, world_from_cam=world_from_cam.copy())

    def frames(self, plan: SequencePlan, plan_index: int, timings: list[float] | None = None
               ) -> Iterator[RenderedFrame]:
        """Render a sequence plan frame by frame (a generator), appending seconds per frame to
        `timings` when given."""
        for i, pose in enumerate(plan.world_from_cam):
            start = time.perf_counter()
            frame = self.render(pose, plan.variation, frame_seed=plan_index * 100_003 + i)
            if timings is not None:
                timings.append(time.perf_counter() - start)
            yield frame

    def sequences_to_write(self, timings: list[float] | None = None) -> list[SequenceToWrite]:
        """The scene's sequences as the layout writers take them (frames rendered lazily)."""
        return [SequenceToWrite(split=p.split, frames=self.frames(p, i, timings))
                for i, p in enumerate(self.sequences)]

    def _albedo(self, material_N: np.ndarray, uv_N2: np.ndarray, points_N3: np.ndarray) -> np.ndarray:
        texels = uv_N2 * self.texels_per_metre[material_N][:, None]
        period = 2 * _TILE
        mirrored = np.mod(texels, period)
        mirrored = np.where(mirrored >= _TILE, period - 1 - mirrored, mirrored)
        shape = (-1, self.config.width)  # OpenCV maps must be under 32767 pixels a side
        map_x = mirrored[:, 0].astype(np.float32).reshape(shape)
        map_y = (mirrored[:, 1] + material_N * _TILE).astype(np.float32).reshape(shape)
        sampled = cv2.remap(self.atlas, map_x, map_y, cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT).reshape(-1, 3)
        field_N = np.sin(points_N3 @ self._field_dirs.T.astype(np.float32) + self._field_phases).mean(axis=1)
        return sampled.astype(np.float32) / 255.0 * (0.8 + 0.2 * field_N)[:, None]


def _pixel_rays(intrinsics: Intrinsics) -> np.ndarray:
    """Camera-frame ray directions (N, 3) with z = 1, one per pixel in row-major order."""
    u, v = np.meshgrid(np.arange(intrinsics.width, dtype=np.float32),
                       np.arange(intrinsics.height, dtype=np.float32))
    x = (u - intrinsics.cx) / intrinsics.fx
    y = (v - intrinsics.cy) / intrinsics.fy
    return np.stack([x, y, np.ones_like(x)], axis=-1).reshape(-1, 3)


def _trace(origin: np.ndarray, dirs_N3: np.ndarray, room_materials: np.ndarray, boxes: list[Box]):
    """Nearest hit along each ray: distance t (in units of the ray, = camera depth), surface normal
    (world), material index and surface coordinates (metres) for texturing.

    Works on rows of a (3, N) copy of the rays: per-axis operations on contiguous arrays are several
    times faster in numpy than reductions over the short last axis of an (N, 3) array.
    """
    dirs_3N = np.ascontiguousarray(dirs_N3.T)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_3N = 1.0 / dirs_3N
    # Inside the room: the exit distance on each axis; the nearest one is the wall that is hit.
    t_axes_3N = np.where(dirs_3N > 0, (ROOM_MAX[:, None] - origin[:, None]) * inv_3N,
                         (ROOM_MIN[:, None] - origin[:, None]) * inv_3N).astype(np.float32)
    t_axes_3N[~np.isfinite(t_axes_3N)] = np.inf
    axis_N = np.argmin(t_axes_3N, axis=0)
    t_N = np.min(t_axes_3N, axis=0)
    rows = np.arange(len(axis_N))
    positive = dirs_3N[axis_N, rows] > 0
    face_N = 2 * axis_N + positive  # 0: -x, 1: +x, 2: -y, 3: +y, 4: floor, 5: ceiling
    normal_N3 = np.zeros(dirs_N3.shape, np.float32)
    normal_N3[rows, axis_N] = np.where(positive, -1.0, 1.0)
    points_3N = origin[:, None] + t_N * dirs_3N
    room_N = (points_3N[0] >= PARTITION_X).astype(np.int64)
    material_N = room_materials[face_N, room_N]
    uv_N2 = _face_coordinates(points_3N, axis_N) + (face_N * 1.37)[:, None]
    for index, box in enumerate(boxes):
        _trace_box(origin, dirs_3N, box, index, t_N, normal_N3, material_N, uv_N2)
    return t_N, normal_N3, material_N, uv_N2


def _face_coordinates(points_3N: np.ndarray, axis_N: np.ndarray) -> np.ndarray:
    """In-plane coordinates (N, 2), metres, of points on faces whose normal is along `axis_N`."""
    x, y, z = points_3N
    u = np.where(axis_N == 0, y, x)
    v = np.where(axis_N == 2, y, z)
    return np.stack([u, v], axis=1).astype(np.float32)


def _trace_box(origin, dirs_3N, box: Box, index: int, t_N, normal_N3, material_N, uv_N2) -> None:
    """Update the nearest-hit arrays in place where rays hit `box` before anything else."""
    c, s = math.cos(box.yaw), math.sin(box.yaw)
    box_from_world = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    o = box_from_world @ (origin - box.centre).astype(np.float32)
    d_3N = (c * dirs_3N[0] + s * dirs_3N[1], -s * dirs_3N[0] + c * dirs_3N[1], dirs_3N[2])
    t_near = np.full_like(t_N, -np.inf)
    t_far = np.full_like(t_N, np.inf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for axis in range(3):
            inv = 1.0 / d_3N[axis]
            t1 = (-box.half_size[axis] - o[axis]) * inv
            t2 = (box.half_size[axis] - o[axis]) * inv
            np.fmax(t_near, np.fmin(t1, t2), out=t_near)
            np.fmin(t_far, np.fmax(t1, t2), out=t_far)
    hit = (t_near <= t_far) & (t_near > 1e-4) & (t_near < t_N)
    idx = np.nonzero(hit)[0]
    if len(idx) == 0:
        return
    t_hit = t_near[idx]
    d_hit_3K = np.stack([d[idx] for d in d_3N])
    local_points_3K = o[:, None] + t_hit * d_hit_3K
    # The entry face is the one whose slab the point lies on (largest |coordinate| / half size).
    axis = np.argmax(np.abs(local_points_3K) / box.half_size[:, None].astype(np.float32), axis=0)
    local_normal = np.zeros((len(idx), 3), dtype=np.float32)
    local_normal[np.arange(len(idx)), axis] = -np.sign(d_hit_3K[axis, np.arange(len(idx))])
    t_N[idx] = t_hit
    normal_N3[idx] = local_normal @ box_from_world  # rotate back to world
    material_N[idx] = box.material
    uv_N2[idx] = _face_coordinates(local_points_3K, axis) + (index * 0.71 + axis * 0.53)[:, None]


def _shade(points_N3: np.ndarray, normal_N3: np.ndarray, lighting: Lighting) -> np.ndarray:
    """Lambertian shading (N, 3): ambient plus point lights with soft distance fall-off."""
    shade = np.broadcast_to(lighting.ambient.astype(np.float32), points_N3.shape).copy()
    for position, intensity in zip(lighting.positions, lighting.intensities, strict=True):
        to_light = position.astype(np.float32) - points_N3
        distance = np.linalg.norm(to_light, axis=1)
        cosine = np.clip(np.einsum("ij,ij->i", to_light, normal_N3) / distance, 0.0, 1.0)
        shade += (cosine / (1.0 + 0.04 * distance**2))[:, None] * intensity.astype(np.float32)
    return shade


def _changed_lighting(base: Lighting, rng: np.random.Generator) -> Lighting:
    """A different time of day: dimmer ambient, moved and tinted lights."""
    tint = np.array([1.15, 0.95, 0.7]) if rng.random() < 0.5 else np.array([0.75, 0.85, 1.2])
    return Lighting(
        positions=base.positions + rng.uniform(-1.5, 1.5, base.positions.shape) * [1, 1, 0],
        intensities=base.intensities * tint * rng.uniform(0.6, 1.3),
        ambient=base.ambient * tint * 0.55,
    )


def _motion_blur(rgb_HW3: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur over about 3% of the image width in a random direction."""
    length = max(3, round(0.03 * rgb_HW3.shape[1]) | 1)
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    rotation = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    return cv2.filter2D(rgb_HW3, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def _occluder_box(world_from_cam: np.ndarray, rng: np.random.Generator, material: int) -> Box:
    """An object held in front of the camera covering roughly a third of the view."""
    side = rng.choice([-1.0, 1.0])
    in_cam = np.array([side * rng.uniform(0.12, 0.2), rng.uniform(-0.05, 0.1), rng.uniform(0.55, 0.7)])
    centre = world_from_cam[:3, :3] @ in_cam + world_from_cam[:3, 3]
    forward = world_from_cam[:3, 2]
    return Box(centre=centre, half_size=np.array([0.12, 0.12, 0.22]),
               yaw=math.atan2(forward[1], forward[0]), material=material)


def _make_boxes(rng: np.random.Generator, materials: np.ndarray) -> list[Box]:
    """The partition wall with its doorway, then furniture along the walls of both rooms."""
    wall_x = PARTITION_X
    t = _PARTITION_HALF_THICKNESS
    y0, y1 = _DOOR_Y
    top = ROOM_MAX[2]
    m = [int(v) for v in materials]
    boxes = [
        Box(np.array([wall_x, y0 / 2, top / 2]), np.array([t, y0 / 2, top / 2]), 0.0, m[0]),
        Box(np.array([wall_x, (y1 + ROOM_MAX[1]) / 2, top / 2]),
            np.array([t, (ROOM_MAX[1] - y1) / 2, top / 2]), 0.0, m[1]),
        Box(np.array([wall_x, (y0 + y1) / 2, (_DOOR_HEIGHT + top) / 2]),
            np.array([t, (y1 - y0) / 2, (top - _DOOR_HEIGHT) / 2]), 0.0, m[2]),
    ]
    # Furniture slots clear of every camera path (loops in room A fill x 1.3..5.7, y 1.2..4.8;
    # the outside path runs along y = 3 and loops around room B's centre within 1.3 m).
    slots = [(0.75, 0.75), (0.75, 5.25), (6.1, 0.75), (6.1, 5.25), (3.5, 0.55), (3.5, 5.45),
             (0.55, 3.0), (7.9, 0.8), (11.2, 0.8), (11.2, 5.2), (7.9, 5.2), (11.45, 3.0)]
    for i, (x, y) in enumerate(slots):
        half_xy = rng.uniform(0.2, 0.35, 2)
        height = rng.uniform(0.4, 1.8)
        boxes.append(Box(np.array([x, y, height / 2]), np.array([*half_xy, height / 2]),
                         float(rng.uniform(-0.4, 0.4)), m[3 + i % (len(m) - 4)]))
    return boxes


def _make_atlas(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Texture tiles stacked vertically (uint8 (M*TILE, TILE, 3)) and texels per metre (M,)."""
    import skimage.data

    tiles = []
    for name in _PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        if image.dtype != np.uint8:
            image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        image = image[..., :3].astype(np.float32)
        if np.allclose(image[..., 0], image[..., 1]):
            image *= rng.uniform(0.55, 1.0, 3)  # tint grey photographs
        side = min(image.shape[:2])
        y0, x0 = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        tiles.append(cv2.resize(image[y0:y0 + side, x0:x0 + side], (_TILE, _TILE),
                                interpolation=cv2.INTER_AREA))
    for _ in range(9):
        tiles.append(_procedural_tile(rng))
    atlas = np.clip(np.concatenate(tiles, axis=0), 0, 255).astype(np.uint8)
    metres_per_tile = rng.uniform(1.2, 2.4, len(tiles))
    return atlas, (_TILE / metres_per_tile).astype(np.float32)


def _procedural_tile(rng: np.random.Generator) -> np.ndarray:
    """A random procedural texture (float32 (TILE, TILE, 3), 0..255): multi-octave value noise,
    stripes or a noisy checkerboard, in two random colours."""
    noise = np.zeros((_TILE, _TILE), np.float32)
    for octave in range(2, 7):
        cells = 2**octave
        grid = rng.random((cells, cells)).astype(np.float32)
        noise += cv2.resize(grid, (_TILE, _TILE), interpolation=cv2.INTER_CUBIC) / 1.6 ** octave
    noise = (noise - noise.min()) / (np.ptp(noise) + 1e-6)
    kind = rng.integers(3)
    coords = np.arange(_TILE, dtype=np.float32) / _TILE
    if kind == 1:
        period = rng.integers(4, 12)
        pattern = 0.5 + 0.5 * np.sin(2 * math.pi * period * coords)[None, :] * np.ones((_TILE, 1))
        noise = 0.6 * pattern + 0.4 * noise
    elif kind == 2:
        cells = rng.integers(3, 9)
        check = ((np.floor(coords * cells)[:, None] + np.floor(coords * cells)[None, :]) % 2)
        noise = 0.6 * check + 0.4 * noise
    colour_a, colour_b = rng.uniform(20, 235, (2, 3))
    return (colour_a + noise[..., None] * (colour_b - colour_a)).astype(np.float32)


def _in_world(plan: SequencePlan, world_from_render: np.ndarray) -> SequencePlan:
    """A plan of render-frame poses with its poses in the world frame (a new list: plans may share one).

    world_from_cam = world_from_render @ render_from_cam with the rotation's scale divided out."""
    scale = np.cbrt(np.linalg.det(world_from_render[:3, :3]))
    poses = []
    for render_from_cam in plan.world_from_cam:
        pose = world_from_render @ render_from_cam
        pose[:3, :3] /= scale
        poses.append(pose)
    return SequencePlan(split=plan.split, world_from_cam=poses, in_map=plan.in_map, variation=plan.variation)


def _plan_sequences(config: SceneConfig, rng: np.random.Generator) -> list[SequencePlan]:
    """The sequences' camera poses in the render frame (z up, room_scale 1)."""
    n = config.frames_per_sequence
    plans = []
    heading = tuple(math.radians(h) for h in config.heading_deg) or None
    train_scales = np.linspace(0.45, 1.0, config.train_sequences) if config.train_sequences > 1 else [0.75]
    for k, scale in enumerate(train_scales):
        plans.append(_loop_plan("train", n, rng, scale=scale, height=1.35 + 0.15 * (k % 3 - 1),
                                yaw_offset=math.radians(25.0) * (k % 3 - 1), heading=heading))
    test_loops = range(config.test_sequences)
    plans.extend(_test_loop_plan(k, n, rng, heading) for k in test_loops[:1])
    for _ in range(config.outside_sequences):
        plans.append(_outside_plan(n, rng))
    for k in range(config.val_sequences):  # drawn after the others: adding them changes no other sequence
        scale = 0.5 + 0.45 * (k + 0.25) / max(config.val_sequences, 1)
        plans.append(_loop_plan("val", n, rng, scale=scale, height=1.45 + 0.1 * (k % 2),
                                yaw_offset=math.radians(-8.0 - 7.0 * k), heading=heading))
    first_test = next((p for p in plans if p.split == "test"), None)
    for variation in config.variations:
        plans.append(SequencePlan(split=variation, world_from_cam=first_test.world_from_cam,
                                  in_map=first_test.in_map, variation=variation))
    # Further test loops come last, so that adding them changes no other sequence (nor its frame seeds).
    plans.extend(_test_loop_plan(k, n, rng, heading) for k in test_loops[1:])
    return plans


def _test_loop_plan(k: int, n: int, rng: np.random.Generator,
                    heading: tuple[float, float] | None = None) -> SequencePlan:
    """Test loop k: between the training loops, its radius scale at the van der Corput point k of
    [0.55, 0.95] (0.75, 0.65, 0.85, 0.6, ...), so that adding loops keeps the earlier ones."""
    fraction, base, rest = 0.0, 0.5, k + 1
    while rest:
        fraction, base, rest = fraction + base * (rest % 2), base / 2, rest // 2
    return _loop_plan("test", n, rng, scale=0.55 + 0.4 * fraction, height=1.5 - 0.1 * (k % 2),
                      yaw_offset=math.radians(12.0 + 7.0 * k), heading=heading)


def _smooth_wiggle(rng: np.random.Generator, phases: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth periodic perturbation at `phases` (radians): three sinusoids of integer frequency."""
    freqs = rng.integers(1, 5, 3)
    shifts = rng.uniform(0, 2 * math.pi, 3)
    weights = rng.uniform(0.5, 1.0, 3)
    wiggle = sum(w * np.sin(f * phases + s) for f, s, w in zip(freqs, shifts, weights, strict=True))
    return amplitude * wiggle / weights.sum()


def _loop_plan(split: str, n: int, rng: np.random.Generator, scale: float, height: float,
               yaw_offset: float, heading: tuple[float, float] | None = None) -> SequencePlan:
    """A closed loop around room A's centre; the camera looks outwards, sweeping left and right, or,
    with `heading` (lo, hi radians), sweeps its heading within lo..hi (twice per loop, shifted by
    `yaw_offset`)."""
    phases = np.linspace(0.0, 2 * math.pi, n, endpoint=False) + rng.uniform(0, 2 * math.pi)
    radii = _LOOP_RADII * scale
    x = _ROOM_A_CENTRE[0] + (radii[0] + _smooth_wiggle(rng, phases, 0.12)) * np.cos(phases)
    y = _ROOM_A_CENTRE[1] + (radii[1] + _smooth_wiggle(rng, phases, 0.12)) * np.sin(phases)
    z = height + _smooth_wiggle(rng, phases, 0.1)
    yaw = phases + yaw_offset + _smooth_wiggle(rng, phases, 0.6)
    if heading is not None:
        lo, hi = heading
        sweep = 0.5 + 0.45 * np.sin(2.0 * (phases + yaw_offset)) + 0.05 * np.sin(phases - yaw_offset)
        yaw = lo + (hi - lo) * sweep
    pitch = math.radians(-12.0) + _smooth_wiggle(rng, phases, math.radians(8.0))
    roll = _smooth_wiggle(rng, phases, math.radians(3.0))
    poses = [camera_pose(np.array([x[i], y[i], z[i]]), yaw[i], pitch[i], roll[i]) for i in range(n)]
    return SequencePlan(split=split, world_from_cam=poses, in_map=[in_mapped_area(p[:3, 3]) for p in poses])


def _outside_plan(n: int, rng: np.random.Generator) -> SequencePlan:
    """From room A through the doorway into room B and around it, looking roughly ahead."""
    waypoints = np.array([[2.4, 3.0], [4.5, 3.0], [6.2, 3.0], [7.8, 3.0], [9.5, 1.9], [10.6, 3.0],
                          [9.5, 4.1], [8.4, 3.0], [9.5, 2.0]])
    segment = np.linalg.norm(np.diff(waypoints, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(segment)])
    s = np.linspace(0.0, arc[-1], n)
    xy = np.stack([np.interp(s, arc, waypoints[:, 0]), np.interp(s, arc, waypoints[:, 1])], axis=1)
    kernel = np.hanning(max(3, n // 10))
    padded = np.pad(xy, ((len(kernel), len(kernel)), (0, 0)), mode="edge")
    smooth = np.stack([np.convolve(padded[:, i], kernel / kernel.sum(), mode="same") for i in range(2)], 1)
    xy = smooth[len(kernel):-len(kernel)]
    heading = np.unwrap(np.arctan2(*np.gradient(xy, axis=0)[:, ::-1].T))
    phases = np.linspace(0.0, 2 * math.pi, n)
    z = 1.45 + _smooth_wiggle(rng, phases, 0.08)
    yaw = heading + _smooth_wiggle(rng, phases, 0.35)
    pitch = math.radians(-10.0) + _smooth_wiggle(rng, phases, math.radians(6.0))
    poses = [camera_pose(np.array([xy[i, 0], xy[i, 1], z[i]]), yaw[i], pitch[i]) for i in range(n)]
    return SequencePlan(split="outside", world_from_cam=poses,
                        in_map=[in_mapped_area(p[:3, 3]) for p in poses])


def distortion_maps(intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of a distorted image (K and OpenCV `distortion` of `intrinsics`) lies in the
    pinhole image of the same K: (map_x, map_y), float32 HxW pixel coordinates for cv2.remap.

    Remapping a pinhole render with these maps gives the image the distorted lens would see, so that
    undistorting it to K (cv2.undistort) recovers the render up to interpolation.
    """
    u, v = np.meshgrid(np.arange(intrinsics.width), np.arange(intrinsics.height))
    points = np.stack([u, v], axis=-1).reshape(-1, 1, 2).astype(np.float64)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    K = intrinsics.matrix()
    distortion = np.asarray(intrinsics.distortion)
    iterated = getattr(cv2, "undistortPointsIter", None)  # OpenCV 4; OpenCV 5 has it in undistortPoints
    pinhole = (iterated(points, K, distortion, None, K, criteria) if iterated is not None
               else cv2.undistortPoints(points, K, distortion, R=None, P=K, criteria=criteria))
    maps = pinhole.reshape(intrinsics.height, intrinsics.width, 2).astype(np.float32)
    return maps[..., 0], maps[..., 1]


def distorted_frames(frames: Iterator[RenderedFrame], maps: tuple[np.ndarray, np.ndarray]
                     ) -> Iterator[RenderedFrame]:
    """Frames as a distorted lens sees them (`distortion_maps`): colour bilinear (edges replicated
    where the lens sees past the render), depth nearest (0 there)."""
    for frame in frames:
        rgb = cv2.remap(frame.rgb_HW3, *maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        depth = cv2.remap(frame.depth_HW, *maps, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0.0)
        yield RenderedFrame(rgb_HW3=rgb, depth_HW=depth, world_from_cam=frame.world_from_cam)


_WRITERS = {
    "7scenes": write_seven_scenes,
    # the 7-Scenes layout as users bring it: JPEG colour with camera-intrinsics.txt; RGB only; one flat
    # folder of frames like the shared 7-Scenes excerpt (JPEG, camera-intrinsics.txt, depth)
    "7scenes-jpg": partial(write_seven_scenes, color="jpg", intrinsics_file=INTRINSICS_TXT),
    "7scenes-rgb": partial(write_seven_scenes, depth=False),
    "7scenes-flat": partial(write_seven_scenes, color="jpg", intrinsics_file=INTRINSICS_TXT, flat=True),
    "cambridge": write_cambridge,
    "tum": write_tum,
    "colmap": write_colmap,  # every sequence in one text model, images in <split>-NN/ folders
    "nerf": partial(write_nerf, split_files=True, depth=True),  # transforms_<split>.json, uint16 mm depth
}
SYNTHETIC_LAYOUTS = tuple(_WRITERS)
"""The layouts `write_synthetic_scene` (and `posenet-ros synth --layout`) writes."""

SINGLE_RECORDING_LAYOUTS = ("7scenes-flat", "tum")
"""Layouts of one recording without split files: the sequences are written one after another and the
readers split them by time blocks (data/splits.py TEST_BLOCKS)."""


def write_synthetic_scene(config: SceneConfig, layout: str, out: Path, progress: bool = True,
                          distortion: tuple[float, ...] = ()) -> dict:
    """Render the scene of `config` into `out` in a dataset layout (`SYNTHETIC_LAYOUTS`), with
    `synthetic.json` beside it.

    `synthetic.json` records the resolved config, intrinsics, each sequence's split and per-frame
    `in_map` flags, and the measured render time. Returns that summary. `out` must not exist or be
    empty, so frames of an earlier, larger scene are never mixed in. The single-recording layouts
    (`SINGLE_RECORDING_LAYOUTS`) write all sequences in order as one recording (each sequence's
    `first_frame` in the summary); their splits are then the readers' time blocks, not the
    sequences' split names. `distortion`: OpenCV k1 k2 p1 p2 [k3]; the frames are rendered with the
    pinhole K and then distorted (`distortion_maps`), and the dataset's intrinsics carry K and these
    coefficients.
    """

    if layout not in _WRITERS:
        raise ValueError(f"unknown layout {layout!r}; choose from {sorted(_WRITERS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new output folder")
    scene = SyntheticScene(config)
    intrinsics = replace(scene.intrinsics, distortion=tuple(distortion))
    maps = distortion_maps(intrinsics) if intrinsics.distorted else None
    timings: list[float] = []
    total = sum(len(p.world_from_cam) for p in scene.sequences)
    with progress_bar(total=total, desc=f"render {layout}", unit="frame", disable=not progress) as bar:
        sequences = scene.sequences_to_write(timings)
        for sequence in sequences:
            sequence.frames = _counted(sequence.frames, bar)
            if maps is not None:
                sequence.frames = distorted_frames(sequence.frames, maps)
        folders = _WRITERS[layout](out, sequences, intrinsics)
    if layout in SINGLE_RECORDING_LAYOUTS:
        folders = [out] * len(scene.sequences)
    first_frames = np.cumsum([0] + [len(plan.world_from_cam) for plan in scene.sequences])[:-1]
    summary = {
        "layout": layout,
        "config": config_to_dict(config),
        "intrinsics": intrinsics.to_dict(),
        "mapped_area": {"description": "room A: camera x below partition_x (metres)",
                        "partition_x": PARTITION_X},
        "sequences": [{"folder": str(Path(folder).relative_to(out)), "split": plan.split,
                       "variation": plan.variation, "frames": len(plan.world_from_cam),
                       "in_map": plan.in_map,
                       **({"first_frame": int(first)} if layout in SINGLE_RECORDING_LAYOUTS else {})}
                      for folder, plan, first in zip(folders, scene.sequences, first_frames, strict=True)],
        "frames": total,
        "render_seconds_per_frame": float(np.mean(timings)) if timings else None,
    }
    atomic_write_json(out / "synthetic.json", summary)
    return summary


def _counted(frames: Iterator[RenderedFrame], bar: tqdm) -> Iterator[RenderedFrame]:
    for frame in frames:
        yield frame
        bar.update()
