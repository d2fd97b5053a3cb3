"""Every documented training recipe on synthetic scenes built differently from the one it was tuned on.

    python bench/recipes.py [--out /tmp/recipes] [--scenes NAME ...] [--recipes NAME ...]
                            [--json bench/results/recipes.json]

Renders three 64x48 scenes (`SCENES`: world axes z-up, y-down and y-up, room sizes x1, x0.5 and x2,
camera headings 90-180°, -90-0° (rotations of 90-180° about the world's vertical axis) and all around),
trains each recipe of README.md and docs/methods.md (`RECIPES`, shortened to about a minute each on
one CPU core) with `posenet-ros train` on the scene's training loops, and evaluates it on the test loop
(`posenet-ros eval --mc-samples 0`) against the mean-pose and nearest-neighbour baselines
(`inference.metrics`). A recipe "learns all six components" when its median orientation error is below
10° and below the nearest-neighbour baseline's, and its last epoch reports no component as not learned
(`not_learned` in metrics.csv). Prints one table per scene and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from posenet_ros.cli import main as cli
from posenet_ros.data.dataset import pose_vector
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.evaluate import nearest_neighbour_errors
from posenet_ros.inference.metrics import mean_pose_baseline, pose_metrics

SCENE = ["width=64", "height=48", "hfov_deg=90", "frames_per_sequence=96", "train_sequences=8",
         "val_sequences=1", "test_sequences=1", "outside_sequences=0", "variations=[]"]
SCENES: dict[str, list[str]] = {
    "z_up_x1_headings_90_180": ["world_axes=z_up", "room_scale=1.0", "heading_deg=[90,180]"],
    "y_down_x0.5_headings_-90_0": ["world_axes=y_down", "room_scale=0.5", "heading_deg=[-90,0]"],
    "y_up_x2_all_headings": ["world_axes=y_up", "room_scale=2.0"],
}
POSENET = ["device=cpu", "model.backbone=resnet_tiny", "model.dropout=0.2", "data.resize=48",
           "data.crop=[44,60]", "batch_size=16", "lr=1e-3", "epochs=30", "data.val_split=''"]
SCR = ["device=cpu", "method=scr", "scr.backbone=resnet_tiny", "data.resize=48", "data.crop=null", "lr=3e-3",
       "weight_decay=0.01", "batch_size=8", "epochs=12", "batchnorm_frozen_after=8",
       "scr_refit.iterations=1000", "data.val_split=''"]
# name -> (extra `train` flags, key=value overrides): the README's and docs/methods.md's command lines
RECIPES: dict[str, tuple[list[str], list[str]]] = {
    "posenet learned (default)": ([], POSENET),
    "posenet aleatoric per_axis": ([], [*POSENET, "loss.kind=aleatoric", "model.aleatoric=per_axis"]),
    "posenet rgbd aleatoric": (["--use-depth"],
                               [*POSENET, "loss.kind=aleatoric", "model.aleatoric=per_axis"]),
    "scr depth (kabsch)": (["--use-depth"], SCR),
    "scr rgb (pnp)": ([], SCR),
}


def render(out: Path, scene: str) -> Path:
    root = out / scene
    if not (root / "synthetic.json").exists():
        assert cli(["synth", "--quiet", str(root), *SCENE, *SCENES[scene]]) == 0
    return root


def baselines(root: Path) -> dict[str, dict]:
    """The nearest-neighbour and mean-pose baselines on the test split."""
    train, test = load_frames(root, "train"), load_frames(root, "test")
    nearest = pose_metrics(*nearest_neighbour_errors(train, test))
    train_positions = np.array([r.world_from_cam[:3, 3] for r in train])
    test_positions = np.array([r.world_from_cam[:3, 3] for r in test])
    train_quats = np.array([pose_vector(r.world_from_cam)[3:] for r in train])
    test_quats = np.array([pose_vector(r.world_from_cam)[3:] for r in test])
    mean = pose_metrics(*mean_pose_baseline(train_positions, train_quats, test_positions, test_quats))
    return {"nearest_neighbour": nearest, "mean_pose": mean}


def run_recipe(root: Path, out: Path, recipe: str) -> dict:
    """Train and evaluate one recipe; its figures, training time and last `not_learned`."""
    flags, overrides = RECIPES[recipe]
    run = out / "runs" / root.name / recipe.replace(" ", "_").replace("(", "").replace(")", "")
    start = time.perf_counter()
    if not (run / "model.safetensors").exists():
        assert cli(["train", "--quiet", *flags, "--data", str(root), "--out", str(run), *overrides]) == 0
    seconds = time.perf_counter() - start
    assert cli(["eval", "--quiet", "--model", str(run), "--data", str(root), "--out", str(run / "eval"),
                "--mc-samples", "0"]) == 0
    overall = json.loads((run / "eval" / "metrics.json").read_text())["overall"]
    history = json.loads((run / "metrics.json").read_text())
    return {"median_position_error_m": overall["median_position_error_m"],
            "median_orientation_error_deg": overall["median_orientation_error_deg"],
            "within_0.05m_5deg": overall.get("within_0.05m_5deg"),
            "train_seconds": seconds, "not_learned": history[-1].get("not_learned", ""),
            "final_rms": {k[4:]: v for k, v in history[-1].items() if k.startswith("rms_")}}


def learns_all_components(result: dict, nearest: dict) -> bool:
    return (result["median_orientation_error_deg"] < 10.0
            and result["median_orientation_error_deg"] < nearest["median_orientation_error_deg"]
            and not result["not_learned"])


def table(scene: str, base: dict, results: dict[str, dict]) -> str:
    lines = [f"### {scene}", "", "| recipe | median position | median orientation | within 5 cm / 5° | "
             "all six learned | train s |", "|---|---|---|---|---|---|"]
    for name, key in (("nearest-neighbour baseline", "nearest_neighbour"),
                      ("mean-pose baseline", "mean_pose")):
        b = base[key]
        lines.append(f"| {name} | {b['median_position_error_m']:.3f} m | "
                     f"{b['median_orientation_error_deg']:.1f}° | {100 * b['within_0.05m_5deg']:.1f}% | | |")
    for name, r in results.items():
        ok = learns_all_components(r, base["nearest_neighbour"])
        lines.append(f"| {name} | {r['median_position_error_m']:.3f} m | "
                     f"{r['median_orientation_error_deg']:.1f}° | {100 * r['within_0.05m_5deg']:.1f}% | "
                     f"{'yes' if ok else 'NO ' + r['not_learned']} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/recipes"))
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "recipes.json")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report = {}
    for scene in args.scenes:
        root = render(args.out, scene)
        base = baselines(root)
        results = {recipe: run_recipe(root, args.out, recipe) for recipe in args.recipes}
        report[scene] = {"scene": [*SCENE, *SCENES[scene]], "baselines": base, "recipes": results}
        print(table(scene, base, results), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
