"""Training throughput (images/s) of PoseNet: the network alone on synthetic tensors, and, with
`--data`, real frames from disk through the training pipeline.

    python bench/train_throughput.py [--backbone resnet18] [--size 224] [--batch 32] [--device auto]
    python bench/train_throughput.py --data /work/shared/data/7scenes-redkitchen-500 \\
        --backbone resnet_tiny --resize 120 --crop 112 144 --batch 32 [--threads 1 2] [--workers 0 1 2]

network-only: one optimisation step (the real loss and backward pass) on synthetic input tensors of
the crop size, so the figure is the model's speed, not the data loader's.

real data (`--data`, any dataset `load_frames` reads, such as the shared 7-Scenes kitchen frames;
its "train" split, for a flat folder the blocks `TEST_BLOCKS` keeps): the training dataset exactly
as `posenet-ros train` builds it for an RGB PoseNet (`PoseRegressionTraining.setup`: resize, random
crop, colour jitter, no depth), a DataLoader with `--workers` processes and the same optimisation
step, for each (threads, workers) pair: `cold` = building the decode cache (every image decoded
once), `warm` = an epoch reading the cache, `uncached` = an epoch decoding every file
(`data.cache=false`). The network-only figure at the same crop and batch is measured beside them;
`warm_vs_network` is their ratio.

Prints a table and writes JSON (default bench/results/train_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from posenet_ros.core.config import load_config
from posenet_ros.core.device import resolve_device
from posenet_ros.data.dataset import pose_vector
from posenet_ros.data.frames import FrameRecord
from posenet_ros.data.loading import load_frames
from posenet_ros.models.posenet import PoseNet
from posenet_ros.runtime.train_config import TrainConfig
from posenet_ros.training.losses import PoseLoss
from posenet_ros.training.method import epoch_seed
from posenet_ros.training.pose_regression import PoseRegressionTraining
from posenet_ros.training.train import position_statistics


def network_only(config: TrainConfig, size_hw: tuple[int, int], steps: int, device: torch.device) -> float:
    """images/s of optimisation steps on synthetic tensors of `size_hw`."""
    torch.manual_seed(0)
    model = PoseNet(config.model).to(device).train().set_dropout_mode("train")
    loss_fn = PoseLoss(config.loss).to(device)
    optimizer = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()], lr=1e-4)
    batch = config.batch_size
    images = torch.rand(batch, 3, *size_hw, device=device)
    pose = torch.cat([torch.randn(batch, 3), torch.tensor([[1.0, 0, 0, 0]]).expand(batch, 4)], 1).to(device)
    use_amp = device.type == "cuda" and config.amp

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(images)
            loss, _ = loss_fn(out.position_norm_B3, out.quat_B4, pose[:, :3], pose[:, 3:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def real_epochs(config: TrainConfig, records: list[FrameRecord], cache_dir: Path | None, epochs: int,
                device: torch.device) -> tuple[float, list[float]]:
    """(seconds to set up the dataset, incl. building the cache; images/s of each epoch) of the
    training pipeline on `records`."""
    poses = np.stack([pose_vector(r.world_from_cam) for r in records])
    mean, scale = position_statistics(poses[:, :3])
    torch.manual_seed(0)
    start = time.perf_counter()
    setup = PoseRegressionTraining().setup(config, records, mean, scale, cache_dir=cache_dir)
    setup_s = time.perf_counter() - start
    step = setup.step.to(device)
    optimizer = torch.optim.AdamW([*setup.model.parameters(), *setup.no_decay], lr=1e-4)
    rates = []
    for epoch in range(epochs):
        setup.dataset.set_epoch(epoch)
        loader = DataLoader(setup.dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                            num_workers=config.data.workers,
                            generator=torch.Generator().manual_seed(epoch_seed(0, epoch)))
        setup.model.train()
        setup.model.set_dropout_mode("train")
        images, start = 0, time.perf_counter()
        for batch in loader:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            loss, _ = step(batch, config.loss.kind, config.loss.reprojection_points)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images += len(batch["image"])
        _synchronize(device)
        rates.append(images / (time.perf_counter() - start))
    return setup_s, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=224, help="network-only mode: square input side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="network-only optimisation steps timed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, help="a dataset folder: adds the real-data rows")
    parser.add_argument("--resize", type=int, default=120, help="real data: shorter side after resizing")
    parser.add_argument("--crop", type=int, nargs=2, default=[112, 144], metavar=("H", "W"),
                        help="real data: random crop (height width)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="real data: torch threads")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="real data: DataLoader workers")
    parser.add_argument("--epochs", type=int, default=2,
                        help="real data: warm epochs timed (the best counts)")
    parser.add_argument("--frames", type=int, default=0, help="real data: use only the first N training "
                        "frames (0: all)")
    parser.add_argument("--uncached", action="store_true", help="real data: also time an uncached epoch")
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_throughput.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    overrides = [f"model.backbone={args.backbone}", f"batch_size={args.batch}", "loss.kind=learned"]
    result: dict = {"backbone": args.backbone, "batch": args.batch, "device": str(device),
                    "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                    else platform.processor()),
                    "amp_bf16": device.type == "cuda"}
    if args.data is None:
        config = load_config(TrainConfig, None, overrides)
        rate = network_only(config, (args.size, args.size), args.steps, device)
        result.update(image_size=args.size, threads=torch.get_num_threads(), images_per_s=rate,
                      peak_memory_mb=_peak_memory_mb(device))
        print(f"{'backbone':<10} {'size':>5} {'batch':>5} {'device':<8} {'images/s':>9} {'peak MB':>8}")
        print(f"{args.backbone:<10} {args.size:>5} {args.batch:>5} {device!s:<8} {rate:>9.1f} "
              f"{result['peak_memory_mb']:>8.0f}")
    else:
        records = load_frames(args.data, "train")
        records = records[:args.frames] if args.frames else records
        crop = tuple(args.crop)
        overrides += [f"data.resize={args.resize}", f"data.crop=[{crop[0]},{crop[1]}]", "data.brightness=0.2",
                      "data.contrast=0.2", "data.saturation=0.2", "data.hue=0.02"]
        result.update(data=str(args.data), frames=len(records), resize=args.resize, crop_hw=list(crop),
                      rows=[])
        print(f"{len(records)} training frames of {args.data}, resize {args.resize}, "
              f"crop {crop[1]}x{crop[0]}, batch {args.batch}, {args.backbone}, {device}")
        print(f"{'threads':>7} {'workers':>7} {'network':>9} {'cold s':>7} {'warm':>9} {'uncached':>9} "
              f"{'warm/net':>8}   (images/s)")
        for threads in args.threads:
            torch.set_num_threads(threads)
            for workers in args.workers:
                config = load_config(TrainConfig, None, [*overrides, f"data.workers={workers}"])
                network = network_only(config, crop, args.steps, device)
                with tempfile.TemporaryDirectory() as folder:
                    cold_s, _ = real_epochs(config, records, Path(folder), 0, device)
                    _, warm = real_epochs(config, records, Path(folder), args.epochs, device)
                uncached = (real_epochs(config, records, None, 1, device)[1][0] if args.uncached
                            else None)
                row = {"threads": threads, "workers": workers, "network_images_per_s": network,
                       "cache_build_s": cold_s, "cache_build_frames_per_s": len(records) / cold_s,
                       "warm_images_per_s": max(warm), "uncached_images_per_s": uncached,
                       "warm_vs_network": max(warm) / network}
                result["rows"].append(row)
                print(f"{threads:>7} {workers:>7} {network:>9.1f} {cold_s:>7.1f} {max(warm):>9.1f} "
                      f"{uncached if uncached is not None else float('nan'):>9.1f} "
                      f"{row['warm_vs_network']:>8.2f}")
        result["peak_memory_mb"] = _peak_memory_mb(device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
