"""Relocalizer: a checkpoint turned into "image in, pose with uncertainty out". No ROS in here.

    relocalizer = Relocalizer("run/model.safetensors", device="auto")
    estimate = relocalizer.process(rgb_HW3, stamp_ns=stamp)   # -> PoseEstimate

Each frame is prepared exactly as `posenet-ros eval` prepares dataset frames (the checkpoint's
resize and centre crop, a contiguous (B, C, H, W) input), then goes through the checkpoint's method
(runtime/methods.py: Monte-Carlo dropout with the checkpoint's calibrated settings, or scene
coordinates and RANSAC), whose randomness is seeded by the frame's stamp, so the same frame gives the
same estimate in every runtime and in `eval`; then the loop-closure detector with hysteresis and the
temporal smoothing. The ROS node, the DDS runtime and bag replay all call `process` (or its batched
halves `infer_batch` and `finish`); nothing else decides anything.

The query camera: `process` / `prepare` / `prepare_batch` take the intrinsics of the frames
(`camera=`, an `Intrinsics` with K and OpenCV distortion D; for another size of the same aspect ratio
they are scaled to the frame's size), which may be another camera than the one the map was built
with (core/undistortion.py does the resampling; its maps are cached per camera):
- pose regression, whose network learned the training camera's field of view: a frame whose K or D
  differ from the checkpoint's camera (`camera`, at the checkpoint's image size) is resampled to that
  camera's pinhole K and image size (depth too), then prepared as a training frame. A checkpoint
  without its training camera (data without intrinsics, older ones) can only undistort the frame.
- scene coordinates, which regress per pixel and solve PnP / Kabsch with K: a distorted frame is
  undistorted to its own pinhole K (`Intrinsics.pinhole()`), and the solver uses that query K.
Without `camera=` the frames are taken to be pinhole images of the checkpoint's training camera.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from posenet_ros.core.camera import CropBox, Intrinsics, crop_box, input_intrinsics
from posenet_ros.core.device import resolve_device
from posenet_ros.core.undistortion import resample_depth, resample_rgb
from posenet_ros.inference.loop_closure import LoopClosureConfig, LoopClosureDetector
from posenet_ros.inference.odometry_fusion import OdometryNoise, RobotOdometry
from posenet_ros.inference.temporal import CausalSmoother, OdometryAidedSmoother, head_inputs
from posenet_ros.inference.uncertainty import (
    SamplingNetwork,
    torch_network,
)
from posenet_ros.runtime.checkpoint import LoadedModel, load_model
from posenet_ros.runtime.cuda_graphs import CudaGraphNetwork
from posenet_ros.runtime.device_preprocess import DevicePreprocessor
from posenet_ros.runtime.export import ExportedNetwork, exported_path
from posenet_ros.runtime.methods import (
    FrameBatch,
    FrameResults,
    RelocalizationMethod,
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
    map axes; see inference/uncertainty.py), calibrated; epistemic_66 and aleatoric_66 its uncalibrated parts;
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
    # Odometry-aided smoothing: the temporal model's learned motion stood in for missing odometry.
    odometry_fallback: bool = False


@dataclass
class InferredBatch:
    """The stateless results of B frames (`Relocalizer.infer_batch`): their stamps, what the method
    estimated (pose distributions on the host, float64), the temporal model's inputs (host, float32:
    features_BF, position_norm_B3, quat_B4; None without smoothing) and per-frame shares of the
    preprocessing and network time (ms)."""

    stamps_ns: list[int]
    results: FrameResults
    temporal_inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    timings_ms: dict[str, float]


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
    odometry_noise: with smoothing, the odometry-aided filter (`OdometryAidedSmoother`, the odometry's
    error model `odometry_noise`) instead of the causal temporal model: `process` / `finish` then take
    each frame's odometry (None: the learned motion stands in); None: no odometry. ValueError when the
    checkpoint's temporal model has no fusion parameters (trained before they existed); no effect
    without a temporal model or with smoothing off.
    """

    def __init__(self, model_path: str | Path, *, device: str = "auto", precision: Precision = "fp32",
                 mc_samples: int | None = None, loop_closure: LoopClosureConfig | None = None,
                 smoothing: bool = True, smoothing_reset_unknown: int = 10,
                 keep_temporal_inputs: bool = False, runtime: Runtime = "torch",
                 exported_model: str | Path | None = None, fast_path: bool = True,
                 odometry_noise: OdometryNoise | None = None) -> None:
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
        self.transform = loaded.config.eval_transform()
        self._detector = LoopClosureDetector(self.loop_closure)
        # The causal temporal model (inference/temporal.py) when the checkpoint has one and smoothing is
        # on; with odometry_noise, the odometry-aided filter over it.
        self.smoother: CausalSmoother | OdometryAidedSmoother | None = None
        if smoothing and loaded.temporal is not None and odometry_noise is not None:
            if loaded.temporal_fusion is None:
                raise ValueError(f"{loaded.path}: its temporal model has no fusion parameters for odometry "
                                 "(trained before they existed): run `posenet-ros train-temporal` again, or "
                                 "set odometry to none")
            self.smoother = OdometryAidedSmoother(loaded.temporal, self.model, loaded.temporal_fusion,
                                                  odometry_noise, smoothing_reset_unknown)
        elif smoothing and loaded.temporal is not None:
            self.smoother = CausalSmoother(loaded.temporal, self.model, loaded.temporal_calibration,
                                           smoothing_reset_unknown)
        self.camera = loaded.camera
        self.fast_path = fast_path and self.device.type == "cuda"
        self._preprocessors: dict[CropBox, DevicePreprocessor] = {}
        self._pinned: dict[tuple[int, ...], torch.Tensor] = {}
        self.method = self._build_method(loaded, runtime, exported_model)
        if self.method.needs_intrinsics and self.camera is None:
            raise ValueError(f"{self.model_path} is a {self.method.name} model without the training camera's "
                             "intrinsics; retrain it with this version of posenet_ros")
        if not self.calibrated:
            logger.warning("%s has no uncertainty calibration (run `posenet-ros calibrate`): covariances "
                           "are unscaled and every finite loop-closure score counts as a known place",
                           self.model_path)

    def _build_method(self, loaded: LoadedModel, runtime: Runtime,
                      exported_model: str | Path | None) -> RelocalizationMethod:
        """The checkpoint's method, its network run by `runtime`."""
        if runtime not in loaded.method_class.RUNTIMES:
            raise ValueError(f"{self.model_path} is a {loaded.method} model: it runs with runtime "
                             f"{' or '.join(loaded.method_class.RUNTIMES)}, not {runtime}")
        self.network = (self._build_network(runtime, exported_model) if loaded.method_class.regresses_pose
                        else None)
        # ONNX Runtime on the CPU owns the cores; the PyTorch work around it runs on one thread
        # (device.torch_threads: 20 instead of 24 ms per frame for ResNet-18 on 2 cores).
        host_threads = 1 if runtime == "onnx" and self.device.type == "cpu" else None
        return loaded.inference(self.uncertainty.mc_samples, network=self.network, host_threads=host_threads)

    def _build_network(self, runtime: Runtime, exported_model: str | Path | None) -> SamplingNetwork:
        """Pose regression's sampled forward: PyTorch in a CUDA graph (the fast path) or an exported
        file."""
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
        if self.fast_path and runtime == "torch":  # TorchScript's profiling executor recompiles: no graphs
            network = CudaGraphNetwork(network, self.device)
        return network

    @property
    def needs_depth(self) -> bool:
        """Whether the model needs a depth image with every frame (an RGB-D network, or scene
        coordinates solved with depth)."""
        return self.method.needs_depth

    def set_loop_closure(self, config: LoopClosureConfig) -> None:
        """Use other loop-closure thresholds from now on (the flag's history is kept)."""
        self.loop_closure = self._detector.config = config

    def reset(self) -> None:
        """Forget the stream's history (loop-closure hysteresis, temporal state), e.g. after a gap or
        on request."""
        self._detector.reset()
        if self.smoother is not None:
            self.smoother.reset()

    def prepare(self, rgb_HW3: np.ndarray, depth_HW: np.ndarray | None = None,
                stamp_ns: int = 0, camera: Intrinsics | None = None) -> FrameBatch:
        """uint8 RGB (H, W, 3) [+ depth (H, W) in metres, 0 / NaN / inf = hole, for models that need
        it] -> the method's input: the network's float32 input (1, C, h, w) on the device, prepared as
        evaluation prepares frames, with the input's intrinsics and depth where the method uses them.
        `camera`: the frame's intrinsics with distortion (module docstring); None = a pinhole image of
        the training camera. Raises ValueError for an image that is not uint8 (H, W, 3) or is too
        small, for a missing depth image or one of another size, and for a camera of another aspect
        ratio than the image."""
        return self.prepare_batch([rgb_HW3], [depth_HW], [stamp_ns], camera)

    def prepare_batch(self, rgbs_HW3: Sequence[np.ndarray], depths_HW: Sequence[np.ndarray | None],
                      stamps_ns: Sequence[int], camera: Intrinsics | None = None) -> FrameBatch:
        """`prepare` for B frames of one size and one camera -> (B, C, h, w). Raises ValueError as
        `prepare` does, and for frames of different sizes."""
        frames = [self.check_frame(rgb, depth) for rgb, depth in zip(rgbs_HW3, depths_HW, strict=True)]
        if len({rgb.shape for rgb, _ in frames}) != 1:
            raise ValueError("the frames of one batch must have one size, got "
                             f"{sorted({rgb.shape for rgb, _ in frames})}")
        height, width = frames[0][0].shape[:2]
        if camera is not None:
            camera = _camera_for_image(camera, width, height)
            target = self.network_camera(camera)
            frames = [(resample_rgb(rgb, camera, target),
                       None if depth is None else resample_depth(depth, camera, target))
                      for rgb, depth in frames]
            camera, width, height = target, target.width, target.height
        box = crop_box(width, height, self.transform)
        keys = [int(stamp) for stamp in stamps_ns]
        K = None
        if self.method.needs_intrinsics:
            camera = camera or self.camera
            assert camera is not None  # the checkpoint's camera was checked when the method was built
            K = np.repeat(input_intrinsics(camera, box)[None], len(frames), axis=0)
        depth = None
        if self.method.depth_as_input:
            depth = torch.from_numpy(np.stack([box.apply_depth(depth)[None] for _, depth in frames]))
        if self.fast_path:
            return FrameBatch(self._prepare_on_device(box, frames), keys, K, depth)
        images_BHWC = np.stack([np.dstack([box.apply_rgb(rgb)] + ([box.apply_depth(depth_HW)]
                                                                   if self.model.config.needs_depth else []))
                                for rgb, depth_HW in frames])
        # Contiguous (B, C, H, W), as the datasets give it: the CPU kernels round alike for both paths.
        images_BCHW = torch.from_numpy(np.ascontiguousarray(images_BHWC.transpose(0, 3, 1, 2)))
        images_BCHW = images_BCHW.to(self.device, non_blocking=True)
        return FrameBatch(images_BCHW, keys, K, depth)

    def network_camera(self, camera: Intrinsics) -> Intrinsics:
        """The pinhole camera whose images of `camera`'s frames go to the network (module docstring):
        the checkpoint's training camera for pose regression (unless `camera` is that camera at another
        resolution, within 1e-3 px), `camera.pinhole()` for scene coordinates and for checkpoints
        without their training camera."""
        model = self.camera
        if self.method.needs_intrinsics or model is None:
            return camera.pinhole()
        same = camera.resized(model.width, model.height)
        if not same.distorted and np.allclose(same.matrix(), model.pinhole().matrix(), rtol=0.0, atol=1e-3):
            return camera
        return model.pinhole()

    def check_frame(self, rgb_HW3: np.ndarray,
                    depth_HW: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The frame as arrays the model can read: uint8 RGB (H, W, 3) of at least 2x2 px, and for a
        model that needs depth a float32 (H, W) depth in metres; raises ValueError otherwise."""
        rgb = np.asarray(rgb_HW3)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB image as uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
        if rgb.shape[0] < 2 or rgb.shape[1] < 2:
            raise ValueError(f"image of {rgb.shape[1]}x{rgb.shape[0]} px is too small")
        if not self.needs_depth:
            return rgb, None
        if depth_HW is None:
            raise ValueError(f"{self.model_path} is an RGB-D model: it needs a depth image with every frame")
        depth = np.asarray(depth_HW, dtype=np.float32)
        if depth.shape != rgb.shape[:2]:
            raise ValueError(f"depth image of shape {depth.shape} does not match the {rgb.shape[1]}x"
                             f"{rgb.shape[0]} px colour image")
        return rgb, depth

    def _prepare_on_device(self, box: CropBox,
                           frames: list[tuple[np.ndarray, np.ndarray | None]]) -> torch.Tensor:
        """The fast path's `prepare_batch`: the frames as they are (uint8; depth float32) through a
        pinned buffer to the device, resized and cropped there; channels_last."""
        preprocessor = self._preprocessors.get(box)
        if preprocessor is None:
            preprocessor = self._preprocessors[box] = DevicePreprocessor(box, self.device)
        images = preprocessor.rgb(self._upload(np.stack([rgb for rgb, _ in frames])))
        if self.model.config.needs_depth:
            depth = preprocessor.depth(self._upload(np.stack([depth for _, depth in frames])))
            images = torch.cat([images, depth], dim=1)
        return images.contiguous(memory_format=torch.channels_last)

    def _upload(self, array: np.ndarray) -> torch.Tensor:
        """Copy `array` into a pinned host buffer (one per shape and dtype, reused: the previous
        batch's copy has completed, its result was synchronised) and start the copy to the device."""
        key = (*array.shape, array.dtype.str)
        pinned = self._pinned.get(key)
        if pinned is None:
            pinned = self._pinned[key] = torch.from_numpy(np.empty_like(array)).pin_memory()
        pinned.numpy()[...] = array
        return pinned.to(self.device, non_blocking=True)

    @property
    def batches(self) -> bool:
        """Whether `infer_batch` can take several frames in one network pass (not with full-network
        Monte-Carlo sampling)."""
        return self.method.can_batch

    @property
    def odometry_aided(self) -> bool:
        """Whether frames are smoothed with their odometry (`OdometryAidedSmoother`)."""
        return isinstance(self.smoother, OdometryAidedSmoother)

    def process(self, rgb_HW3: np.ndarray, depth_HW: np.ndarray | None = None,
                stamp_ns: int = 0, camera: Intrinsics | None = None,
                odometry: RobotOdometry | None = None) -> PoseEstimate:
        """Estimate the pose of one frame. `depth_HW` (metres, holes 0 / NaN / inf) is required by
        models that need depth (`needs_depth`) and ignored by the others; `camera`: the frame's
        intrinsics, undistorted or resampled to the checkpoint's camera (module docstring); `odometry`:
        as `finish`. Raises ValueError as `prepare` does, and when the method finds no pose (scene
        coordinates: RANSAC)."""
        start = time.perf_counter()
        return self.finish(self.infer_batch(self.prepare(rgb_HW3, depth_HW, stamp_ns, camera), start), 0,
                           odometry)

    def infer_batch(self, frames: FrameBatch, started: float | None = None) -> InferredBatch:
        """The stateless part of `process` for B prepared frames (`prepare_batch`): the method's
        inference, each frame seeded by its stamp, so a frame's result does not depend on the batch it
        is in. `started`: when preparing began (timings)."""
        prepared = time.perf_counter()
        with torch.inference_mode(), self.autocast():
            results = self.method.infer(frames)
        features = results.distribution.features_BF
        temporal_inputs = None
        if (self.smoother is not None or self.keep_temporal_inputs) and features is not None:
            with torch.inference_mode():  # the deterministic head in float32, then one copy to the host
                features = features.float()
                temporal_inputs = tuple(x.cpu() for x in (features, *head_inputs(self.model, features)))
        done = time.perf_counter()
        share = 1e3 / len(frames.keys)
        return InferredBatch(list(frames.keys), results, temporal_inputs,
                             {"preprocess": share * (prepared - (started or prepared)),
                              "forward": share * (done - prepared)})

    def finish(self, batch: InferredBatch, index: int,
               odometry: RobotOdometry | None = None) -> PoseEstimate:
        """The stateful part of `process` for frame `index` of `batch`, called in stream order: the
        loop-closure hysteresis and the temporal smoothing. `odometry` (odometry-aided smoothing only):
        the robot's odometry at the frame's stamp, None when it is missing (the learned motion stands in;
        `PoseEstimate.odometry_fallback`). Raises ValueError for a frame without a pose
        (its state is left as it was)."""
        start = time.perf_counter()
        if not batch.results.found_B[index]:
            raise ValueError(f"no pose: {batch.results.failure}")
        result = batch.results.distribution
        position, quat = result.position_B3[index].numpy(), result.quat_B4[index].numpy()
        covariance = result.covariance_B66[index].numpy()
        score = float(result.score_B[index])
        known = self._detector.update(score)
        inputs, fell_back = None, False
        if batch.temporal_inputs is not None:
            inputs = tuple(x[index:index + 1] for x in batch.temporal_inputs)
            if isinstance(self.smoother, OdometryAidedSmoother):  # per-frame pose, calibrated covariance
                fused, fell_back = self.smoother.update(inputs[0], position, quat, covariance, odometry,
                                                        known)
                position, quat, covariance = fused.position_3, fused.quat_4, fused.covariance_66
            elif self.smoother is not None:
                smoothed = self.smoother.update(*inputs, known)
                position, quat = smoothed.position_T3[0], smoothed.quat_T4[0]
                covariance = smoothed.covariance_T66[0]
        points = batch.results.scene_points
        estimate_ = PoseEstimate(
            stamp_ns=int(batch.stamps_ns[index]), position_3=position, quat_wxyz_4=quat,
            covariance_66=covariance, epistemic_66=result.epistemic_B66[index].numpy(),
            aleatoric_66=result.aleatoric_B66[index].numpy(),
            uncertainty_m=float(np.sqrt(max(np.trace(covariance[:3, :3]), 0.0))),
            known_place=known, score=score, temporal_inputs=inputs if self.keep_temporal_inputs else None,
            scene_points_N3=None if points is None else points[index], odometry_fallback=fell_back)
        # "summary": loop closure, the temporal step when smoothing is on, and the copies.
        estimate_.timings_ms = {**batch.timings_ms, "summary": 1e3 * (time.perf_counter() - start)}
        return estimate_

    def autocast(self) -> torch.autocast:
        """The inference precision's autocast context (cache_enabled=False: autocast's weight cache must
        not live across CUDA graph captures)."""
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES.get(self.precision, torch.float32),
                              enabled=self.precision != "fp32", cache_enabled=False)


def _camera_for_image(camera: Intrinsics, width: int, height: int) -> Intrinsics:
    """`camera` scaled to a `width` x `height` frame (the same camera at another resolution); ValueError
    for another aspect ratio (more than 1% apart)."""
    if (camera.width, camera.height) == (width, height):
        return camera
    if abs((width / height) / (camera.width / camera.height) - 1.0) > 0.01:
        raise ValueError(f"the camera is for {camera.width}x{camera.height} px images, another aspect ratio "
                         f"than this {width}x{height} px frame")
    return camera.resized(width, height)
