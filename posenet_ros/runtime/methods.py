"""The relocalization methods' inference side, behind one interface.

A method turns a batch of prepared frames (`FrameBatch`: the network input, each frame's key and,
where the method uses them, the input's intrinsics and depth) into their pose distributions
(`FrameResults`). Every path that estimates poses goes through `infer`: the Relocalizer (and so both
node runtimes and bag replay), `evaluation.predict` (eval, calibrate, training validation). Each
frame's randomness (Monte-Carlo dropout masks, RANSAC hypotheses) is seeded by its key alone (the
stamp, or the frame's index where there is no stamp), so a frame's result does not depend on the
batch it is in.

    PoseRegression     PoseNet family: Monte-Carlo dropout (uncertainty.py), the loop-closure score
                       in feature space; the network in PyTorch, an exported file or a CUDA graph.
    SceneCoordinates   scene coordinate regression and RANSAC per frame (scene_coordinates.py); the
                       RANSAC covariance, score 1 - inlier ratio.

`inference_method` is the one place that picks a method (by the checkpoint's `method` name). What a
method cannot do it declares (`RUNTIMES`, `needs_intrinsics`, ...) and refuses with a clear error.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from posenet_ros.core.device import torch_threads
from posenet_ros.inference.pose_solving import RansacConfig, ScrPose
from posenet_ros.inference.scene_coordinates import localize
from posenet_ros.inference.uncertainty import (
    PoseDistribution,
    PoseSamples,
    SamplingNetwork,
    UncertaintyConfig,
    calibrated,
    estimate,
    head_dropout_masks,
    loop_closure_score,
    summarise,
    torch_network,
)
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.models.scene_coordinates import SceneCoordinateConfig, SceneCoordinateNet
from posenet_ros.runtime.train_config import TrainConfig

SEED_MODULUS = 2**31  # keys (stamps in ns) are reduced to this range before seeding


@dataclass
class FrameBatch:
    """B prepared frames of one size.

    images_BCHW: the network input on the device (RGB in [0, 1], then depth in metres for RGB-D
    networks); keys: one integer per frame that seeds its randomness (the stamp in ns, or the frame's
    index); K_B33: pixel intrinsics of the network input (float64; methods that solve geometry need
    them); depth_B1HW: depth at the input's size (metres, 0 / NaN / inf = hole; the RGB-D solver).
    """

    images_BCHW: torch.Tensor
    keys: list[int]
    K_B33: np.ndarray | None = None
    depth_B1HW: torch.Tensor | None = None


@dataclass
class FrameResults:
    """What a method estimated for B frames: their pose distributions on the host (float64; a frame
    without a pose has NaN pose and covariance, `found_B` False) and, for scene coordinates, each
    frame's inlier scene points (N, 3) in the map frame (metres)."""

    distribution: PoseDistribution
    found_B: np.ndarray
    scene_points: list[np.ndarray | None] | None = None
    failure: str = ""  # why a frame has no pose, for the error a caller raises


class RelocalizationMethod(ABC):
    """The inference side of one relocalization method (module docstring)."""

    name: ClassVar[str]
    RUNTIMES: ClassVar[tuple[str, ...]] = ("torch",)  # where its network can run
    needs_intrinsics: ClassVar[bool] = False  # FrameBatch.K_B33 is required
    # The network regresses the pose itself (saliency maps, export, the temporal model read its head)
    regresses_pose: ClassVar[bool] = False
    has_feature_memory: ClassVar[bool] = False  # a loop-closure memory fitted on the training frames
    model: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def input_channels(self) -> int:
        """Channels of the network input: 3 (RGB), 4 with depth as a channel."""
        return self.model.input_channels

    @property
    def estimates_uncertainty(self) -> bool:
        """Whether its covariances and loop-closure scores mean anything (else only the pose does)."""
        return True

    @property
    def uncertainty_source(self) -> str:
        """What the covariance comes from, for reports."""
        return ""

    def settings(self) -> dict[str, object]:
        """The method's inference settings, for reports (metrics.json)."""
        return {}

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """The model in eval mode (its dropout off) inside the block; its modes restored after it."""
        training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(training)

    @property
    @abstractmethod
    def needs_depth(self) -> bool:
        """Whether every frame needs a depth image."""

    @property
    def depth_as_input(self) -> bool:
        """Whether the depth goes to the solver as `FrameBatch.depth_B1HW` (else, when needed, as an
        input channel of the network)."""
        return False

    @property
    def can_batch(self) -> bool:
        """Whether `infer` takes several frames in one network pass."""
        return True

    network_class: ClassVar[type[torch.nn.Module]]

    @staticmethod
    @abstractmethod
    def network_config(config: TrainConfig) -> object:
        """The network's part of the training configuration."""

    @staticmethod
    @abstractmethod
    def depth_needed(config: TrainConfig) -> bool:
        """Whether a model trained with `config` needs a depth image with every frame."""

    @classmethod
    def network(cls, config: TrainConfig) -> torch.nn.Module:
        """A new (untrained) network of the method as `config` describes it."""
        return cls.network_class(cls.network_config(config))

    @classmethod
    @abstractmethod
    def build(cls, model: torch.nn.Module, *, uncertainty: UncertaintyConfig, ransac: RansacConfig,
              network: SamplingNetwork | None = None,
              host_threads: int | None = None) -> RelocalizationMethod:
        """The method for `model` with a checkpoint's settings (`network`, `host_threads`: how a network
        that can run elsewhere than in PyTorch runs, see `RUNTIMES`)."""

    @abstractmethod
    def infer(self, batch: FrameBatch) -> FrameResults:
        """The pose distributions of `batch` (under `torch.inference_mode()` and the caller's autocast)."""


