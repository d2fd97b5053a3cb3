"""Real images: PoseNet, scene coordinates with depth and scene coordinates from RGB only, trained and
evaluated on a real capture's held-out time blocks, next to a nearest-neighbour retrieval baseline.

    python bench/real_data.py --data ../shared/data/7scenes-redkitchen-500 --seven-scenes-cameras \
                              [--out /tmp/real_data] [--only posenet scr] [--threads 0]
                              [--results bench/results/real_data.json]

`--data` is any dataset `posenet-ros train` reads; its "train" and "test" splits are used (for a
flat folder such as the shared kitchen frames, every fourth block of 25 frames is test,
data/splits.py). Training validates on blocks held out of the training frames
(`data.val_split=blocks`, the default) and `calibrate` fits the covariance on them. Each model is
trained by the command line a user would type (`RECIPES`, the ones docs/results.md reports), then
calibrated and evaluated on the test split; the scene coordinate network is evaluated twice: with
the frame's depth (Kabsch) and from RGB alone (`eval --solver pnp`). `--seven-scenes-cameras` reads
the data through a folder of links to its files with a camera.json giving 7-Scenes' two cameras
(colour 525 px, depth 585 px focal length at 640x480, scaled to the images; DSAC* and ACE use the
same), so the Kinect's depth is registered to its colour images (data/images.py `register_depth`)
instead of taken pixel for pixel. Prints a table (median errors, share within 5 cm / 5°, mean NEES
of the position, rotation and pose blocks after calibration, training time: the seconds of the
epochs and the head refit, validation left out) and writes JSON. A finished run in `--out` is reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from posenet_ros.cli import main as cli
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.evaluate import nearest_neighbour_errors
from posenet_ros.inference.metrics import pose_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]

RECIPES = {
    "posenet": ["method=posenet", "model.backbone=resnet_tiny", "model.dropout=0.2", "data.resize=120",
                "data.crop=[112,144]", "batch_size=16", "lr=1e-3", "epochs=150", "loss.kind=aleatoric",
                "model.aleatoric=per_axis"],
    "scr": ["--use-depth", "method=scr", "scr.backbone=resnet_tiny", "data.resize=240", "data.crop=null",
            "epochs=40", "batch_size=8", "lr=3e-3", "weight_decay=0.01", "scr_refit.iterations=2000",
            "ransac.threshold_px=16", "batchnorm_frozen_after=28"],
}
"""The training command lines (after `posenet-ros train --data DATA --out RUN`)."""

KEYS = ("frames", "median_position_error_m", "median_orientation_error_deg", "within_0.05m_5deg")
BLOCKS = ("position", "rotation", "pose")


def run(*args: str) -> None:
    if cli(list(args)) != 0:
        raise SystemExit(f"posenet-ros {' '.join(args)} failed")


def evaluated(model: Path, data: Path, out: Path, threads: int, *extra: str) -> dict:
    """The overall metrics of `posenet-ros eval` on the test split: KEYS and the mean NEES per block."""
    run("eval", "--quiet", "--model", str(model), "--data", str(data), "--out", str(out),
        "--threads", str(threads), *extra)
    overall = json.loads((out / "metrics.json").read_text())["overall"]
    result = {key: overall.get(key) for key in KEYS}
    uncertainty = overall.get("uncertainty") or {}
    result["mean_nees"] = {block: uncertainty[block]["mean_nees"] for block in BLOCKS if block in uncertainty}
    return result


SEVEN_SCENES_COLOUR = {"width": 640, "height": 480, "fx": 525.0, "fy": 525.0, "cx": 320.0, "cy": 240.0}
SEVEN_SCENES_DEPTH = {"width": 640, "height": 480, "fx": 585.0, "fy": 585.0, "cx": 320.0, "cy": 240.0}


def with_seven_scenes_cameras(data: Path, out: Path) -> Path:
    """A folder of links to the files of `data` (a flat 7-Scenes folder) with a camera.json of 7-Scenes'
    colour and depth cameras; the data itself is not copied or changed."""
    view = out / "data"
    view.mkdir(parents=True, exist_ok=True)
    for source in data.iterdir():
        if source.name.startswith("frame-") and not (view / source.name).exists():
            (view / source.name).symlink_to(source.resolve())
    (view / "camera.json").write_text(json.dumps({**SEVEN_SCENES_COLOUR, "depth": SEVEN_SCENES_DEPTH}))
    return view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seven-scenes-cameras", action="store_true",
                        help="register the depth with 7-Scenes' colour and depth cameras (module docstring)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/real_data"))
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the package default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "results" / "real_data.json")
    args = parser.parse_args()
    if args.seven_scenes_cameras:
        args.data = with_seven_scenes_cameras(args.data, args.out)
    train, test = load_frames(args.data, "train"), load_frames(args.data, "test")
    position_error, orientation_error = nearest_neighbour_errors(train, test)
    baseline = pose_metrics(position_error, orientation_error)
    rows: dict[str, dict] = {"nearest_neighbour": {key: baseline[key] for key in KEYS}}
    timings: dict[str, float] = {}
    for name in args.only:
        run_dir = args.out / name
        if not (run_dir / "model.safetensors").exists():  # a finished run in --out is reused
            run("train", "--quiet", "--data", str(args.data), "--out", str(run_dir), "--threads",
                str(args.threads), f"device={args.device}", *RECIPES[name])
        history = json.loads((run_dir / "metrics.json").read_text())
        timings[f"{name}_train_s"] = sum(row["seconds"] + row.get("refit_seconds", 0.0) for row in history)
        run("calibrate", "--quiet", "--model", str(run_dir), "--data", str(args.data), "--threads",
            str(args.threads))
        rows[name] = evaluated(run_dir, args.data, args.out / f"{name}_eval", args.threads)
        if name == "scr":
            rows["scr_rgb_pnp"] = evaluated(run_dir, args.data, args.out / "scr_pnp_eval", args.threads,
                                            "--solver", "pnp")
    result = {"data": str(args.data), "train_frames": len(train), "test_frames": len(test),
              "device": args.device, "threads": args.threads or torch.get_num_threads(),
              "recipes": {name: RECIPES[name] for name in args.only}, "rows": rows, **timings}
    if "posenet" in rows:
        result["posenet_median_over_nearest_neighbour"] = (rows["posenet"]["median_position_error_m"]
                                                           / baseline["median_position_error_m"])
    print(f"{len(train)} training and {len(test)} test frames of {args.data}")
    print(f"{'':<18}{'median position':>17}{'median rotation':>17}{'5cm/5°':>9}   mean NEES (3, 3, 6)")
    for name, values in rows.items():
        nees = values.get("mean_nees") or {}
        nees_text = " ".join(f"{nees[block]:.2f}" for block in BLOCKS if block in nees)
        print(f"{name:<18}{values['median_position_error_m']:>15.4f} m"
              f"{values['median_orientation_error_deg']:>15.2f}°"
              f"{100 * values['within_0.05m_5deg']:>8.1f}%   {nees_text}")
    if "posenet_median_over_nearest_neighbour" in result:
        print(f"PoseNet / nearest-neighbour median position error: "
              f"{result['posenet_median_over_nearest_neighbour']:.2f}")
    print("training: " + ", ".join(f"{key.removesuffix('_train_s')} {value:.0f} s"
                                   for key, value in timings.items()))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
