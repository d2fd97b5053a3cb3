"""Model checkpoints: one safetensors file that rebuilds its model with nothing else.

The file holds the weights and buffers (including the scene normalisation `position_mean` and
`position_scale`), the training camera poses (`map_poses_N7`: position xyz + quaternion wxyz of
`world_from_cam`, the mapped area) and, in its metadata, the resolved training configuration as JSON
and, once `posenet-ros calibrate` has run, the uncertainty settings (`uncertainty`: Monte-Carlo
sampling and covariance scales) and the loop-closure thresholds (`loop_closure`), both JSON.
A `config.json` is written beside it for people. Files are written atomically and read without
unpickling anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from posenet_ros.core.atomic_io import atomic_write_bytes, atomic_write_json
from posenet_ros.core.camera import Intrinsics
from posenet_ros.core.config import ConfigError, config_from_dict, config_to_dict
from posenet_ros.inference.loop_closure import LoopClosureConfig
from posenet_ros.inference.odometry_fusion import FusionParameters
from posenet_ros.inference.pose_solving import RansacConfig
from posenet_ros.inference.temporal import TemporalCalibration
from posenet_ros.inference.uncertainty import SamplingNetwork, UncertaintyConfig
from posenet_ros.models.posenet import PoseNet
from posenet_ros.models.scene_coordinates import SceneCoordinateNet
from posenet_ros.models.temporal import TemporalConfig, TemporalModel
from posenet_ros.runtime.methods import METHODS, RelocalizationMethod, inference_method
from posenet_ros.runtime.train_config import TrainConfig

logger = logging.getLogger(__name__)

FORMAT = "posenet_ros.checkpoint.v1"
MODEL_FILE = "model.safetensors"
_MAP_POSES_KEY = "map_poses_N7"
_TEMPORAL_PREFIX = "temporal."  # the temporal model's tensors (models/temporal.py), when trained


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, of another format or of another architecture."""


