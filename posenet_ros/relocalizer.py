"""Relocalizer: a checkpoint turned into "image in, pose with uncertainty out". No ROS in here.

    relocalizer = Relocalizer("run/model.safetensors", device="auto")
    estimate = relocalizer.process(rgb_HW3, stamp_ns=stamp)   # -> PoseEstimate

Each frame is prepared exactly as `posenet-ros eval` prepares dataset frames (the checkpoint's
resize and centre crop), then runs through the network with Monte-Carlo dropout (the checkpoint's
calibrated settings; the head's dropout masks are seeded by the frame's stamp, so the same frame gives
the same estimate in every runtime), the summary of uncertainty.py and the loop-closure detector with
hysteresis. The ROS node, the DDS runtime and bag replay all call `process`; nothing else decides
anything.

The network runs in PyTorch (`runtime="torch"`) or from a file written by `posenet-ros export`
("onnx": ONNX Runtime, the fastest on CPU; "torchscript"). On a CUDA device the fast path
(`fast_path=True`) uploads the uint8 frame from pinned memory and resizes and crops it on the device
(device_preprocess.py), runs the network in channels_last memory format as a CUDA graph
(cuda_graphs.py) under the requested autocast precision, and synchronises once per frame: the copy of
the samples and the loop-closure score to the host, where the float64 summary (mean pose and
covariance) is computed.
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
from posenet_ros.cuda_graphs import CudaGraphNetwork
from posenet_ros.data.dataset import CropBox, crop_box
from posenet_ros.device import resolve_device
from posenet_ros.device_preprocess import DevicePreprocessor
from posenet_ros.evaluation import eval_transform
from posenet_ros.export import ExportedNetwork, exported_path
from posenet_ros.loop_closure import LoopClosureConfig, LoopClosureDetector
from posenet_ros.scr_localization import input_intrinsics, localize
from posenet_ros.smoothing import CausalSmoother, head_inputs
from posenet_ros.uncertainty import (
    PoseDistribution,
    PoseSamples,
    SamplingNetwork,
    calibrated,
    estimate,
    head_dropout_masks,
    loop_closure_score,
    summarise,
    torch_network,
)

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16"]
Runtime = Literal["torch", "torchscript", "onnx"]
RUNTIMES = ("torch", "torchscript", "onnx")
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
    CUDA. runtime: "torch", or "onnx" / "torchscript" to run the network from `exported_model`
    (default: the file `posenet-ros export` writes beside the checkpoint). fast_path: on CUDA, device
    preprocessing, channels_last and CUDA graphs (module docstring); no effect on CPU.
    mc_samples: None = the checkpoint's (calibrated) setting, 0 = deterministic.
    loop_closure: overrides the checkpoint's thresholds. smoothing: run the checkpoint's causal temporal
    model when it has one (the pose and covariance become the smoothed ones; the state resets with
    `reset()` and after `smoothing_reset_unknown` consecutive unknown-place frames, 0 = never).
    """

    def __init__(self, model_path: str | Path, *, device: str = "auto", precision: Precision = "fp32",
                 mc_samples: int | None = None, loop_closure: LoopClosureConfig | None = None,
                 smoothing: bool = True, smoothing_reset_unknown: int = 10,
                 keep_temporal_inputs: bool = False, runtime: Runtime = "torch",
                 exported_model: str | Path | None = None, fast_path: bool = True) -> None:
        self.device = resolve_device(device)
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        if precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"precision {precision} needs a CUDA device; this one is {self.device}")
        self.precision = precision
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.runtime = runtime
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
        self.fast_path = fast_path and self.device.type == "cuda"
        self._preprocessors: dict[CropBox, DevicePreprocessor] = {}
        self._pinned: dict[tuple[int, ...], torch.Tensor] = {}
        self.network: SamplingNetwork | None = None
        if self.ransac is None:
            self.network = self._build_network(runtime, exported_model)
            self._position_scale_m = float(self.model.position_scale)
        elif runtime != "torch":
            raise ValueError(f"{self.model_path} is a scene coordinate model (method scr): it runs with "
                             "runtime torch only")
        if not self.calibrated:
            logger.warning("%s has no uncertainty calibration (run `posenet-ros calibrate`): covariances "
                           "are unscaled and every finite loop-closure score counts as a known place",
                           self.model_path)

    def _build_network(self, runtime: Runtime, exported_model: str | Path | None) -> SamplingNetwork:
        """The network of the pose-regression path: PyTorch or an exported file, in a CUDA graph on
        the fast path (PyTorch and TorchScript)."""
        if runtime != "torch" and self.uncertainty.mc_samples > 0 and self.uncertainty.mc_mode == "full":
            raise ValueError(f"{self.model_path} samples the whole network (mc_mode full), which runs with "
                             "runtime torch only")
        if runtime == "torch":
            if self.fast_path:
                self.model.to(memory_format=torch.channels_last)
            network = torch_network(self.model)
        else:
            path = exported_model or exported_path(self.model_path, runtime)
            network = ExportedNetwork(path, self.model, self.device)
            if network.format != runtime:
                raise ValueError(f"{path} is a {network.format} file, not {runtime}")
        if self.fast_path and runtime != "onnx":
            network = CudaGraphNetwork(network, self.device)
        return network

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
        depth = None
        if self.needs_depth:
            if depth_HW is None:
                raise ValueError(f"{self.model_path} is an RGB-D model: it needs a depth image with every "
                                 "frame")
            depth = np.asarray(depth_HW, dtype=np.float32)
            if depth.shape != rgb.shape[:2]:
                raise ValueError(f"depth image of shape {depth.shape} does not match the {rgb.shape[1]}x"
                                 f"{rgb.shape[0]} px colour image")
        if self.fast_path:
            return self._prepare_on_device(box, rgb, depth)
        channels = [box.apply_rgb(rgb).transpose(2, 0, 1)]
        if depth is not None:
            channels.append(box.apply_depth(depth)[None])
        image = np.ascontiguousarray(np.concatenate(channels))
        return torch.from_numpy(image)[None].to(self.device, non_blocking=True)

    def _prepare_on_device(self, box: CropBox, rgb_HW3: np.ndarray,
                           depth_HW: np.ndarray | None) -> torch.Tensor:
        """The fast path's `prepare`: the frame as it is (uint8; depth float32) through a pinned buffer
        to the device, resized and cropped there; channels_last."""
        preprocessor = self._preprocessors.get(box)
        if preprocessor is None:
            preprocessor = self._preprocessors[box] = DevicePreprocessor(box, self.device)
        images = preprocessor.rgb(self._upload(rgb_HW3)[None])
        if depth_HW is not None:
            images = torch.cat([images, preprocessor.depth(self._upload(depth_HW)[None])], dim=1)
        return images.contiguous(memory_format=torch.channels_last)

    def _upload(self, array: np.ndarray) -> torch.Tensor:
        """Copy `array` into a pinned host buffer (one per shape and dtype, reused: the previous frame's
        copy has completed, its result was synchronised) and start the copy to the device."""
        key = (*array.shape, array.dtype.str)
        pinned = self._pinned.get(key)
        if pinned is None:
            pinned = self._pinned[key] = torch.from_numpy(np.empty_like(array)).pin_memory()
        pinned.numpy()[...] = array
        return pinned.to(self.device, non_blocking=True)

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
        with torch.inference_mode(), self.autocast():
            result, features = self._distribution(images, stamp_ns % (2**31))
            forwarded = time.perf_counter()
            position, quat = result.position_B3[0].numpy(), result.quat_B4[0].numpy()
            covariance = result.covariance_B66[0].numpy()
            epistemic, aleatoric = result.epistemic_B66[0].numpy(), result.aleatoric_B66[0].numpy()
            score = float(result.score_B[0])
            known = self._detector.update(score)
            inputs = None
            if (self.smoother is not None or self.keep_temporal_inputs) and features is not None:
                features = features.float()
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

    def _distribution(self, images: torch.Tensor, seed: int) -> tuple[PoseDistribution, torch.Tensor | None]:
        """The frame's pose distribution on the host (float64) and its features on the device.

        Head sampling: the network over the seeded dropout masks and the loop-closure score on the
        device, then one device-to-host copy of the samples and the score (the one synchronisation), and
        the summary on the host. Full-network sampling runs `uncertainty.estimate` on the device."""
        assert self.network is not None
        config = self.uncertainty
        if config.mc_samples > 0 and config.mc_mode == "full":
            result = estimate(self.model, images, config, seed=seed)
            return PoseDistribution(**{name: value.cpu() if isinstance(value, torch.Tensor) else value
                                       for name, value in vars(result).items()}), result.features_BF
        samples = max(config.mc_samples, 1)
        masks = head_dropout_masks(1, samples, self.model.head_dim, self.model.config.dropout,
                                   config.seed + seed, self.device)
        features, position, quat, log_var = self.network(images, masks)
        return self.summarise_on_host(features, position, quat, log_var), features

    def summarise_on_host(self, features_1F: torch.Tensor, position_N3: torch.Tensor, quat_N4: torch.Tensor,
                          log_var_NK: torch.Tensor | None) -> PoseDistribution:
        """The network's N samples of one frame -> its pose distribution on the host (float64): the
        loop-closure score on the device, one device-to-host copy (the frame's one synchronisation),
        the mean pose and covariance on the host."""
        samples = position_N3.shape[0]
        score = loop_closure_score(features_1F, self.model.feature_covariance, 1)
        parts = [position_N3, quat_N4, score] + ([] if log_var_NK is None else [log_var_NK])
        host = torch.cat([part.reshape(-1).to(torch.float64) for part in parts]).cpu()
        sizes = [3 * samples, 4 * samples, 1, host.numel() - 7 * samples - 1]
        position, quat, score_1, log_var = host.split(sizes)
        on_host = PoseSamples(position_BN3=position.view(1, samples, 3), quat_BN4=quat.view(1, samples, 4),
                              log_var_BNK=None if log_var_NK is None else log_var.view(1, samples, -1))
        return summarise(on_host, self._position_scale_m, self.uncertainty, score_B=score_1)

    def autocast(self) -> torch.autocast:
        """The inference precision's autocast context (cache_enabled=False: autocast's weight cache must
        not live across CUDA graph captures)."""
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES.get(self.precision, torch.float32),
                              enabled=self.precision != "fp32", cache_enabled=False)

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
