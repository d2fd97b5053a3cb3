"""Cost of Monte-Carlo dropout as a ratio to one deterministic forward pass (one frame).

    python bench/mc_overhead.py [--backbone resnet18] [--size 224] [--samples 32] [--device auto]

Times, interleaved over `--repeats` rounds (p50 and p99 of each): one plain forward with dropout
off; `uncertainty.estimate` with N samples in `head` mode (backbone once, the head over N copies of
the features, then the mean pose and the 6x6 covariance); and, for reference, `full` mode (the whole
network over N copies of the image, with backbone dropout). The ratios divide medians measured in
this run. Prints a table and writes JSON (default bench/results/mc_overhead.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from posenet_ros.core.device import resolve_device
from posenet_ros.inference.uncertainty import UncertaintyConfig, estimate
from posenet_ros.models.posenet import ModelConfig, PoseNet


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--skip-full", action="store_true", help="do not time full-network sampling")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("bench/results/mc_overhead.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = PoseNet(ModelConfig(backbone=args.backbone, aleatoric="per_axis", backbone_dropout=0.1))
    model = model.to(device).eval()
    image = torch.rand(1, 3, args.size, args.size, device=device)
    head = UncertaintyConfig(mc_samples=args.samples, mc_mode="head")
    full = UncertaintyConfig(mc_samples=args.samples, mc_mode="full")
    cases = {"plain forward": lambda: model.set_dropout_mode("off")(image),
             f"MC head x{args.samples}": lambda: estimate(model, image, head)}
    if not args.skip_full:
        cases[f"MC full x{args.samples}"] = lambda: estimate(model, image, full)
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.inference_mode():
        for fn in cases.values():  # warm-up
            fn(), fn()
        for _ in range(args.repeats):
            for name, fn in cases.items():
                times[name].append(timed(fn, device))
    plain = float(np.median(times["plain forward"]))
    rows = {name: {"p50_ms": 1e3 * float(np.median(t)), "p99_ms": 1e3 * float(np.percentile(t, 99)),
                   "ratio_to_plain": float(np.median(t)) / plain} for name, t in times.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    result = {"backbone": args.backbone, "image_size": args.size, "samples": args.samples,
              "device": str(device), "device_name": name, "threads": torch.get_num_threads(),
              "repeats": args.repeats, "cases": rows}
    print(f"{args.backbone} {args.size}x{args.size} on {device} ({torch.get_num_threads()} threads)")
    print(f"{'case':<16} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}")
    for name, row in rows.items():
        print(f"{name:<16} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['ratio_to_plain']:>6.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