class PoseRegression(RelocalizationMethod):
    """PoseNet: Monte-Carlo dropout of the head (or the whole network), then the summary on the host.

    `network`: how the sampled forward runs (default: the model in PyTorch); `host_threads`: the torch
    threads of the host work around it (1 beside ONNX Runtime on the CPU, which owns the cores)."""

    name = "posenet"
    RUNTIMES = ("torch", "torchscript", "onnx")
    regresses_pose = True
    has_feature_memory = True

    def __init__(self, model: PoseNet, uncertainty: UncertaintyConfig,
                 network: SamplingNetwork | None = None, host_threads: int | None = None) -> None:
        self.model = model
        self.uncertainty = uncertainty
        self.network = network or torch_network(model)
        self.host_threads = host_threads
        self._position_scale_m = float(model.position_scale)
        # Converted once: a float32 -> float64 copy of the F x F matrix per frame cost 1.3 ms on the CPU.
        self._feature_covariance_FF = model.feature_covariance.to(torch.float64)

    network_class = PoseNet

    @staticmethod
    def network_config(config: TrainConfig) -> ModelConfig:
        return config.model

    @staticmethod
    def depth_needed(config: TrainConfig) -> bool:
        return config.model.needs_depth

    @classmethod
    def build(cls, model: torch.nn.Module, *, uncertainty: UncertaintyConfig, ransac: RansacConfig,
              network: SamplingNetwork | None = None, host_threads: int | None = None) -> PoseRegression:
        return cls(model, uncertainty, network, host_threads)  # type: ignore[arg-type]

    @property
    def needs_depth(self) -> bool:
        return self.model.config.needs_depth

    @property
    def estimates_uncertainty(self) -> bool:
        return self.uncertainty.mc_samples > 0

    @property
    def uncertainty_source(self) -> str:
        return f"{self.uncertainty.mc_samples} MC samples ({self.uncertainty.mc_mode})"

    def settings(self) -> dict[str, object]:
        return {"mc_samples": self.uncertainty.mc_samples}

    @staticmethod
    @contextmanager
    def evaluating_model(model: PoseNet) -> Iterator[None]:
        """`model` in eval mode with its dropout off inside the block; its modes restored after it."""
        training, dropout_mode = model.training, model.dropout_mode
        model.eval()
        model.set_dropout_mode("off")
        try:
            yield
        finally:
            model.train(training)
            model.set_dropout_mode(dropout_mode)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        with self.evaluating_model(self.model):
            yield

    @property
    def full_sampling(self) -> bool:
        return self.uncertainty.mc_samples > 0 and self.uncertainty.mc_mode == "full"

    @property
    def can_batch(self) -> bool:
        return not self.full_sampling

    def infer(self, batch: FrameBatch) -> FrameResults:
        seeds = [key % SEED_MODULUS for key in batch.keys]
        if self.full_sampling:
            parts = [estimate(self.model, batch.images_BCHW[i:i + 1], self.uncertainty, seed=seed)
                     for i, seed in enumerate(seeds)]
            fields = {name: torch.cat([getattr(part, name) for part in parts]) for name in vars(parts[0])}
            features = fields.pop("features_BF")
            distribution = PoseDistribution(**{name: value.cpu() for name, value in fields.items()},
                                            features_BF=features)
        else:
            samples = max(self.uncertainty.mc_samples, 1)
            with torch_threads(self.host_threads):
                masks = torch.cat([head_dropout_masks(1, samples, self.model.head_dim,
                                                      self.model.config.dropout, self.uncertainty.seed + seed,
                                                      batch.images_BCHW.device) for seed in seeds])
            features, position, quat, log_var = self.network(batch.images_BCHW, masks)
            with torch_threads(self.host_threads):
                distribution = self.summarise_on_host(features, position, quat, log_var)
        return FrameResults(distribution, np.ones(len(seeds), dtype=bool))

    def summarise_on_host(self, features_BF: torch.Tensor, position_M3: torch.Tensor, quat_M4: torch.Tensor,
                          log_var_MK: torch.Tensor | None) -> PoseDistribution:
        """The network's N samples of each of B frames (M = B * N rows) -> their pose distributions on
        the host (float64): the loop-closure scores on the device, one device-to-host copy (the one
        synchronisation), the mean poses and covariances on the host. `features_BF` stay where they
        are."""
        batch = features_BF.shape[0]
        rows = position_M3.shape[0]
        score = loop_closure_score(features_BF, self._feature_covariance_FF, batch)
        parts = [position_M3, quat_M4, score] + ([] if log_var_MK is None else [log_var_MK])
        host = torch.cat([part.reshape(-1).to(torch.float64) for part in parts]).cpu()
        sizes = [3 * rows, 4 * rows, batch, host.numel() - 7 * rows - batch]
        position, quat, score_B, log_var = host.split(sizes)
        samples = rows // batch
        on_host = PoseSamples(position_BN3=position.view(batch, samples, 3),
                              quat_BN4=quat.view(batch, samples, 4),
                              log_var_BNK=None if log_var_MK is None else log_var.view(batch, samples, -1))
        distribution = summarise(on_host, self._position_scale_m, self.uncertainty, score_B=score_B)
        distribution.features_BF = features_BF
        return distribution


