"""Per-frame cost of the causal temporal steps as ratios to the per-frame CNN forward pass, measured in
one run: the learned filter (`CausalSmoother.update`) and the odometry-aided filter
(`OdometryAidedSmoother.update` with an odometry increment; and with the learned motion standing in
for missing odometry).

    python bench/temporal_step.py [--backbone resnet18] [--size 224] [--hidden 64] [--feature-dim 0]
                                  [--frames 200] [--device cpu]

Both on batch 1 under inference_mode, dropout off: the CNN forward is PoseNet(images) on a
SIZExSIZE image; the temporal step is the deterministic head on the features plus one LSTM step and
the conversion to a pose with covariance (what the Relocalizer adds per frame when smoothing is on);
the odometry-aided step is the deterministic head (the per-frame pose, as the learned step has it),
the camera increment from two odometry poses and the Kalman filter's prediction and update.
Prints a table and writes JSON (default bench/results/temporal_step.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from posenet_ros.core.device import resolve_device
from posenet_ros.core.geometry import matrix_to_quat, pose_from_position_quat, quat_exp
from posenet_ros.inference.odometry_fusion import FusionParameters, OdometryNoise, RobotOdometry
from posenet_ros.inference.temporal import (
    CausalSmoother,
    OdometryAidedSmoother,
    TemporalCalibration,
    head_inputs,
)
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.models.temporal import TemporalConfig, TemporalModel

REPO_ROOT = Path(__file__).resolve().parents[1]


def timed_ms(function, frames: int) -> np.ndarray:
    for _ in range(10):
        function()
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        function()
        times.append(1e3 * (time.perf_counter() - start))
    return np.asarray(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--feature-dim", type=int, default=0)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "temporal_step.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = resolve_device(args.device)
    model = PoseNet(ModelConfig(backbone=args.backbone)).to(device).eval()
    # On the host, as checkpoint.load_model places it; the step's inputs come from the device.
    temporal = TemporalModel(TemporalConfig(args.hidden, args.feature_dim), model.head_dim).eval()
    smoother = CausalSmoother(temporal, model, TemporalCalibration())
    image = torch.rand(1, 3, args.size, args.size, device=device)
    with torch.inference_mode():
        features = model.forward_features(image)

        def forward() -> None:
            model(image)
            if device.type == "cuda":
                torch.cuda.synchronize()

        def step() -> None:
            smoother.update(features, *head_inputs(model, features))

        aided = OdometryAidedSmoother(temporal, model, FusionParameters(), OdometryNoise())
        covariance = np.diag([0.04] * 3 + [0.003] * 3)
        base_from_cam = pose_from_position_quat([0.2, 0.0, 0.5], quat_exp([-np.pi / 2, 0.0, 0.0]))
        frame = [0]

        def odometry_step(with_odometry: bool = True) -> None:
            """A base driving 0.1 m and 0.6° per frame, its camera seen where it is (the head runs for its
            cost; its pose on random weights would be an outlier every frame)."""
            frame[0] += 1
            head_inputs(model, features)
            odom_from_base = pose_from_position_quat([0.1 * frame[0], 0.0, 0.0],
                                                     quat_exp([0.0, 0.0, 0.01 * frame[0]]))
            world_from_cam = odom_from_base @ base_from_cam
            odometry = RobotOdometry(odom_from_base, base_from_cam) if with_odometry else None
            aided.update(features, world_from_cam[:3, 3], matrix_to_quat(world_from_cam[:3, :3]), covariance,
                         odometry)

        cnn = timed_ms(forward, args.frames)
        temporal_ms = timed_ms(step, args.frames)
        odometry_ms = timed_ms(odometry_step, args.frames)
        learned_motion_ms = timed_ms(lambda: odometry_step(False), args.frames)
    results = {"device": str(device), "threads": torch.get_num_threads(), "backbone": args.backbone,
               "size": args.size, "hidden": args.hidden, "feature_dim": args.feature_dim,
               "cnn_forward_ms": {"p50": float(np.median(cnn)), "p99": float(np.percentile(cnn, 99))},
               "temporal_step_ms": {"p50": float(np.median(temporal_ms)),
                                    "p99": float(np.percentile(temporal_ms, 99))},
               "ratio_p50": float(np.median(temporal_ms) / np.median(cnn)),
               "odometry_step_ms": {"p50": float(np.median(odometry_ms)),
                                    "p99": float(np.percentile(odometry_ms, 99))},
               "odometry_ratio_p50": float(np.median(odometry_ms) / np.median(cnn)),
               "learned_motion_step_ms": {"p50": float(np.median(learned_motion_ms)),
                                          "p99": float(np.percentile(learned_motion_ms, 99))},
               "learned_motion_ratio_p50": float(np.median(learned_motion_ms) / np.median(cnn))}
    print(f"{args.backbone} {args.size}x{args.size}, {device}, {results['threads']} threads, batch 1")
    print(f"  CNN forward            p50 {results['cnn_forward_ms']['p50']:.2f} ms")
    print(f"  causal temporal step   p50 {results['temporal_step_ms']['p50']:.3f} ms")
    print(f"  ratio                  {results['ratio_p50']:.3f}")
    print(f"  odometry-aided step    p50 {results['odometry_step_ms']['p50']:.3f} ms, "
          f"ratio {results['odometry_ratio_p50']:.3f}")
    print(f"  ... on learned motion  p50 {results['learned_motion_step_ms']['p50']:.3f} ms, "
          f"ratio {results['learned_motion_ratio_p50']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