@dataclass
class LoadedModel:
    model: PoseNet | SceneCoordinateNet  # on the requested device, eval() mode, dropout off
    config: TrainConfig  # the resolved training configuration
    map_poses_N7: np.ndarray  # training camera poses (float64)
    metadata: dict[str, str]
    path: Path
    uncertainty: UncertaintyConfig  # defaults (uncalibrated) until `posenet-ros calibrate` runs
    loop_closure: LoopClosureConfig
    # Once `posenet-ros train-temporal` has run; eval mode, on the CPU whatever the device: a step is
    # hundreds of operations on tensors of a few numbers, cheaper on the host than as CUDA kernels
    # (1.2 against 2.9 ms per frame on an H200 machine).
    temporal: TemporalModel | None = None
    temporal_calibration: TemporalCalibration = field(default_factory=TemporalCalibration)
    # The odometry-aided filter's error model (inference/odometry_fusion.py), fitted by train-temporal
    # on held-out sequences; None before, or for a temporal model trained by an older version.
    temporal_fusion: FusionParameters | None = None
    camera: Intrinsics | None = None  # the training frames' intrinsics, when they had them

    @property
    def calibrated(self) -> bool:
        return "uncertainty" in self.metadata

    @property
    def method(self) -> str:
        """"posenet" (pose regression) or "scr" (scene coordinates and RANSAC)."""
        return self.config.method

    @property
    def method_class(self) -> type[RelocalizationMethod]:
        """The checkpoint's method (`runtime.methods`): what it can do."""
        return METHODS[self.method]

    def inference(self, mc_samples: int | None = None, *, network: SamplingNetwork | None = None,
                  host_threads: int | None = None) -> RelocalizationMethod:
        """The inference side of the checkpoint's method with its stored (calibrated) settings;
        `mc_samples` overrides the Monte-Carlo samples (0: deterministic)."""
        uncertainty = (self.uncertainty if mc_samples is None
                       else dataclasses.replace(self.uncertainty, mc_samples=mc_samples))
        return inference_method(self.method, self.model, uncertainty=uncertainty, ransac=self.ransac,
                                network=network, host_threads=host_threads)

    @property
    def ransac(self) -> RansacConfig:
        """The pose solver settings of a scene coordinate model."""
        return self.config.ransac

    @property
    def needs_depth(self) -> bool:
        """Whether every frame needs a depth image: an RGB-D network, or scene coordinates solved with
        depth (`ransac.use_depth`)."""
        return self.method_class.depth_needed(self.config)


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: TrainConfig | Mapping[str, Any],
                    map_poses_N7: np.ndarray, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write `model` (weights and buffers), `config` (a TrainConfig, or a mapping read strictly into
    one: missing keys take the defaults) and the map poses to `path` atomically."""
    path = Path(path)
    if not isinstance(config, TrainConfig):
        config = config_from_dict(TrainConfig, config)
    config = config_to_dict(config)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tensors[_MAP_POSES_KEY] = torch.as_tensor(np.asarray(map_poses_N7, dtype=np.float64))
    metadata = {"format": FORMAT, "config": json.dumps(config), **(extra_metadata or {})}
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    atomic_write_json(path.with_name("config.json"), config)
    return path


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a training output folder holding `model.safetensors`."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    return path


def unbounded_if_older(config: dict) -> dict:
    """A stored training config with `model.max_sigma_position` / `max_sigma_rotation_deg` set to
    infinity (no ceiling) where it predates them, so that an older checkpoint predicts the log-variances
    it was trained with."""
    model = config.get("model")
    if isinstance(model, dict):
        for key in ("max_sigma_position", "max_sigma_rotation_deg"):
            model.setdefault(key, math.inf)
    return config


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model stored at `path` (a file or a training folder) on `device`."""
    path = resolve_checkpoint_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a posenet_ros checkpoint (format {metadata.get('format')!r}, "
                              f"expected {FORMAT!r})")
    try:
        config = config_from_dict(TrainConfig, unbounded_if_older(json.loads(metadata["config"])))
        camera = Intrinsics.from_dict(json.loads(metadata["camera"])) if "camera" in metadata else None
    except (KeyError, json.JSONDecodeError, ConfigError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: the stored configuration is invalid ({exc})") from exc
    try:
        uncertainty = config_from_dict(UncertaintyConfig, json.loads(metadata.get("uncertainty", "{}")),
                                       prefix="uncertainty.")
        loop_closure = config_from_dict(LoopClosureConfig, json.loads(metadata.get("loop_closure", "{}")),
                                        prefix="loop_closure.")
    except (json.JSONDecodeError, ConfigError, ValueError) as exc:
        raise CheckpointError(f"{path}: the stored calibration is invalid ({exc})") from exc
    map_poses = tensors.pop(_MAP_POSES_KEY, torch.zeros(0, 7, dtype=torch.float64)).numpy()
    temporal_tensors = {key[len(_TEMPORAL_PREFIX):]: tensors.pop(key) for key in list(tensors)
                        if key.startswith(_TEMPORAL_PREFIX)}
    method = METHODS[config.method]
    model = method.network(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{path}: weights do not fit the stored architecture ({method.network_config(config)}): missing "
            f"{missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong_shape[:5]}")
    model.load_state_dict(tensors)
    model.to(device).eval()
    temporal, temporal_calibration, temporal_fusion = None, TemporalCalibration(), None
    if method.regresses_pose:  # the temporal model refines the network's pose
        model.set_dropout_mode("off")
        temporal, temporal_calibration, temporal_fusion = _load_temporal(path, metadata, temporal_tensors,
                                                                         model.head_dim)
    return LoadedModel(model=model, config=config, map_poses_N7=map_poses, metadata=metadata, path=path,
                       uncertainty=uncertainty, loop_closure=loop_closure,
                       temporal=None if temporal is None else temporal.eval(),
                       temporal_calibration=temporal_calibration, temporal_fusion=temporal_fusion,
                       camera=camera)


def _load_temporal(path: Path, metadata: dict[str, str], tensors: dict[str, torch.Tensor],
                   cnn_feature_dim: int
                   ) -> tuple[TemporalModel | None, TemporalCalibration, FusionParameters | None]:
    if "temporal" not in metadata:
        return None, TemporalCalibration(), None
    try:
        stored = json.loads(metadata["temporal"])
        temporal = TemporalModel(config_from_dict(TemporalConfig, stored["config"], prefix="temporal."),
                                 cnn_feature_dim)
        calibration = TemporalCalibration(**stored["calibration"])
        fusion = None if stored.get("fusion") is None else FusionParameters(**stored["fusion"])
        temporal.load_state_dict(tensors)
    except (json.JSONDecodeError, ConfigError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the stored temporal model is invalid or from an older version of "
                              f"posenet_ros; run `posenet-ros train-temporal` on it again ({exc})") from exc
    return temporal, calibration, fusion


def store_temporal(path: str | Path, temporal: TemporalModel, description: dict[str, Any]) -> Path:
    """Rewrite the checkpoint at `path` (atomically) with the temporal model's weights (replacing an
    earlier temporal model) and `description` (its config, calibration, training settings and report)."""
    path = resolve_checkpoint_path(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a posenet_ros checkpoint")
    tensors = {key: value for key, value in load_file(str(path)).items()
               if not key.startswith(_TEMPORAL_PREFIX)}
    for key, value in temporal.state_dict().items():
        tensors[_TEMPORAL_PREFIX + key] = value.detach().to("cpu").contiguous()
    metadata["temporal"] = json.dumps(description)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


def calibration_report(path: str | Path) -> dict[str, Any]:
    """The figures `store_calibration` stored with the checkpoint at `path` ({} if never calibrated);
    reads the metadata only."""
    path = resolve_checkpoint_path(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return json.loads(metadata.get("calibration_report") or "{}")


def store_calibration(path: str | Path, uncertainty: UncertaintyConfig, loop_closure: LoopClosureConfig,
                      report: dict[str, Any] | None = None,
                      tensors_update: dict[str, torch.Tensor] | None = None) -> Path:
    """Rewrite the checkpoint at `path` (atomically) with these uncertainty settings and loop-closure
    thresholds in its metadata; `report` (the calibration's figures) is stored beside them and
    `tensors_update` replaces stored tensors of the same names and shapes (e.g. the feature memory)."""
    path = resolve_checkpoint_path(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a posenet_ros checkpoint")
    tensors = load_file(str(path))
    for key, value in (tensors_update or {}).items():
        if key not in tensors or tensors[key].shape != value.shape:
            raise CheckpointError(f"{path}: cannot replace tensor {key!r} of another shape or name")
        tensors[key] = value.detach().to("cpu", tensors[key].dtype).contiguous()
    metadata["uncertainty"] = json.dumps(config_to_dict(uncertainty))
    metadata["loop_closure"] = json.dumps(config_to_dict(loop_closure))
    metadata["calibration_report"] = json.dumps(report or {})
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path