class SceneCoordinates(RelocalizationMethod):
    """Scene coordinate regression: the network's coordinates of every cell, then RANSAC per frame
    (PnP, or Kabsch with the frame's depth) seeded by the frame's key; the covariance of the pose
    refinement scaled by the calibration, score 1 - inlier ratio."""

    name = "scr"
    needs_intrinsics = True

    def __init__(self, model: SceneCoordinateNet, ransac: RansacConfig,
                 uncertainty: UncertaintyConfig) -> None:
        self.model = model
        self.ransac = ransac
        self.uncertainty = uncertainty

    network_class = SceneCoordinateNet

    @staticmethod
    def network_config(config: TrainConfig) -> SceneCoordinateConfig:
        return config.scr

    @staticmethod
    def depth_needed(config: TrainConfig) -> bool:
        return config.ransac.use_depth  # poses solved with depth

    @classmethod
    def build(cls, model: torch.nn.Module, *, uncertainty: UncertaintyConfig, ransac: RansacConfig,
              network: SamplingNetwork | None = None, host_threads: int | None = None) -> SceneCoordinates:
        return cls(model, ransac, uncertainty)  # type: ignore[arg-type]

    @property
    def needs_depth(self) -> bool:
        return self.ransac.use_depth

    @property
    def uncertainty_source(self) -> str:
        return "RANSAC covariance"

    def settings(self) -> dict[str, object]:
        return {"mc_samples": 0, "ransac": dataclasses.asdict(self.ransac)}

    @property
    def depth_as_input(self) -> bool:
        return self.ransac.use_depth

    def infer(self, batch: FrameBatch) -> FrameResults:
        if batch.K_B33 is None:
            raise ValueError("scene coordinate regression needs the camera intrinsics of every frame")
        poses, coords_BN3 = localize(self.model, batch.images_BCHW, batch.K_B33, self.ransac,
                                     seeds=[key % SEED_MODULUS for key in batch.keys],
                                     depth_B1HW=batch.depth_B1HW if self.ransac.use_depth else None)
        found = np.array([pose is not None for pose in poses])
        raw = torch.from_numpy(np.stack([_or_nan(pose, "covariance_66", (6, 6)) for pose in poses]))
        score = torch.tensor([1.0 - pose.inlier_ratio if pose else 1.0 for pose in poses],
                             dtype=torch.float64)
        distribution = PoseDistribution(
            position_B3=torch.from_numpy(np.stack([_or_nan(pose, "position_3", (3,)) for pose in poses])),
            quat_B4=torch.from_numpy(np.stack([_or_nan(pose, "quat_wxyz_4", (4,)) for pose in poses])),
            covariance_B66=calibrated(raw, *self.uncertainty.block_factors(score)), epistemic_B66=raw,
            aleatoric_B66=torch.zeros_like(raw), score_B=score, mc_spread_B=torch.full_like(score, math.nan))
        points = [coords[pose.inliers_N] if pose else None
                  for coords, pose in zip(coords_BN3, poses, strict=True)]
        ransac = self.ransac
        threshold = f"{ransac.threshold_m} m" if ransac.use_depth else f"{ransac.threshold_px} px"
        return FrameResults(distribution, found, points,
                            failure=f"RANSAC found no pose with {self.ransac.min_inliers} inliers within "
                                    f"{threshold} (a place the model has not learned?)")


def _or_nan(pose: ScrPose | None, name: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(getattr(pose, name), dtype=np.float64) if pose else np.full(shape, math.nan)


METHODS: dict[str, type[RelocalizationMethod]] = {"posenet": PoseRegression, "scr": SceneCoordinates}


def inference_method(method: str, model: torch.nn.Module, *, uncertainty: UncertaintyConfig,
                     ransac: RansacConfig | None = None, network: SamplingNetwork | None = None,
                     host_threads: int | None = None) -> RelocalizationMethod:
    """The inference side of the method named `method` (a checkpoint's `config.method`: "posenet" or
    "scr") for `model`. `network` / `host_threads`: pose regression's network runtime."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method].build(model, uncertainty=uncertainty, ransac=ransac or RansacConfig(),
                                 network=network, host_threads=host_threads)
