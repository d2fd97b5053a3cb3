"""Relocalizer: a checkpoint turned into "image in, pose with uncertainty out". No ROS in here.

    relocalizer = Relocalizer("run/model.safetensors", device="auto")
    estimate = relocalizer.process(rgb_HW3, stamp_ns=stamp)   # -> PoseEstimate

Each frame is prepared exactly as `posenet-ros eval` prepares dataset frames (the checkpoint's
resize and centre crop), then runs through `uncertainty.estimate` (Monte-Carlo dropout with the
checkpoint's calibrated settings; its dropout masks are seeded by the frame's stamp, so the same frame
gives the same estimate in every runtime), and the loop-closure detector with hysteresis.
The ROS node, the DDS runtime and bag replay all call `process`; nothing else decides anything.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from posenet_ros.checkpoint import load_model
from posenet_ros.data.dataset import CropBox, crop_box
from posenet_ros.device import resolve_device
from posenet_ros.evaluation import eval_transform
from posenet_ros.loop_closure import LoopClosureConfig, LoopClosureDetector
from posenet_ros.scr_localization import input_intrinsics, localize
from posenet_ros.smoothing import CausalSmoother, head_inputs
from posenet_ros.uncertainty import calibrated, estimate

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16"]
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class PoseEstimate:
    """The relocalized camera pose of one frame.

    position_3 (metres) and quat_wxyz_4 (unit, w >= 0) of `world_from_cam` in the map frame;
    covariance_66 over (x, y, z, rot X, rot Y, rot Z) (metres², radians², rotations about the fixed
    map axes; see uncertainty.py), calibrated; epistemic_66 and aleatoric_66 its uncalibrated parts;
    `uncertainty_m` = √trace of the position block (metres); `known_place` the loop-closure flag and
    `score` its raw score (log epistemic spread; -inf without Monte-Carlo sampling); `timings_ms`
    per stage (preprocess, forward: network and sampling, summary: loop closure and copies).
    """

    stamp_ns: int
    position_3: np.ndarray
    quat_wxyz_4: np.ndarray
    covariance_66: np.ndarray
    epistemic_66: np.ndarray
    aleatoric_66: np.ndarray
    uncertainty_m: float
    known_place: bool
    score: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    # The temporal model's per-frame inputs (features (1, F), position_norm (1, 3), quat (1, 4)), kept
    # when the Relocalizer is built with keep_temporal_inputs (offline smoothing of a whole replay).
    temporal_inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # Scene coordinate regression (method scr): the inlier scene coordinates (N, 3) in the map frame,
    # metres, published as a PointCloud2 for RViz; None for pose regression.
    scene_points_N3: np.ndarray | None = None


class Relocalizer:
    """Loads a checkpoint once and estimates the pose of each frame given to `process`.

    device: "auto" | "cpu" | "cuda" | "cuda:N". precision: "fp32", or "fp16" / "bf16" autocast on
    CUDA. mc_samples: None = the checkpoint's (calibrated) setting, 0 = deterministic.
    loop_closure: overrides the checkpoint's thresholds. smoothing: run the checkpoint's causal temporal
    model when it has one (the pose and covariance become the smoothed ones; the state resets with
    `reset()` and after `smoothing_reset_unknown` consecutive unknown-place frames, 0 = never).
    """

    def __init__(self, model_path: str | Path, *, device: str = "auto", precision: Precision = "fp32",
                 mc_samples: int | None = None, loop_closure: LoopClosureConfig | None = None,
                 smoothing: bool = True, smoothing_reset_unknown: int = 10,
                 keep_temporal_inputs: bool = False) -> None:
        self.device = resolve_device(device)
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        if precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"precision {precision} needs a CUDA device; this one is {self.device}")
        self.precision = precision
        loaded = load_model(model_path, self.device)
        self.model = loaded.model
        self.model_path = loaded.path
        self.temporal = loaded.temporal
        self.temporal_calibration = loaded.temporal_calibration
        self.keep_temporal_inputs = keep_temporal_inputs
        self.map_poses_N7 = loaded.map_poses_N7
        self.calibrated = loaded.calibrated
        self.uncertainty = (loaded.uncertainty if mc_samples is None
                            else dataclasses.replace(loaded.uncertainty, mc_samples=mc_samples))
        self.loop_closure = loop_closure or loaded.loop_closure
        self.transform = eval_transform(loaded.config)
        self._detector = LoopClosureDetector(self.loop_closure)
        # The causal temporal model (smoothing.py) when the checkpoint has one and smoothing is on.
        self.smoother = (CausalSmoother(loaded.temporal, self.model, loaded.temporal_calibration,
                                        smoothing_reset_unknown)
                         if smoothing and loaded.temporal is not None else None)
        self.ransac = loaded.ransac if loaded.method == "scr" else None
        self.camera = loaded.camera
        if self.ransac is not None and self.camera is None:
            raise ValueError(f"{self.model_path} is a scene coordinate model without the training camera's "
                             "intrinsics; retrain it with this version of posenet_ros")
        if not self.calibrated:
            logger.warning("%s has no uncertainty calibration (run `posenet-ros calibrate`): covariances "
                           "are unscaled and every finite loop-closure score counts as a known place",
                           self.model_path)

    @property
    def needs_depth(self) -> bool:
        """Whether the model needs a depth image with every frame (an RGB-D model)."""
        return self.model.config.needs_depth

    def set_loop_closure(self, config: LoopClosureConfig) -> None:
        """Use other loop-closure thresholds from now on (the flag's history is kept)."""
        self.loop_closure = self._detector.config = config

    def reset(self) -> None:
        """Forget the stream's history (loop-closure hysteresis, temporal state), e.g. after a gap or
        on request."""
        self._detector.reset()
        if self.smoother is not None:
            self.smoother.reset()

    def prepare(self, rgb_HW3: np.ndarray, depth_HW: np.ndarray | None = None) -> torch.Tensor:
        """uint8 RGB (H, W, 3) [+ depth (H, W) in metres, 0 / NaN / inf = hole, for RGB-D models] ->
        the model's float32 input (1, C, h, w) on the device, prepared as evaluation prepares frames.
        Raises ValueError for an image that is not uint8 (H, W, 3) or is too small, and for a missing
        depth image or one of another size."""
        rgb = np.asarray(rgb_HW3)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB image as uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
        if rgb.shape[0] < 2 or rgb.shape[1] < 2:
            raise ValueError(f"image of {rgb.shape[1]}x{rgb.shape[0]} px is too small")
        box = crop_box(rgb.shape[1], rgb.shape[0], self.transform)
        channels = [box.apply_rgb(rgb).transpose(2, 0, 1)]
        if self.needs_depth:
            if depth_HW is None:
                raise ValueError(f"{self.model_path} is an RGB-D model: it needs a depth image with every "
                                 "frame")
            depth = np.asarray(depth_HW, dtype=np.float32)
            if depth.shape != rgb.shape[:2]:
                raise ValueError(f"depth image of shape {depth.shape} does not match the {rgb.shape[1]}x"
                                 f"{rgb.shape[0]} px colour image")
            channels.append(box.apply_depth(depth)[None])
        image = np.ascontiguousarray(np.concatenate(channels))
        return torch.from_numpy(image)[None].to(self.device, non_blocking=True)

    def process(self, rgb_HW3: np.ndarray, depth_HW: np.ndarray | None = None,
                stamp_ns: int = 0) -> PoseEstimate:
        """Estimate the pose of one frame. `depth_HW` (metres, holes 0 / NaN / inf) is required by
        RGB-D models (`needs_depth`) and ignored by RGB ones. Raises ValueError as `prepare` does.
        """
        start = time.perf_counter()
        images = self.prepare(rgb_HW3, depth_HW)
        prepared = time.perf_counter()
        if self.ransac is not None:
            rgb = np.asarray(rgb_HW3)
            box = crop_box(rgb.shape[1], rgb.shape[0], self.transform)
            return self._process_scene_coordinates(images, box, stamp_ns, start, prepared)
        autocast = torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES.get(self.precision, torch.float32),
                                  enabled=self.precision != "fp32")
        with torch.inference_mode(), autocast:
            result = estimate(self.model, images, self.uncertainty, seed=stamp_ns % (2**31))
            # One device-to-host copy (the one synchronisation) of everything the estimate holds:
            # position 3, quaternion 4, score 1, then the three 6x6 matrices.
            flat = torch.cat([result.position_B3[0], result.quat_B4[0], result.score_B[:1],
                              result.covariance_B66[0].flatten(), result.epistemic_B66[0].flatten(),
                              result.aleatoric_B66[0].flatten()]).cpu().numpy()
            forwarded = time.perf_counter()
            position, quat, score = flat[:3], flat[3:7], float(flat[7])
            covariance, epistemic, aleatoric = flat[8:].reshape(3, 6, 6)
            known = self._detector.update(score)
            inputs = None
            if (self.smoother is not None or self.keep_temporal_inputs) and result.features_BF is not None:
                features = result.features_BF.float()
                inputs = (features, *head_inputs(self.model, features))
            if self.smoother is not None and inputs is not None:
                smoothed = self.smoother.update(*inputs, known)
                position, quat = smoothed.position_T3[0], smoothed.quat_T4[0]
                covariance = smoothed.covariance_T66[0]
        estimate_ = PoseEstimate(
            stamp_ns=int(stamp_ns), position_3=position, quat_wxyz_4=quat,
            covariance_66=covariance, epistemic_66=epistemic, aleatoric_66=aleatoric,
            uncertainty_m=float(np.sqrt(max(np.trace(covariance[:3, :3]), 0.0))),
            known_place=known, score=score, temporal_inputs=inputs if self.keep_temporal_inputs else None)
        done = time.perf_counter()
        estimate_.timings_ms = {"preprocess": 1e3 * (prepared - start),
                                "forward": 1e3 * (forwarded - prepared), "summary": 1e3 * (done - forwarded)}
        # "summary" includes the temporal step when smoothing is on.
        return estimate_

    def _process_scene_coordinates(self, images: torch.Tensor, box: CropBox, stamp_ns: int, start: float,
                                   prepared: float) -> PoseEstimate:
        """Scene coordinates and RANSAC (scr_localization.py): the pose and covariance of the
        refinement (calibrated), score 1 - inlier ratio, the inlier scene points. Raises ValueError
        when RANSAC finds no pose."""
        assert self.ransac is not None and self.camera is not None
        K = input_intrinsics(self.camera, box.width, box.height, box.new_width, box.new_height, box.x0,
                             box.y0, box.crop_width, box.crop_height)
        poses, coords = localize(self.model, images, K[None], self.ransac, seed=stamp_ns % (2**31))
        forwarded = time.perf_counter()
        pose = poses[0]
        if pose is None:
            raise ValueError(f"no pose: RANSAC found none with {self.ransac.min_inliers} inliers within "
                             f"{self.ransac.threshold_px} px (a place the model has not learned?)")
        score = 1.0 - pose.inlier_ratio
        factors = self.uncertainty.block_factors(torch.tensor([score]))
        covariance = calibrated(torch.from_numpy(pose.covariance_66)[None], *factors)[0].numpy()
        known = self._detector.update(score)
        estimate_ = PoseEstimate(
            stamp_ns=int(stamp_ns), position_3=pose.position_3, quat_wxyz_4=pose.quat_wxyz_4,
            covariance_66=covariance, epistemic_66=pose.covariance_66, aleatoric_66=np.zeros((6, 6)),
            uncertainty_m=float(np.sqrt(max(np.trace(covariance[:3, :3]), 0.0))), known_place=known,
            score=score, scene_points_N3=coords[0][pose.inliers_N])
        done = time.perf_counter()
        estimate_.timings_ms = {"preprocess": 1e3 * (prepared - start),
                                "forward": 1e3 * (forwarded - prepared), "summary": 1e3 * (done - forwarded)}
        return estimate_
