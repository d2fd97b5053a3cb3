"""PoseNet training: configuration, the loop, checkpoints every epoch, exact resume, DDP.

`train(config, data_root, out)` trains on one dataset folder (7-Scenes or Cambridge layout, real or
synthetic) or one rosbag2 (read as `config.data.bag` says, see data/bag_dataset.py) and writes into
`out`:

- `model.safetensors` + `config.json`: the latest model (see checkpoint.py; `load_model(out)`);
- `train_state.safetensors`: weights, optimizer, scheduler and loss parameters of the last completed
  epoch, for `resume=True`;
- `metrics.csv` / `metrics.json`: one row per epoch (losses, ŝx, ŝq, learning rate, validation
  medians, throughput).

Every file is written atomically at the end of each epoch. Randomness is a function of
(seed, epoch) only (the shuffling order, crops and jitter, dropout masks, sampled reprojection points),
so a run interrupted after any epoch and resumed ends with the same weights as an uninterrupted run.

Several processes (`torchrun --nproc_per_node N posenet-ros train ...`) train with
DistributedDataParallel over one code path: gloo on CPU, NCCL on CUDA; rank 0 validates and writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from posenet_ros.core.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text
from posenet_ros.core.camera import FrameTransform, Intrinsics, eval_transform
from posenet_ros.core.config import ConfigError, config_from_dict, config_to_dict
from posenet_ros.core.device import resolve_device
from posenet_ros.data.bag_dataset import BagDataConfig
from posenet_ros.data.dataset import PoseDataset, network_input, pose_vector, read_frame_depth
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.predict import fit_feature_memory, predict
from posenet_ros.inference.metrics import pose_metrics
from posenet_ros.inference.pose_solving import RansacConfig
from posenet_ros.inference.scene_coordinates import depth_targets
from posenet_ros.models.backbones import load_pretrained
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.models.scene_coordinates import SceneCoordinateConfig, SceneCoordinateNet
from posenet_ros.runtime.checkpoint import MODEL_FILE, CheckpointError, save_checkpoint
from posenet_ros.training.losses import LossConfig, PoseLoss, sample_depth_points
from posenet_ros.training.scene_coordinate_losses import ScrLossConfig, depth_loss, reprojection_loss

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.safetensors"
MAX_MAP_POSES = 5000


@dataclass
class DataConfig:
    train_split: str = "train"
    val_split: str = "test"  # validated after every epoch; "" disables validation
    resize: int = 256  # shorter image side (PoseNet: 256)
    crop: int | tuple[int, int] | None = 224  # side or (height, width): random for training, centre for
    # evaluation; None: the whole resized image
    brightness: float = 0.0  # colour jitter amounts (0 = off)
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    depth_holes: float = 0.3  # RGB-D models: largest share of depth pixels made holes per training frame
    skip_bad: bool = False  # skip (and count) bad frames instead of stopping
    workers: int = 0  # DataLoader worker processes
    bag: BagDataConfig = field(default_factory=BagDataConfig)  # topics, ground truth and split time
    # ranges when the data root is a rosbag2


@dataclass
class ScrRefitConfig:
    """Method scr, after the last epoch (ACE-style, Brachmann et al. CVPR 2023): the encoder and the
    head's first (3x3) convolution are frozen, their features of every training cell are buffered
    (no augmentation) and the head's 1x1 convolutions are trained on batches of cells shuffled across
    all images. Much faster per sample than end-to-end steps and without their correlated batches."""

    iterations: int = 0  # 0: no refit
    batch_cells: int = 4096
    lr: float = 3e-3  # AdamW, 2% linear warm-up then cosine to 0
    max_cells: int = 2_000_000  # buffer cap (float16 features); more cells are subsampled per image

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.batch_cells < 1 or not self.lr > 0 or self.max_cells < 1:
            raise ValueError("scr_refit needs iterations >= 0, batch_cells >= 1, lr > 0, max_cells >= 1")


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bfloat16 autocast on CUDA
    # bfloat16 autocast on the CPU too (training steps and the scr head refit): about 1.9x faster on
    # CPUs with AVX512-BF16 or AMX, slower on others, so off by default
    cpu_amp: bool = False
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    reprojection_after_epochs: int | None = None  # the seed's schedule: `loss.kind` first, then reprojection
    # From this epoch (0-based) on, batch norm uses and keeps its running statistics (eval mode), the ones
    # the model is evaluated with; with small batches the per-batch statistics differ from them (None:
    # never; the reprojection epochs always do)
    batchnorm_frozen_after: int | None = None
    pretrained: str | None = None  # backbone weights (.safetensors, torchvision key names)
    method: Literal["posenet", "scr"] = "posenet"  # pose regression, or scene coordinates + RANSAC
    model: ModelConfig = field(default_factory=ModelConfig)  # posenet
    loss: LossConfig = field(default_factory=LossConfig)  # posenet
    scr: SceneCoordinateConfig = field(default_factory=SceneCoordinateConfig)  # scr: the network
    scr_loss: ScrLossConfig = field(default_factory=ScrLossConfig)  # scr: training targets
    ransac: RansacConfig = field(default_factory=RansacConfig)  # scr: the pose solver
    scr_refit: ScrRefitConfig = field(default_factory=ScrRefitConfig)  # scr: head refit on shuffled cells
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        if any(value is not None and value < 0 for value in (self.reprojection_after_epochs,
                                                              self.batchnorm_frozen_after)):
            raise ValueError("reprojection_after_epochs and batchnorm_frozen_after must be >= 0")
        if self.loss.kind == "aleatoric" and self.model.aleatoric == "none":
            raise ValueError("loss.kind 'aleatoric' needs model.aleatoric 'isotropic' or 'per_axis'")

    def loss_kind(self, epoch: int) -> str:
        """The loss used in `epoch` (0-based)."""
        if self.method == "scr":
            return f"scr_{self.scr_loss.kind}"
        if self.reprojection_after_epochs is not None and epoch >= self.reprojection_after_epochs:
            return "reprojection"
        return self.loss.kind


class _TrainStep(nn.Module):
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


class _ScrStep(nn.Module):
    """Scene coordinate network and its loss (scr_losses.py): depth targets or reprojection."""

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


def _distributed_context() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _train_transform(config: TrainConfig) -> FrameTransform:
    """Random crops and colour jitter; evaluation uses `evaluation.eval_transform` (centre crop)."""
    data = config.data
    return FrameTransform(resize=data.resize, crop=data.crop, random_crop=True, brightness=data.brightness,
                          contrast=data.contrast, saturation=data.saturation, hue=data.hue,
                          depth_holes=data.depth_holes if config.model.needs_depth else 0.0)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def position_statistics(positions_N3: np.ndarray) -> tuple[np.ndarray, float]:
    """Scene normalisation: the mean position and one isotropic scale (RMS deviation per axis, m)."""
    mean = positions_N3.mean(axis=0)
    scale = float(np.sqrt(np.mean((positions_N3 - mean) ** 2)))
    return mean, max(scale, 1e-3)


def median_depth(records: Sequence[FrameRecord], frames: int = 64) -> float:
    """The median valid depth (metres) over up to `frames` evenly spaced records: an RGB-D model's
    depth normalisation (`PoseNet.set_depth_scale`)."""
    chosen = np.unique(np.linspace(0, len(records) - 1, min(frames, len(records))).round().astype(int))
    values = []
    for index in chosen:
        depth = read_frame_depth(records[index].depth_path)
        values.append(depth[np.isfinite(depth) & (depth > 0)])
    valid = np.concatenate(values)
    if not len(valid):
        raise DatasetError(f"the depth images of the training frames have no valid pixel (checked "
                           f"{len(chosen)})")
    return float(np.median(valid))


def train(config: TrainConfig, data_root: str | Path, out: str | Path, *, resume: bool = False,
          stop_after_epoch: int | None = None, progress: bool = True) -> Path:
    """Train on the dataset folder or rosbag2 at `data_root`, writing into `out`; returns the model
    checkpoint path.

    `stop_after_epoch` ends this run once that many epochs are done (for time-limited jobs); a later
    `resume=True` run continues exactly where it stopped.
    """
    out = Path(out)
    rank, world, local_rank = _distributed_context()
    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        last_epoch = min(config.epochs, stop_after_epoch or config.epochs)
        return _train(config, Path(data_root), out, resume, last_epoch, progress and rank == 0, device, rank,
                      world)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, data_root: Path, out: Path, resume: bool, last_epoch: int, progress: bool,
           device: torch.device, rank: int, world: int) -> Path:
    needs_depth = config.model.needs_depth
    scr_depth = config.method == "scr" and config.ransac.use_depth  # poses solved with depth
    bag = dataclasses.replace(config.data.bag, use_depth=config.data.bag.use_depth or needs_depth
                              or scr_depth)
    train_records = load_frames(data_root, config.data.train_split, skip_bad=config.data.skip_bad, bag=bag)
    val_records = (load_frames(data_root, config.data.val_split, skip_bad=config.data.skip_bad, bag=bag)
                   if config.data.val_split else [])
    map_poses = np.stack([pose_vector(r.world_from_cam) for r in train_records])
    torch.manual_seed(config.seed)
    mean, scale = position_statistics(map_poses[:, :3])
    if config.method == "scr":
        model, step_module, dataset = _scr_setup(config, train_records, mean, scale)
        return _train_loop(config, data_root, out, resume, last_epoch, progress, device, rank, world, model,
                           step_module.to(device), dataset, train_records, val_records, map_poses, [])
    model = PoseNet(config.model)
    model.set_position_statistics(torch.from_numpy(mean), scale)
    dataset = PoseDataset(train_records, _train_transform(config), seed=config.seed,
                          with_depth=True if needs_depth else None)
    if needs_depth:
        model.set_depth_scale(median_depth(train_records))
    if config.pretrained:
        backbones = [model.backbone]
        if model.depth_backbone is not None and (config.model.depth_backbone or config.model.backbone) == \
                config.model.backbone:
            backbones.append(model.depth_backbone)  # the RGB filters adapted to the depth channels
        for backbone in backbones:
            ignored = load_pretrained(backbone, config.pretrained)
        logger.info("loaded pretrained backbone %s (ignored %d classifier keys)", config.pretrained,
                    len(ignored))
    step_module = _TrainStep(model, PoseLoss(config.loss)).to(device)
    return _train_loop(config, data_root, out, resume, last_epoch, progress, device, rank, world, model,
                       step_module, dataset, train_records, val_records, map_poses,
                       [step_module.loss.s_x, step_module.loss.s_q])


def _scr_setup(config: TrainConfig, records: list[FrameRecord], mean: np.ndarray,
               scale: float) -> tuple[SceneCoordinateNet, _ScrStep, PoseDataset]:
    """The scene coordinate network (scene statistics: the camera positions' mean, and their spread
    plus the median depth, as the points seen lie that far from the cameras), its loss and data."""
    if any(record.intrinsics is None for record in records):
        raise DatasetError("scene coordinate regression needs the camera intrinsics of every frame")
    has_depth = all(record.depth_path is not None for record in records)
    if config.scr_loss.kind == "depth" and not has_depth:
        raise DatasetError("scr_loss.kind 'depth' needs depth images; use 'reprojection' (or 'auto')")
    if config.ransac.use_depth and not has_depth:
        raise DatasetError("ransac.use_depth (train --use-depth) solves poses with depth images, and the "
                           "training frames have none")
    use_depth = has_depth and config.scr_loss.kind != "reprojection"
    model = SceneCoordinateNet(config.scr)
    reach = median_depth(records) if use_depth else config.scr_loss.prior_depth
    model.set_scene_statistics(torch.from_numpy(mean), scale + reach)
    if config.pretrained:
        load_pretrained(model.encoder, config.pretrained, partial=True)
    dataset = PoseDataset(records, _train_transform(config), seed=config.seed, with_depth=use_depth)
    return model, _ScrStep(model, config.scr_loss, use_depth), dataset


def _train_loop(config: TrainConfig, data_root: Path, out: Path, resume: bool, last_epoch: int,
                progress: bool, device: torch.device, rank: int, world: int, model: nn.Module,
                step_module: nn.Module, dataset: PoseDataset, train_records: list[FrameRecord],
                val_records: list[FrameRecord], map_poses: np.ndarray,
                no_decay: list[torch.nn.Parameter]) -> Path:
    groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": config.loss.weights_lr})
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
                 if config.lr_schedule == "cosine" else None)
    start_epoch, history = 0, []
    if resume:
        start_epoch, history = _load_state(out / STATE_FILE, config, step_module, optimizer, scheduler)
        logger.info("resuming %s after epoch %d", out, start_epoch)
    elif rank == 0 and (out / STATE_FILE).exists():
        raise FileExistsError(f"{out} already holds a training run; pass --resume to continue it "
                              "or choose a new output folder")
    trainer = DistributedDataParallel(step_module) if world > 1 else step_module

    sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=config.seed) if world > 1 else None
    per_process_batch = max(1, config.batch_size // world)
    # Whole batches only: batch normalisation cannot train on a batch of one.
    steps_per_epoch = len(dataset) // (per_process_batch * world)
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {len(dataset)} frames, fewer than one batch of "
                         f"{per_process_batch * world}; lower batch_size")
    bar = tqdm(total=max(0, last_epoch - start_epoch) * steps_per_epoch, desc="train", unit="batch",
               disable=not progress)
    autocast = _autocast(config, device)
    for epoch in range(start_epoch, last_epoch):
        kind = config.loss_kind(epoch)
        if epoch > 0 and kind != config.loss_kind(epoch - 1):
            # A new loss has another gradient scale: Adam's moments of the old one would make the
            # first steps far larger than the learning rate, so they start afresh.
            optimizer.state.clear()
        torch.manual_seed(_epoch_seed(config.seed, epoch))
        dataset.set_epoch(epoch)
        generator = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch))
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=per_process_batch, shuffle=sampler is None, sampler=sampler,
                            generator=generator, num_workers=config.data.workers, drop_last=True)
        model.train()
        if kind == "reprojection" or (config.batchnorm_frozen_after is not None
                                      and epoch >= config.batchnorm_frozen_after):
            # Batch norm keeps the statistics it has (eval mode): in reprojection fine-tuning so that the
            # normalisation no longer drifts with the last batches' random crops; after
            # `batchnorm_frozen_after` so that the model trains with the statistics it is evaluated with.
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if isinstance(model, PoseNet):
            model.set_dropout_mode("train")
        sums: dict[str, float] = {}
        images, start = 0, time.perf_counter()
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in batch.items()}
            with autocast:
                loss, terms = trainer(batch, kind, config.loss.reprojection_points)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            count = len(batch["image"])
            images += count
            for key, value in {"loss": float(loss.detach()), **terms}.items():
                sums[key] = sums.get(key, 0.0) + value * count
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}", refresh=False)
        seconds = time.perf_counter() - start
        if scheduler is not None:
            scheduler.step()
        row: dict[str, Any] = {"epoch": epoch + 1, "loss_kind": kind,
                               **{k: v / max(images, 1) for k, v in sums.items()},
                               "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
                               "images_per_s": images * world / seconds if seconds > 0 else None}
        if (epoch + 1 == config.epochs and isinstance(model, SceneCoordinateNet)
                and config.scr_refit.iterations > 0):
            # Every process refits the same way (same seed, same buffer): the replicas stay equal.
            row.update(refit_scr_head(model, train_records, config, device))
        if rank == 0:
            if epoch + 1 == config.epochs and isinstance(model, PoseNet):  # the loop-closure memory

                fit_feature_memory(model, train_records, eval_transform(config_to_dict(config)),
                                   batch_size=config.batch_size)
            if val_records:
                row.update(_validate(model, val_records, config, device))
                bar.set_postfix(epoch=epoch + 1, val_pos=f"{row['val_median_position_m']:.3f}m",
                                val_rot=f"{row['val_median_orientation_deg']:.2f}deg")
            history.append(row)
            _save(out, config, data_root, epoch + 1, step_module, optimizer, scheduler, map_poses, history,
                  train_records[0].intrinsics)
        if world > 1:
            dist.barrier()
    bar.close()
    return out / MODEL_FILE


def _autocast(config: TrainConfig, device: torch.device) -> torch.autocast:
    """bfloat16 autocast of the training steps: `amp` on CUDA, `cpu_amp` on the CPU."""
    enabled = config.amp if device.type == "cuda" else config.cpu_amp and device.type == "cpu"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _cells_through(layers: nn.Sequential, x_NC: torch.Tensor) -> torch.Tensor:
    """The head's 1x1 convolutions and ReLUs applied to N independent cells (N, C) as linear layers
    (faster than a convolution over a column image)."""
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            x_NC = nn.functional.linear(x_NC, layer.weight.flatten(1), layer.bias)
        else:
            x_NC = layer(x_NC)
    return x_NC


def refit_scr_head(model: SceneCoordinateNet, records: list[FrameRecord], config: TrainConfig,
                   device: torch.device) -> dict[str, float]:
    """ScrRefitConfig: retrain `model.head[2:]` (its 1x1 convolutions) on buffered features of the
    training cells, shuffled across images. Needs depth (the targets of `depth_targets`); without it
    the model is left as it is. Returns the metrics row entries (refit seconds, final distance)."""

    refit = config.scr_refit
    if any(record.depth_path is None for record in records):
        logger.warning("scr_refit needs depth images; skipped")
        return {}
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(_epoch_seed(config.seed, 1_000_003))
    dataset = PoseDataset(records, eval_transform(config_to_dict(config)), with_depth=True)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False,
                        num_workers=config.data.workers)
    frozen, trained = model.head[:2], model.head[2:]
    per_image = None
    features, targets = [], []
    model.eval()  # batch norm with its running statistics, as at test time
    with torch.no_grad():
        for batch in loader:
            images = batch["image"].to(device)
            x = frozen(model.encode(images))
            target, valid = depth_targets(batch["depth"].to(device), batch["K"].to(device),
                                          batch["world_from_cam"].to(device))
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
    optimizer = torch.optim.AdamW(trained.parameters(), lr=refit.lr, weight_decay=0.0)
    warm_up = max(1, refit.iterations // 50)
    mean, scale = model.scene_mean.view(1, 3), model.scene_scale
    order, position, distance_sum, counted = torch.randperm(cells, generator=generator), 0, 0.0, 0
    autocast = _autocast(config, device)
    trained.train()
    for iteration in range(refit.iterations):
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
            hidden_NC = _cells_through(trained[:-1], features_MC[index].float())
        cells_N3 = _cells_through(trained[-1:], hidden_NC.float())  # float32, as in the model's forward
        coords = mean + scale * cells_N3
        distance = (coords - targets_M3[index]).norm(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        distance.backward()
        optimizer.step()
        if iteration >= refit.iterations * 9 // 10:  # the last tenth: the reported distance
            distance_sum += float(distance.detach())
            counted += 1
    model.train()
    seconds = time.perf_counter() - start
    logger.info("scr head refit: %d cells, %d iterations, %.1f s, distance %.3f m", cells,
                refit.iterations, seconds, distance_sum / max(counted, 1))
    return {"refit_seconds": seconds, "refit_distance_m": distance_sum / max(counted, 1)}


def _validate(model: nn.Module, records: list, config: TrainConfig, device: torch.device) -> dict[str, float]:

    predictions = predict(model, records, eval_transform(config_to_dict(config)), device=device,
                          batch_size=config.batch_size, ransac=config.ransac)
    metrics = pose_metrics(predictions.position_error_N, predictions.orientation_error_N)
    return {"val_median_position_m": metrics["median_position_error_m"],
            "val_median_orientation_deg": metrics["median_orientation_error_deg"]}


def _save(out: Path, config: TrainConfig, data_root: Path, epochs_done: int, step_module: nn.Module,
          optimizer: torch.optim.Optimizer, scheduler, map_poses: np.ndarray, history: list[dict],
          camera: Intrinsics | None) -> None:
    """Write the model, the resumable state and the metrics of the completed epoch (atomically)."""
    config_dict = config_to_dict(config)
    if len(map_poses) > MAX_MAP_POSES:
        map_poses = map_poses[np.linspace(0, len(map_poses) - 1, MAX_MAP_POSES).round().astype(int)]
    tensors = {f"step.{k}": v.detach().cpu().contiguous() for k, v in step_module.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for index, values in optimizer_state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain_state.setdefault(str(index), {})[name] = value
    metadata = {
        "config": json.dumps(config_dict),
        "epochs_done": str(epochs_done),
        "data_root": str(data_root),
        "optimizer_param_groups": json.dumps(optimizer_state["param_groups"]),
        "optimizer_plain_state": json.dumps(plain_state),
        "scheduler": json.dumps(scheduler.state_dict() if scheduler is not None else None),
        "history": json.dumps(history),
    }
    out.mkdir(parents=True, exist_ok=True)
    # The state first: a crash between the two writes leaves a model that is not newer than the state.
    atomic_write_bytes(out / STATE_FILE, save(tensors, metadata=metadata))
    extra = {"epochs_done": str(epochs_done)}
    if camera is not None:  # the training camera (scene coordinate regression solves poses with it)
        extra["camera"] = json.dumps(camera.to_dict())
    save_checkpoint(out / MODEL_FILE, step_module.model, config_dict, map_poses, extra)
    atomic_write_json(out / "metrics.json", history)
    columns = list(dict.fromkeys(key for row in history for key in row))
    lines = [",".join(columns)] + [",".join(_csv_value(row.get(c)) for c in columns) for row in history]
    atomic_write_text(out / "metrics.csv", "\n".join(lines) + "\n")


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def read_train_state_metadata(path: Path) -> dict[str, str]:
    """Metadata of a `train_state.safetensors` (config JSON, epochs done, data root, ...)."""
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable training state ({exc})") from exc


def _load_state(path: Path, config: TrainConfig, step_module: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler) -> tuple[int, list[dict]]:
    metadata = read_train_state_metadata(path)
    try:
        tensors = load_file(str(path))
        stored = config_from_dict(TrainConfig, json.loads(metadata["config"]))
    except (SafetensorError, OSError, KeyError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: corrupt training state ({exc})") from exc
    differences = _config_differences(config_to_dict(stored), config_to_dict(config))
    differences = [d for d in differences if d not in ("epochs", "device", "data.workers")]
    if differences:
        raise ConfigError(f"the configuration differs from the run being resumed in {_few(differences)}; "
                          "only epochs, device and data.workers may change on --resume")
    step_state = {k.removeprefix("step."): v for k, v in tensors.items() if k.startswith("step.")}
    try:
        step_module.load_state_dict(step_state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model ({exc})") from exc
    optimizer_state: dict[str, Any] = {"state": {},
                                       "param_groups": json.loads(metadata["optimizer_param_groups"])}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state["state"].setdefault(int(index), {})[name] = value
    for index, values in json.loads(metadata["optimizer_plain_state"]).items():
        optimizer_state["state"].setdefault(int(index), {}).update(values)
    optimizer.load_state_dict(optimizer_state)
    scheduler_state = json.loads(metadata["scheduler"])
    if scheduler is not None and scheduler_state is not None:
        scheduler_state["T_max"] = scheduler.T_max  # more epochs may have been asked for
        scheduler.load_state_dict(scheduler_state)
    return int(metadata["epochs_done"]), json.loads(metadata["history"])


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")


def _config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            keys += _config_differences(a[key], b[key], prefix + key + ".")
        elif a.get(key) != b.get(key):
            keys.append(prefix + key)
    return keys
