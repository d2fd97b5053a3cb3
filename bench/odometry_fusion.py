"""The odometry-aided causal filter against the other modes on synthetic scenes of several seeds: per
seed, render a scene (the acceptance test's settings, three val loops), train the small PoseNet,
calibrate it on the val loops, train the temporal model (which fits the filter), write the test loops
as robot bags with a simulated odometry, and evaluate each mode on them.

    python bench/odometry_fusion.py [--seeds 0 1 2] [--work DIR] [--rate 10]

Modes: per-frame, causal with the learned motion, causal with odometry of 2% and 1°/m and of 5% and
2°/m, the 2% odometry with a 2 s outage in every loop, and offline (learned). Per mode: median
position and orientation errors, the median frame-to-frame jitter, the mean NEES per block, and for the
outage, the median position error from 1 s after each outage to the end of its loop next to the same
frames' without the outage. Prints a table and writes JSON (default
bench/results/odometry_fusion.json). The work folder keeps scenes, runs and bags: a second run reuses
them. Several minutes per seed on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from posenet_ros.cli import main as cli

REPO_ROOT = Path(__file__).resolve().parents[1]
SCENE = ["width=64", "height=48", "hfov_deg=90", "frames_per_sequence=96", "train_sequences=8",
         "test_sequences=4", "outside_sequences=1", "val_sequences=3", "variations=[]"]
TRAIN = ["device=cpu", "model.backbone=resnet_tiny", "model.dropout=0.2", "data.resize=48",
         "data.crop=[44,60]", "batch_size=16", "lr=1e-3", "epochs=60", "data.val_split=''",
         "loss.kind=aleatoric", "model.aleatoric=per_axis"]
LOOP_S, OUTAGE_S = 14.5, (2.95, 4.95)  # a loop of 96 frames at 10 Hz and make-bag's 5 s gap; the outage


def _run(*args: str) -> None:
    if cli(list(args)) != 0:
        raise SystemExit(f"failed: posenet-ros {' '.join(args)}")


def _errors(out: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    errors = [np.linalg.norm([float(row[f"{axis}_pred"]) - float(row[f"{axis}_true"]) for axis in "xyz"])
              for row in rows]
    return np.array([int(row["frame_index"]) for row in rows]), np.array(errors)


def seed_results(seed: int, work: Path, rate_hz: float) -> dict:
    scene, run = work / f"scene{seed}", work / f"run{seed}"
    if not (run / "model.safetensors").exists():
        _run("synth", "--quiet", str(scene), *SCENE, f"seed={seed}")
        _run("train", "--quiet", "--data", str(scene), "--out", str(run), *TRAIN)
        _run("calibrate", "--quiet", "--model", str(run), "--data", str(scene), "--split", "val")
        _run("train-temporal", "--quiet", "--model", str(run), "--data", str(scene), "device=cpu")
    outages = [argument for k in range(4) for argument in
               ("--odometry-outage", f"{LOOP_S * k + OUTAGE_S[0]:.2f}", f"{LOOP_S * k + OUTAGE_S[1]:.2f}")]
    bags = {"2%": (["0.02", "1.0"], []), "5%": (["0.05", "2.0"], []), "outage": (["0.02", "1.0"], outages)}
    for name, (noise, extra) in bags.items():
        if not (work / f"bag{seed}_{name}").exists():
            _run("make-bag", "--quiet", str(scene), str(work / f"bag{seed}_{name}"), "--rate", str(rate_hz),
                 "--odometry-noise", *noise, "--odometry-seed", str(seed), *extra)
    modes = {"per-frame": ("2%", ["--smooth", "off"]),
             "causal, learned motion": ("2%", ["--smooth", "causal", "--odometry", "none"]),
             "causal, odometry 2%": ("2%", ["--smooth", "causal"]),
             "causal, odometry 5%": ("5%", ["--smooth", "causal", "--odometry-noise", "0.05", "2.0"]),
             "causal, 2% with outages": ("outage", ["--smooth", "causal"]),
             "offline (learned)": ("2%", ["--smooth", "offline"])}
    results = {}
    for mode, (bag, args) in modes.items():
        out = work / f"eval{seed}_{mode.replace(' ', '_').replace(',', '').replace('%', 'pc')}"
        _run("eval", "--quiet", "--model", str(run), "--data", str(work / f"bag{seed}_{bag}"),
             "--out", str(out), *args)
        overall = json.loads((out / "metrics.json").read_text())["overall"]
        results[mode] = {
            "median_position_error_m": overall["median_position_error_m"],
            "median_orientation_error_deg": overall["median_orientation_error_deg"],
            "median_jitter_position_m": overall["median_jitter_position_m"],
            "mean_nees": {block: overall["uncertainty"][block]["mean_nees"]
                          for block in ("position", "rotation")},
            "odometry_missing": overall.get("odometry", {}).get("missing"),
            "out": out}
    frame_index, with_outage = _errors(results["causal, 2% with outages"].pop("out"))
    _, without = _errors(results["causal, odometry 2%"]["out"])
    later = frame_index >= round((OUTAGE_S[1] + 1.0) * rate_hz)
    results["causal, 2% with outages"]["recovery"] = {
        "median_position_error_m_from_1s_after": float(np.median(with_outage[later])),
        "same_frames_without_outage_m": float(np.median(without[later]))}
    for values in results.values():
        values.pop("out", None)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "bench" / "results" / "odometry_fusion")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second of the bags")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "odometry_fusion.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {seed: seed_results(seed, args.work, args.rate) for seed in args.seeds}
    print(f"{'seed':<5} {'mode':<26} {'position':>9} {'orient.':>8} {'jitter':>8} {'NEES pos/rot':>13}  "
          "change of position / orientation / jitter")
    for seed, modes in results.items():
        base = modes["per-frame"]
        for mode, values in modes.items():
            position, orientation = values["median_position_error_m"], values["median_orientation_error_deg"]
            jitter, nees = values["median_jitter_position_m"], values["mean_nees"]
            change = (f"{position / base['median_position_error_m'] - 1:+.0%} / "
                      f"{orientation / base['median_orientation_error_deg'] - 1:+.0%} / "
                      f"{jitter / base['median_jitter_position_m'] - 1:+.0%}")
            print(f"{seed:<5} {mode:<26} {position:>7.3f} m {orientation:>6.2f}° {jitter:>6.3f} m "
                  f"{nees['position']:>6.2f}/{nees['rotation']:<6.2f} {change}")
        recovery = modes["causal, 2% with outages"]["recovery"]
        after = recovery["median_position_error_m_from_1s_after"]
        without = recovery["same_frames_without_outage_m"]
        print(f"{seed:<5} outage: {after:.3f} m from 1 s after the odometry is back, {without:.3f} m there "
              "without the outage")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
