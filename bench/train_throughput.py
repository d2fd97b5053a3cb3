"""Training throughput (images/s) and peak memory of one optimisation step of PoseNet.

    python bench/train_throughput.py [--backbone resnet18] [--size 224] [--batch 32] [--device auto]

Synthetic input tensors (the loss and backward pass are the real ones), so the figure is the model's
speed, not the data loader's. Prints a table and writes JSON (default bench/results/train_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from posenet_ros.core.device import resolve_device
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.runtime.train_config import LossConfig
from posenet_ros.training.losses import PoseLoss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_throughput.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = PoseNet(ModelConfig(backbone=args.backbone)).to(device).train().set_dropout_mode("train")
    loss_fn = PoseLoss(LossConfig()).to(device)
    optimizer = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()], lr=1e-4)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    pose = torch.cat([torch.randn(args.batch, 3), torch.tensor([[1.0, 0, 0, 0]]).expand(args.batch, 4)], 1)
    pose = pose.to(device)
    use_amp = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(images)
            loss, _ = loss_fn(out.position_norm_B3, out.quat_B4, pose[:, :3], pose[:, 3:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {
        "backbone": args.backbone, "image_size": args.size, "batch": args.batch, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(), "amp_bf16": use_amp,
        "images_per_s": args.batch * args.steps / seconds,
        "peak_memory_mb": (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(f"{'backbone':<10} {'size':>5} {'batch':>5} {'device':<8} {'images/s':>9} {'peak MB':>8}")
    print(f"{args.backbone:<10} {args.size:>5} {args.batch:>5} {device!s:<8} "
          f"{result['images_per_s']:>9.1f} {result['peak_memory_mb']:>8.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
