"""PoseNet training: configuration, the loop, checkpoints every epoch, exact resume, DDP.

`train(config, data_root, out)` trains on one dataset folder (7-Scenes or Cambridge layout, real or
synthetic) or one rosbag2 (read as `config.data.bag` says, see data/bag_dataset.py) and writes into
`out`:

- `model.safetensors` + `config.json`: the latest model (see runtime/checkpoint.py; `load_model(out)`);
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from posenet_ros.core.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text
from posenet_ros.core.camera import Intrinsics
from posenet_ros.core.config import ConfigError, config_from_dict, config_to_dict
from posenet_ros.core.device import resolve_device
from posenet_ros.core.progress import progress_bar
from posenet_ros.data.dataset import pose_vector
from posenet_ros.data.frames import FrameRecord
from posenet_ros.data.loading import load_training_frames
from posenet_ros.evaluation.predict import predict
from posenet_ros.inference.metrics import pose_metrics
from posenet_ros.inference.uncertainty import UncertaintyConfig
from posenet_ros.runtime.checkpoint import MODEL_FILE, CheckpointError, save_checkpoint
from posenet_ros.runtime.methods import METHODS, inference_method
from posenet_ros.runtime.train_config import TrainConfig
from posenet_ros.training.method import TrainingMethod, TrainingSetup, epoch_seed, training_autocast
from posenet_ros.training.pose_regression import PoseRegressionTraining
from posenet_ros.training.scale import with_data_scale
from posenet_ros.training.scene_coordinates import SceneCoordinateTraining

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.safetensors"
CACHE_FOLDER = "cache"  # the decode cache's default folder in the training output (data/cache.py)
MAX_MAP_POSES = 5000
# settings that change how fast a run goes, never its result: they may change on --resume
RESUME_MAY_CHANGE = ("epochs", "device", "threads", "data.workers", "data.cache", "data.cache_dir")


def _distributed_context() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def position_statistics(positions_N3: np.ndarray) -> tuple[np.ndarray, float]:
    """Scene normalisation: the mean position and one isotropic scale (RMS deviation per axis, m)."""
    mean = positions_N3.mean(axis=0)
    scale = float(np.sqrt(np.mean((positions_N3 - mean) ** 2)))
    return mean, max(scale, 1e-3)


def train(config: TrainConfig, data_root: str | Path, out: str | Path, *, resume: bool = False,
          stop_after_epoch: int | None = None, progress: bool = True) -> Path:
    """Train on the dataset folder or rosbag2 at `data_root`, writing into `out`; returns the model
    checkpoint path.

    `stop_after_epoch` ends this run once that many epochs are done (for time-limited jobs); a later
    `resume=True` run continues exactly where it stopped.
    """
    out = Path(out)
    rank, world, local_rank = _distributed_context()
    torch.set_num_threads(config.torch_threads())
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


TRAINING_METHODS: dict[str, type[TrainingMethod]] = {"posenet": PoseRegressionTraining,
                                                     "scr": SceneCoordinateTraining}


def with_depth(config: TrainConfig) -> TrainConfig:
    """`config` with each frame's depth in use, as its method uses depth: scene coordinates solve poses
    from 3D-3D correspondences (`ransac.use_depth`), pose regression becomes the dual-stream RGB-D
    PoseNet (`model.depth`). What `posenet-ros train --use-depth` applies."""
    return TRAINING_METHODS[config.method]().with_depth(config)


def _train(config: TrainConfig, data_root: Path, out: Path, resume: bool, last_epoch: int, progress: bool,
           device: torch.device, rank: int, world: int) -> Path:
    method = TRAINING_METHODS[config.method]()
    bag = dataclasses.replace(config.data.bag, use_depth=config.data.bag.use_depth
                              or METHODS[config.method].depth_needed(config))
    train_records, val_records = load_training_frames(data_root, config.data, bag)
    config = with_data_scale(config, train_records)
    map_poses = np.stack([pose_vector(r.world_from_cam) for r in train_records])
    torch.manual_seed(config.seed)
    mean, scale = position_statistics(map_poses[:, :3])
    cache_dir = None
    if config.data.cache:
        cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else out / CACHE_FOLDER
    if world > 1 and rank != 0:
        dist.barrier()  # rank 0 builds the decode cache; the others then read it
    setup = method.setup(config, train_records, mean, scale, cache_dir=cache_dir, progress=progress)
    if world > 1 and rank == 0:
        dist.barrier()
    setup.step.to(device)
    return _train_loop(config, method, data_root, out, resume, last_epoch, progress, device, rank, world,
                       setup, train_records, val_records, map_poses)


def _train_loop(config: TrainConfig, method: TrainingMethod, data_root: Path, out: Path, resume: bool,
                last_epoch: int, progress: bool, device: torch.device, rank: int, world: int,
                setup: TrainingSetup, train_records: list[FrameRecord], val_records: list[FrameRecord],
                map_poses: np.ndarray) -> Path:
    model, step_module, dataset, no_decay = setup.model, setup.step, setup.dataset, setup.no_decay
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
    bar = progress_bar(total=max(0, last_epoch - start_epoch) * steps_per_epoch, desc="train", unit="batch",
                       disable=not progress)
    autocast = training_autocast(config, device)
    for epoch in range(start_epoch, last_epoch):
        kind = method.loss_kind(config, epoch)
        if epoch > 0 and kind != method.loss_kind(config, epoch - 1):
            # A new loss has another gradient scale: Adam's moments of the old one would make the
            # first steps far larger than the learning rate, so they start afresh.
            optimizer.state.clear()
        torch.manual_seed(epoch_seed(config.seed, epoch))
        dataset.set_epoch(epoch)
        generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
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
        method.start_epoch(model)
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
        row.update(method.check_epoch(config, epoch, row))
        if epoch + 1 == config.epochs:
            row.update(method.finish(model, train_records, config, device, main_process=rank == 0,
                                     progress=progress))
        if rank == 0:
            if val_records:
                row.update(_validate(model, val_records, config, device))
                bar.set_postfix(epoch=epoch + 1, val_pos=f"{row['val_median_position_m']:.3f}m",
                                val_rot=f"{row['val_median_orientation_deg']:.2f}deg")
            history.append(row)
            camera = train_records[0].intrinsics  # the images are undistorted to its pinhole K when read
            _save(out, config, data_root, epoch + 1, step_module, optimizer, scheduler, map_poses, history,
                  None if camera is None else camera.pinhole())
        if world > 1:
            dist.barrier()
    bar.close()
    return out / MODEL_FILE


def _validate(model: nn.Module, records: list, config: TrainConfig, device: torch.device) -> dict[str, float]:

    method = inference_method(config.method, model, uncertainty=UncertaintyConfig(mc_samples=0),
                              ransac=config.ransac)
    predictions = predict(method, records, config.eval_transform(), batch_size=config.batch_size,
                          with_uncertainty=False)
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
    differences = [d for d in differences if d not in RESUME_MAY_CHANGE]
    if differences:
        raise ConfigError(f"the configuration differs from the run being resumed in {_few(differences)}; "
                          f"only {', '.join(RESUME_MAY_CHANGE)} may change on --resume")
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
