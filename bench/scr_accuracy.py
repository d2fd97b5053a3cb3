"""The accurate mode against PoseNet on the synthetic scene: scene coordinate regression with RANSAC
and a PoseNet trained on the same frames, both evaluated on the held-out test loop; plus the
Relocalizer's per-frame latency of the scene-coordinate mode.

    python bench/scr_accuracy.py [--out /tmp/scr_bench] [--epochs 52] [--posenet-epochs 60]
                                 [--backbone resnet_tiny] [--refit-iterations 7500] [--train-sequences 8]
                                 [--device cpu] [--seed 0] [--batchnorm-frozen-after 32] [--cpu-amp]

Renders a 160x120 scene (`--train-sequences` training loops, default 8; a val loop for calibration;
a test loop), trains both models (`posenet-ros train --use-depth method=scr ...`: the pose from
3D-3D correspondences with the frame's depth, with the ACE-style head refit after the last epoch;
and a `resnet_tiny` PoseNet) on the same frames, calibrates both on the val loop and evaluates both
on the test loop. The same scene coordinate network is also evaluated with the RGB solver (PnP,
`ransac.use_depth=false`, uncalibrated) and, through `Relocalizer.process`, on test depth with
Kinect-like noise (σ_z = 1.2 mm + 1.9 mm·(z/m - 0.4)², Nguyen et al. 2012; 10% of pixels made holes),
which also times the Relocalizer. Prints a table and writes JSON (default
bench/results/scr_accuracy.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from posenet_ros.cli import main as cli
from posenet_ros.data.dataset import pose_vector
from posenet_ros.data.images import read_frame_depth, read_frame_rgb
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.predict import predict
from posenet_ros.inference.metrics import pose_errors, pose_metrics
from posenet_ros.runtime.checkpoint import load_model
from posenet_ros.runtime.methods import inference_method
from posenet_ros.runtime.relocalizer import Relocalizer

REPO_ROOT = Path(__file__).resolve().parents[1]
SCENE = ["width=160", "height=120", "hfov_deg=70", "frames_per_sequence=96",
         "val_sequences=1", "outside_sequences=0", "variations=[]"]


def run(*args: str) -> None:
    if cli(list(args)) != 0:
        raise SystemExit(f"posenet-ros {' '.join(args)} failed")


KEYS = ("frames", "median_position_error_m", "median_orientation_error_deg", "within_0.05m_5deg")


def overall(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())["overall"]


def accuracy(position_error_N: np.ndarray, orientation_error_N: np.ndarray) -> dict:
    """The `KEYS` of a set of errors (metres, degrees; inf where a frame has no pose)."""
    metrics = pose_metrics(position_error_N, orientation_error_N)
    return {key: metrics[key] for key in KEYS}


def kinect_noise(depth_HW: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`depth_HW` (metres, 0 = hole) with Kinect-like axial noise and 10% of the pixels made holes."""
    sigma = 0.0012 + 0.0019 * (depth_HW - 0.4) ** 2
    noisy = depth_HW + sigma * rng.standard_normal(depth_HW.shape)
    return np.where((depth_HW > 0) & (rng.random(depth_HW.shape) >= 0.1), noisy, 0.0).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/scr_bench"))
    parser.add_argument("--epochs", type=int, default=52)
    parser.add_argument("--posenet-epochs", type=int, default=60)
    parser.add_argument("--train-sequences", type=int, default=8, help="training loops of the scene")
    parser.add_argument("--backbone", default="resnet_tiny")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--refit-iterations", type=int, default=7500,
                        help="scr_refit.iterations: head refit steps on buffered cells (0: none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed of both models (the scene is always seed 0's; the SCR accuracy "
                             "varies a lot with it)")
    parser.add_argument("--batchnorm-frozen-after", type=int, default=32,
                        help="batchnorm_frozen_after of the scene coordinate model (-1: never)")
    parser.add_argument("--cpu-amp", action="store_true",
                        help="train the scene coordinate model with bfloat16 autocast on the CPU (cpu_amp)")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "results" / "scr_accuracy.json")
    args = parser.parse_args()
    out, scene = args.out, args.out / "scene"
    if not scene.exists():
        run("synth", "--quiet", str(scene), *SCENE, f"train_sequences={args.train_sequences}")
    timings = {}
    frozen = "null" if args.batchnorm_frozen_after < 0 else args.batchnorm_frozen_after
    start = time.perf_counter()
    run("train", "--quiet", "--use-depth", "--data", str(scene), "--out", str(out / "scr"),
        f"device={args.device}", "method=scr", f"scr.backbone={args.backbone}", "data.resize=120",
        "data.crop=null", "data.val_split=''",
        f"epochs={args.epochs}", "batch_size=8", f"lr={args.lr}", "weight_decay=0.01",
        f"scr_refit.iterations={args.refit_iterations}", "ransac.threshold_px=4",
        f"cpu_amp={str(args.cpu_amp).lower()}", f"seed={args.seed}",
        f"batchnorm_frozen_after={frozen}")
    timings["scr_train_s"] = time.perf_counter() - start
    run("calibrate", "--quiet", "--model", str(out / "scr"), "--data", str(scene), "--split", "val")
    run("eval", "--quiet", "--model", str(out / "scr"), "--data", str(scene), "--out", str(out / "scr_eval"))
    start = time.perf_counter()
    run("train", "--quiet", "--data", str(scene), "--out", str(out / "posenet"), f"device={args.device}",
        "model.backbone=resnet_tiny", "model.dropout=0.2", "data.resize=60", "data.crop=[56,76]",
        "batch_size=16", "lr=1e-3", f"epochs={args.posenet_epochs}", "data.val_split=''",
        "loss.kind=aleatoric", "model.aleatoric=per_axis", f"seed={args.seed}")
    timings["posenet_train_s"] = time.perf_counter() - start
    run("calibrate", "--quiet", "--model", str(out / "posenet"), "--data", str(scene), "--split", "val")
    run("eval", "--quiet", "--model", str(out / "posenet"), "--data", str(scene), "--out",
        str(out / "posenet_eval"))

    test = load_frames(scene, "test")
    loaded = load_model(out / "scr", args.device)
    pnp_method = inference_method(loaded.method, loaded.model, uncertainty=loaded.uncertainty,
                                  ransac=dataclasses.replace(loaded.ransac, use_depth=False))
    pnp = predict(pnp_method, test, loaded.config.eval_transform())
    relocalizer = Relocalizer(out / "scr", device=args.device)
    rng = np.random.default_rng(0)
    latencies, errors, failures = [], [], 0
    for index, record in enumerate(test):
        rgb, depth = read_frame_rgb(record.image_path), kinect_noise(read_frame_depth(record.depth_path), rng)
        begin = time.perf_counter()
        try:
            estimate = relocalizer.process(rgb, depth, stamp_ns=index)
        except ValueError:
            failures += 1
            errors.append((np.inf, np.inf))
        else:
            truth = pose_vector(record.world_from_cam)
            errors.append(tuple(float(e) for e in pose_errors(estimate.position_3, estimate.quat_wxyz_4,
                                                                truth[:3], truth[3:])))
        latencies.append(1e3 * (time.perf_counter() - begin))
    scr, posenet = overall(out / "scr_eval"), overall(out / "posenet_eval")
    noisy = np.array(errors)
    result = {
        "scr": {key: scr.get(key) for key in KEYS},
        "scr_nees": {block: scr["uncertainty"][block]["mean_nees"]
                     for block in ("position", "rotation", "pose")},
        "scr_rgb_pnp": accuracy(pnp.position_error_N, pnp.orientation_error_N),
        "scr_noisy_depth": accuracy(noisy[:, 0], noisy[:, 1]),
        "posenet": {key: posenet.get(key) for key in KEYS},
        "median_ratio_posenet_over_scr": posenet["median_position_error_m"] / scr["median_position_error_m"],
        "scr_latency_ms": {"p50": float(np.percentile(latencies, 50)),
                           "p99": float(np.percentile(latencies, 99))},
        "scr_frames_without_pose": failures,
        "device": str(relocalizer.device), "threads": torch.get_num_threads(), "seed": args.seed,
        "batchnorm_frozen_after": args.batchnorm_frozen_after, **timings,
    }
    print(f"{'':<16}{'median position':>17}{'median rotation':>17}{'5cm/5°':>9}")
    for name in ("scr", "scr_noisy_depth", "scr_rgb_pnp", "posenet"):
        values = result[name]
        print(f"{name:<16}{values['median_position_error_m']:>15.4f} m"
              f"{values['median_orientation_error_deg']:>15.2f}°{100 * values['within_0.05m_5deg']:>8.1f}%")
    print(f"PoseNet / SCR median position error: {result['median_ratio_posenet_over_scr']:.1f}x")
    print(f"SCR mean NEES: {result['scr_nees']}")
    print(f"SCR Relocalizer latency p50 {result['scr_latency_ms']['p50']:.1f} ms, "
          f"p99 {result['scr_latency_ms']['p99']:.1f} ms ({result['device']}, {result['threads']} threads)")
    print(f"training: SCR {timings['scr_train_s']:.0f} s, PoseNet {timings['posenet_train_s']:.0f} s")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
