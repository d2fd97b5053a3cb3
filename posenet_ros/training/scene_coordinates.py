"""Training of scene coordinate regression: depth targets or the reprojection loss
(scene_coordinate_losses.py) on each cell's coordinate, then the ACE-style refit of the head on
shuffled training cells (`ScrRefitConfig`)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from posenet_ros.core.progress import progress_bar
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.inference.scene_coordinates import depth_targets
from posenet_ros.models.backbones import load_pretrained
from posenet_ros.models.scene_coordinates import SceneCoordinateNet, cell_pixels
from posenet_ros.runtime.methods import SceneCoordinates
from posenet_ros.runtime.train_config import ScrLossConfig, TrainConfig
from posenet_ros.training.method import (
    TrainingMethod,
    TrainingSetup,
    epoch_seed,
    median_depth,
    missing_depth,
    train_transform,
    training_autocast,
)
from posenet_ros.training.scene_coordinate_losses import cell_reprojection_loss, depth_loss, reprojection_loss

logger = logging.getLogger(__name__)


class SceneCoordinateStep(nn.Module):
    """Scene coordinate network and its loss (scene_coordinate_losses.py): depth targets or reprojection."""

    def __init__(self, model: SceneCoordinateNet, config: ScrLossConfig, use_depth: bool) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.use_depth = use_depth

    def forward(self, batch: dict[str, Any], kind: str, points: int) -> tuple[torch.Tensor, dict]:
        coords = self.model(batch["image"])
        if self.use_depth:
            targets, valid = depth_targets(batch["depth"], batch["K"], batch["world_from_cam"])
            loss = depth_loss(coords, targets, valid)
            return loss, {"scr_distance_m": float(loss.detach())}
        loss, valid_share = reprojection_loss(coords, batch["K"], batch["world_from_cam"],
                                              *batch["image"].shape[-2:], self.config)
        return loss, {"scr_valid_share": float(valid_share)}


class SceneCoordinateTraining(TrainingMethod):
    """Scene coordinates: the network's coordinates against depth targets (or by reprojection without
    depth), the head refit after the last epoch."""

    name = "scr"

    def __init__(self) -> None:
        self.loss_name: str | None = None  # the loss `setup` chose: depth or reprojection

    def setup(self, config: TrainConfig, records: list[FrameRecord], position_mean_3: np.ndarray,
              position_scale_m: float, *, cache_dir: Path | None = None, progress: bool = False
              ) -> TrainingSetup:
        model, step, dataset = _setup(config, records, position_mean_3, position_scale_m, cache_dir, progress)
        self.loss_name = "depth" if step.use_depth else "reprojection"
        return TrainingSetup(model, step, dataset)

    def with_depth(self, config: TrainConfig) -> TrainConfig:
        """The seed's forests: poses from 3D-3D correspondences with each frame's depth."""
        return dataclasses.replace(config, ransac=dataclasses.replace(config.ransac, use_depth=True))

    def loss_kind(self, config: TrainConfig, epoch: int) -> str:
        return f"scr_{self.loss_name or config.scr_loss.kind}"

    def finish(self, model: nn.Module, records: list[FrameRecord], config: TrainConfig, device: torch.device,
               main_process: bool, progress: bool = False) -> dict[str, Any]:
        if config.scr_refit.iterations == 0:
            return {}
        # Every process refits the same way (same seed, same buffer): the replicas stay equal.
        return refit_scr_head(model, records, config, device, progress=progress and main_process)


def _setup(config: TrainConfig, records: list[FrameRecord], mean: np.ndarray, scale: float,
           cache_dir: Path | None = None, progress: bool = False,
           ) -> tuple[SceneCoordinateNet, SceneCoordinateStep, PoseDataset]:
    """The scene coordinate network (scene statistics: the camera positions' mean, and their spread
    plus the median depth, as the points seen lie that far from the cameras), its loss and data."""
    if any(record.intrinsics is None for record in records):
        raise DatasetError("scene coordinate regression needs the camera intrinsics of every frame")
    use_depth = scr_uses_depth(config, records)
    model = SceneCoordinates.network(config)
    reach = median_depth(records) if use_depth else config.scr_loss.prior_depth
    model.set_scene_statistics(torch.from_numpy(mean), scale + reach)
    if config.pretrained:
        load_pretrained(model.encoder, config.pretrained, partial=True)
    dataset = PoseDataset(records, train_transform(config), seed=config.seed, with_depth=use_depth,
                          cache_dir=cache_dir, progress=progress)
    return model, SceneCoordinateStep(model, config.scr_loss, use_depth), dataset


def scr_uses_depth(config: TrainConfig, records: list[FrameRecord]) -> bool:
    """Whether scene coordinates train on depth targets: `scr_loss.kind` depth, or auto when the
    training frames have usable depth (`missing_depth`); the choice of auto is logged. A setting that
    needs depth the data lacks (scr_loss.kind depth, ransac.use_depth) is a DatasetError naming it."""
    kind = config.scr_loss.kind
    why_not = missing_depth(records) if kind != "reprojection" or config.ransac.use_depth else ""
    if why_not and config.ransac.use_depth:
        raise DatasetError(f"ransac.use_depth=true (train --use-depth) solves poses with each frame's "
                           f"depth, and {why_not}; train without --use-depth (ransac.use_depth=false: "
                           "poses by PnP from RGB)")
    if why_not and kind == "depth":
        raise DatasetError(f"scr_loss.kind=depth needs depth images, and {why_not}; set "
                           "scr_loss.kind=reprojection (or auto)")
    if kind == "auto":
        if why_not:
            logger.info("scr_loss.kind=auto: the reprojection loss (RGB only), as %s", why_not)
        else:
            logger.info("scr_loss.kind=auto: depth targets (the training frames have depth images)")
    return kind == "depth" or (kind == "auto" and not why_not)


def cells_through(layers: nn.Sequential, x_NC: torch.Tensor) -> torch.Tensor:
    """The head's 1x1 convolutions and ReLUs applied to N independent cells (N, C) as linear layers
    (faster than a convolution over a column image)."""
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            x_NC = nn.functional.linear(x_NC, layer.weight.flatten(1), layer.bias)
        else:
            x_NC = layer(x_NC)
    return x_NC


def refit_scr_head(model: SceneCoordinateNet, records: list[FrameRecord], config: TrainConfig,
                   device: torch.device, progress: bool = False) -> dict[str, float]:
    """ScrRefitConfig: retrain `model.head[2:]` (its 1x1 convolutions) on buffered features of the
    training cells, shuffled across images: on depth targets when the training uses them
    (`scr_uses_depth`), else by the reprojection loss under the true poses (the cells' pixels, image
    intrinsics and poses are buffered). Returns the metrics row entries (refit seconds, and the final
    distance in metres or the final reprojection loss). `progress`: a bar over the feature buffering
    and one over the iterations (core/progress.py)."""

    refit = config.scr_refit
    use_depth = config.scr_loss.kind != "reprojection" and not missing_depth(records)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(epoch_seed(config.seed, 1_000_003))
    dataset = PoseDataset(records, config.eval_transform(), with_depth=use_depth)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False,
                        num_workers=config.data.workers)
    frozen, trained = model.head[:2], model.head[2:]
    per_image = None
    features, targets = [], []  # targets: (x, y, z) metres with depth, else (u, v, image index)
    intrinsics, poses = [], []
    model.eval()  # batch norm with its running statistics, as at test time
    with torch.no_grad():
        for batch in progress_bar(loader, desc="scr refit: features", unit="batch", disable=not progress):
            images = batch["image"].to(device)
            x = frozen(model.encode(images))
            if use_depth:
                target, valid = depth_targets(batch["depth"].to(device), batch["K"].to(device),
                                              batch["world_from_cam"].to(device))
            else:
                pixels = cell_pixels(*images.shape[-2:], device).permute(2, 0, 1)
                index = torch.arange(len(images), device=device) + sum(len(k) for k in intrinsics)
                target = torch.cat([pixels.expand(len(images), -1, -1, -1),
                                    index.float().view(-1, 1, 1, 1).expand(-1, 1, *pixels.shape[1:])], 1)
                valid = torch.ones(target.shape[0], *target.shape[2:], dtype=torch.bool, device=device)
                intrinsics.append(batch["K"].to(device).float())
                poses.append(batch["world_from_cam"].to(device).float())
            if per_image is None:
                per_image = max(1, min(x.shape[-2] * x.shape[-1], refit.max_cells // len(dataset)))
            for f, t, v in zip(x, target, valid, strict=True):
                f, t = f.flatten(1).T[v.flatten()], t.flatten(1).T[v.flatten()]
                if len(f) > per_image:
                    keep = torch.randperm(len(f), generator=generator)[:per_image].to(f.device)
                    f, t = f[keep], t[keep]
                features.append(f.half())
                targets.append(t)
    features_MC, targets_M3 = torch.cat(features), torch.cat(targets)
    cells = len(features_MC)
    if cells == 0:
        logger.warning("scr_refit: no training cell has valid depth; skipped")
        return {}
    K_I33 = torch.cat(intrinsics) if intrinsics else None
    world_from_cam_I44 = torch.cat(poses) if poses else None
    optimizer = torch.optim.AdamW(trained.parameters(), lr=refit.lr, weight_decay=0.0)
    warm_up = max(1, refit.iterations // 50)
    mean, scale = model.scene_mean.view(1, 3), model.scene_scale
    order, position, distance_sum, counted = torch.randperm(cells, generator=generator), 0, 0.0, 0
    autocast = training_autocast(config, device)
    trained.train()
    steps = progress_bar(range(refit.iterations), desc="scr refit", unit="step", disable=not progress)
    for iteration in steps:
        fraction = (iteration - warm_up) / max(1, refit.iterations - warm_up)
        lr = refit.lr * ((iteration + 1) / warm_up if iteration < warm_up
                         else 0.5 * (1.0 + np.cos(np.pi * fraction)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if position + refit.batch_cells > cells:
            order, position = torch.randperm(cells, generator=generator), 0
        index = order[position:position + refit.batch_cells].to(features_MC.device)
        position += refit.batch_cells
        with autocast:
            hidden_NC = cells_through(trained[:-1], features_MC[index].float())
        cells_N3 = cells_through(trained[-1:], hidden_NC.float())  # float32, as in the model's forward
        coords = mean + scale * cells_N3
        target = targets_M3[index]
        if use_depth:
            distance = (coords - target).norm(dim=1).mean()
        else:
            distance, _ = cell_reprojection_loss(coords, target[:, :2], target[:, 2].long(), K_I33,
                                                 world_from_cam_I44, config.scr_loss)
        optimizer.zero_grad(set_to_none=True)
        distance.backward()
        optimizer.step()
        if iteration >= refit.iterations * 9 // 10:  # the last tenth: the reported distance
            distance_sum += float(distance.detach())
            counted += 1
    model.train()
    seconds = time.perf_counter() - start
    final = distance_sum / max(counted, 1)
    logger.info("scr head refit: %d cells, %d iterations, %.1f s, %s %.3f", cells, refit.iterations,
                seconds, "distance (m)" if use_depth else "reprojection loss", final)
    return {"refit_seconds": seconds, ("refit_distance_m" if use_depth else "refit_reprojection_loss"): final}


