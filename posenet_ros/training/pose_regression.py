"""Training of pose regression (PoseNet): Kendall & Cipolla's losses (losses.py) on the network's
pose, and the loop-closure memory fitted on the training frames after the last epoch."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from posenet_ros.core.geometry import matrix_to_quat, quat_average, quat_conjugate, quat_log, quat_multiply
from posenet_ros.data.dataset import PoseDataset, network_input
from posenet_ros.data.frames import FrameRecord
from posenet_ros.evaluation.predict import fit_feature_memory
from posenet_ros.models.backbones import load_pretrained
from posenet_ros.models.posenet import PoseNet
from posenet_ros.runtime.methods import PoseRegression
from posenet_ros.runtime.train_config import TrainConfig
from posenet_ros.training.losses import COMPONENTS, PoseLoss, sample_depth_points
from posenet_ros.training.method import TrainingMethod, TrainingSetup, median_depth, train_transform

logger = logging.getLogger(__name__)

# Errors below these never count as "not learned" (normalised position x, y, z; rotation, radians):
# 0.2 of the position scale, 5 degrees.
NOT_LEARNED_FLOOR = (0.2, 0.2, 0.2, math.radians(5.0), math.radians(5.0), math.radians(5.0))


class PoseRegressionStep(nn.Module):
    """Model and loss in one module, so DDP averages the gradients of ŝx and ŝq too."""

    def __init__(self, model: PoseNet, loss: PoseLoss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: dict[str, Any], kind: str, points: int) -> tuple[torch.Tensor, dict]:
        output = self.model(network_input(batch, self.model.input_channels))
        position_true, quat_true = batch["pose"][:, :3], batch["pose"][:, 3:]
        reprojection = None
        if kind == "reprojection":
            if "depth" not in batch or "K" not in batch:
                raise ValueError("the reprojection loss needs depth images and intrinsics in the dataset")
            points_cam, valid = sample_depth_points(batch["depth"], batch["K"], points)
            reprojection = {"world_from_cam_true_B44": batch["world_from_cam"],
                            "position_pred_B3": output.position_B3, "points_cam_BN3": points_cam,
                            "valid_BN": valid, "K_B33": batch["K"]}
        loss, terms = self.loss(output.position_norm_B3, output.quat_B4,
                                self.model.normalise_position(position_true), quat_true, kind,
                                reprojection_inputs=reprojection, log_var_BK=output.log_var_BK)
        # ŝx and ŝq take part in every step (with zero weight when unused), as DDP requires.
        return loss + 0.0 * (self.loss.s_x + self.loss.s_q), terms


class PoseRegressionTraining(TrainingMethod):
    """PoseNet: the configured loss (`loss.kind`, then reprojection after `reprojection_after_epochs`),
    dropout on while training, the loop-closure feature memory fitted after the last epoch."""

    name = "posenet"

    def __init__(self) -> None:
        self.chance_rms: np.ndarray | None = None  # (6,) see `chance_errors`

    def setup(self, config: TrainConfig, records: list[FrameRecord], position_mean_3: np.ndarray,
              position_scale_m: float, *, cache_dir: Path | None = None, progress: bool = False
              ) -> TrainingSetup:
        model = PoseRegression.network(config)
        model.set_position_statistics(torch.from_numpy(position_mean_3), position_scale_m)
        needs_depth = config.model.needs_depth
        dataset = PoseDataset(records, train_transform(config), seed=config.seed,
                              with_depth=self.uses_depth(config), cache_dir=cache_dir, progress=progress)
        if needs_depth:
            model.set_depth_scale(median_depth(records))
        if config.pretrained:
            backbones = [model.backbone]
            shared = (config.model.depth_backbone or config.model.backbone) == config.model.backbone
            if model.depth_backbone is not None and shared:
                backbones.append(model.depth_backbone)  # the RGB filters adapted to the depth channels
            for backbone in backbones:
                ignored = load_pretrained(backbone, config.pretrained)
            logger.info("loaded pretrained backbone %s (ignored %d classifier keys)", config.pretrained,
                        len(ignored))
        poses = np.array([r.world_from_cam for r in records])
        self.chance_rms = chance_errors(poses, position_mean_3, position_scale_m)
        step = PoseRegressionStep(model, PoseLoss(config.loss))
        return TrainingSetup(model, step, dataset, [step.loss.s_x, step.loss.s_q])

    @staticmethod
    def uses_depth(config: TrainConfig) -> bool:
        """Whether training reads depth images: an RGB-D network, or the reprojection loss (its 3D points
        come from depth). An RGB PoseNet with another loss never decodes depth."""
        return (config.model.needs_depth or config.loss.kind == "reprojection"
                or config.reprojection_after_epochs is not None)

    def with_depth(self, config: TrainConfig) -> TrainConfig:
        """The seed's dual-stream RGB-D PoseNet (an RGB-D network already set up is kept)."""
        if config.model.needs_depth:
            return config
        return dataclasses.replace(config, model=dataclasses.replace(config.model, depth="dual_stream"))

    def loss_kind(self, config: TrainConfig, epoch: int) -> str:
        if config.reprojection_after_epochs is not None and epoch >= config.reprojection_after_epochs:
            return "reprojection"
        if config.loss.kind == "aleatoric" and epoch < min(config.warmup_epochs(), config.epochs - 1):
            return "linear"  # the warm-up: the log-variances learn beside it on the detached errors
        return config.loss.kind

    def check_epoch(self, config: TrainConfig, epoch: int, row: dict) -> dict:
        """RMS training error of each pose component (`rms_<component>`: normalised position, rotation
        in degrees) and, from a quarter of the epochs on, the components still near chance
        (`not_learned`, with a warning): above `loss.chance_ratio` x the mean pose's error and above
        `NOT_LEARNED_FLOOR` (so a component that hardly varies in the training poses is not flagged)."""
        squared = [row.get(f"sq_err_{name}") for name in COMPONENTS]
        if self.chance_rms is None or any(value is None for value in squared):
            return {}
        rms = np.sqrt(np.array(squared, dtype=float))
        out = {f"rms_{name}": float(value if i < 3 else np.degrees(value))
               for i, (name, value) in enumerate(zip(COMPONENTS, rms, strict=True))}
        stalled = [name for name, error, chance, floor in zip(COMPONENTS, rms, self.chance_rms,
                                                              NOT_LEARNED_FLOOR, strict=True)
                   if error > max(config.loss.chance_ratio * chance, floor)]
        if epoch + 1 >= max(config.warmup_epochs() + 1, config.epochs // 4) and stalled:
            details = ", ".join(f"{name} {_component_text(name, rms[COMPONENTS.index(name)])} against "
                                f"{_component_text(name, self.chance_rms[COMPONENTS.index(name)])} by the "
                                "mean pose" for name in stalled)
            logger.warning("epoch %d: the model is not learning %s (RMS training error near chance: %s); "
                           "try loss.kind=learned or a lower model.max_sigma_rotation_deg / "
                           "max_sigma_position", epoch + 1, " ".join(stalled), details)
            out["not_learned"] = " ".join(stalled)
        else:
            out["not_learned"] = ""
        return out

    def start_epoch(self, model: nn.Module) -> None:
        model.set_dropout_mode("train")

    def finish(self, model: nn.Module, records: list[FrameRecord], config: TrainConfig, device: torch.device,
               main_process: bool, progress: bool = False) -> dict[str, Any]:
        if main_process:  # the loop-closure memory
            fit_feature_memory(model, records, config.eval_transform(), batch_size=config.batch_size,
                               progress=progress)
        return {}


def chance_errors(world_from_cam_N44: np.ndarray, position_mean_3: np.ndarray, position_scale_m: float
                  ) -> np.ndarray:
    """RMS error (6,) of each pose component for a model that always answers the mean training pose:
    normalised position x, y, z (units of `position_scale_m`), then the rotation error vector's world
    axes (radians), the yardstick of "not learning a component"."""
    positions = (world_from_cam_N44[:, :3, 3] - position_mean_3) / position_scale_m
    from_matrix = np.array([matrix_to_quat(T[:3, :3]) for T in world_from_cam_N44])
    mean_quat = quat_average(from_matrix)
    relative = quat_multiply(np.broadcast_to(mean_quat, from_matrix.shape), quat_conjugate(from_matrix))
    rotvecs = quat_log(np.where(relative[:, :1] < 0, -relative, relative))
    return np.sqrt(np.mean(np.concatenate([positions, rotvecs], axis=1) ** 2, axis=0))


def _component_text(name: str, value: float) -> str:
    return f"{value:.2f} scale" if name in COMPONENTS[:3] else f"{np.degrees(value):.0f}°"
