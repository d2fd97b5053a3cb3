"""`posenet-ros eval`: a checkpoint over dataset splits -> metrics.json, predictions.csv and plots.

Conventions (the package's, see docs/design.md): positions are camera positions in the world frame in
metres (the translation of `world_from_cam`); orientations are unit quaternions (w, x, y, z) of the
`world_from_cam` rotation, q and -q being the same rotation. Position errors are Euclidean distances
in metres, orientation errors the angle of the relative rotation in degrees, in [0, 180].

Metric names (`pose_metrics`, `metrics.json`): see inference/metrics.py.

Files written by `evaluate` into its output folder:

    metrics.json      {"model", "split", "device", "transform", "thresholds": [[M, D], ...],
                       "method", "mc_samples", "ransac" (method scr: the pose solver),
                       "uncertainty_source", "calibrated",
                       "smoothing",
                       "scenes": {name: {"data_root", metrics..., "mean_pose_baseline": {metrics...}}},
                       "overall": {metrics..., "mean_pose_baseline": {...}}}
                      (the baseline entries only when the checkpoint holds training poses)
    predictions.csv   one row per frame, columns `PREDICTION_COLUMNS`
    error_cdf.png     cumulative distributions of the position and orientation errors per scene
    top_view.png      x-y top view: training cameras (grey), test ground truth and predictions

With Monte-Carlo sampling (`mc_samples` > 0, by default the checkpoint's setting), predictions are
MC-dropout means and metrics.json also holds, per scene and overall, "uncertainty"
(`calibration.uncertainty_metrics`: NEES, σ-region coverage next to the Gaussian values, Spearman
correlation of predicted σ and error) and, where frames of unknown places exist
(`unknown_splits`), "loop_closure" (ROC AUC of the score, precision and recall of the known_place
flag with the checkpoint's thresholds and hysteresis); predictions.csv gains σ columns and
uncertainty_vs_error.png plots predicted σ against error.

Plots are drawn with `matplotlib.figure.Figure` (no pyplot, so the caller's backend is untouched)
and every file is written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posenet_ros.core.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text
from posenet_ros.core.device import resolve_device
from posenet_ros.data.bag_dataset import bag_config_for_checkpoint, read_bag_message
from posenet_ros.data.dataset import pose_vector
from posenet_ros.data.frames import BagMessage, DatasetError, FrameRecord
from posenet_ros.data.images import read_frame_rgb
from posenet_ros.data.loading import is_bag, load_frames
from posenet_ros.evaluation.plots import plot_error_cdf, plot_top_view, plot_uncertainty
from posenet_ros.evaluation.predict import Predictions, predict
from posenet_ros.inference.calibration import pose_error_vectors, uncertainty_metrics
from posenet_ros.inference.loop_closure import LoopClosureConfig, roc_auc, run_detector
from posenet_ros.inference.metrics import (
    DEFAULT_THRESHOLDS,
    check_thresholds,
    image_descriptor,
    mean_pose_baseline,
    nearest_neighbour_baseline,
    pose_errors,
    pose_metrics,
    sigmas,
    threshold_key,
    threshold_label,
)
from posenet_ros.inference.odometry_fusion import OdometryNoise, RobotOdometry
from posenet_ros.inference.temporal import (
    OdometryAidedSmoother,
    head_inputs,
    smooth_sequence,
    temporal_jitter,
)
from posenet_ros.models.temporal import SmoothMode
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.ros.bag_reading import open_bag, read_transforms
from posenet_ros.ros.tf_buffer import TransformUnavailable
from posenet_ros.runtime.checkpoint import LoadedModel, load_model
from posenet_ros.runtime.train_config import BagDataConfig

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DEFAULT_UNKNOWN_SPLITS",
    "PREDICTION_COLUMNS",
    "UNCERTAINTY_COLUMNS",
    "Predictions",
    "evaluate",
    "format_table",
    "format_uncertainty",
    "loop_closure_metrics",
    "mean_pose_baseline",
    "pose_errors",
    "pose_metrics",
    "predict",
    "prediction_errors_N6",
    "sigmas",
    "threshold_key",
    "threshold_label",
    "unknown_place_records",
]


PREDICTION_COLUMNS = (
    "scene", "sequence", "frame_index",
    "x_true", "y_true", "z_true", "qw_true", "qx_true", "qy_true", "qz_true",
    "x_pred", "y_pred", "z_pred", "qw_pred", "qx_pred", "qy_pred", "qz_pred",
    "position_error_m", "orientation_error_deg",
)


# --------------------------------------------------------------------------------------------------
# evaluate(): checkpoint + datasets -> metrics.json, predictions.csv, plots
# --------------------------------------------------------------------------------------------------


def _scene_names(roots: Sequence[Path]) -> list[str]:
    """One name per data root: its folder name, made unique with '-2', '-3', ... where needed."""
    names: list[str] = []
    for root in roots:
        base = root.resolve().name or str(root)
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.append(name)
    return names


def _csv_float(value: float) -> str:
    return repr(float(value))  # shortest text that reads back as the same float64


UNCERTAINTY_COLUMNS = ("sigma_position_m", "sigma_rotation_deg", "loop_closure_score")


def _predictions_csv(scenes: dict[str, Predictions]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_uncertainty = all(p.covariance_N66 is not None for p in scenes.values())
    writer.writerow([*PREDICTION_COLUMNS, *(UNCERTAINTY_COLUMNS if with_uncertainty else ())])
    for scene, p in scenes.items():
        extra = np.stack([*sigmas(p.covariance_N66), p.score_N], 1) if with_uncertainty else None
        for i in range(len(p)):
            writer.writerow([
                scene, p.sequence[i], int(p.frame_index[i]),
                *map(_csv_float, p.position_true_N3[i]), *map(_csv_float, p.quat_true_N4[i]),
                *map(_csv_float, p.position_pred_N3[i]), *map(_csv_float, p.quat_pred_N4[i]),
                _csv_float(p.position_error_N[i]), _csv_float(p.orientation_error_N[i]),
                *(map(_csv_float, extra[i]) if extra is not None else ()),
            ])
    return buffer.getvalue()


def _with_baseline(metrics: dict[str, Any], predictions: Predictions, map_poses_N7: np.ndarray,
                   thresholds: Sequence[tuple[float, float]]) -> dict[str, Any]:
    if len(map_poses_N7):
        errors = mean_pose_baseline(map_poses_N7[:, :3], map_poses_N7[:, 3:], predictions.position_true_N3,
                                    predictions.quat_true_N4)
        metrics["mean_pose_baseline"] = pose_metrics(*errors, thresholds)
    return metrics


def _concatenate(predictions: Sequence[Predictions]) -> Predictions:
    """One Predictions of all frames, in order (optional fields kept when every part has them)."""
    values: dict[str, Any] = {"sequence": [s for p in predictions for s in p.sequence]}
    for field in dataclasses.fields(Predictions):
        if field.name != "sequence":
            parts = [getattr(p, field.name) for p in predictions]
            values[field.name] = None if any(x is None for x in parts) else np.concatenate(parts)
    return Predictions(**values)


DEFAULT_UNKNOWN_SPLITS = ("outside", "occlusion", "blur")  # the synthetic scene's unknown places


def prediction_errors_N6(predictions: Predictions) -> np.ndarray:
    """Per-frame error vectors (metres, radians) in the covariance's convention (calibration.py)."""
    return pose_error_vectors(predictions.position_pred_N3, predictions.quat_pred_N4,
                              predictions.position_true_N3, predictions.quat_true_N4)


def unknown_place_records(root: Path, splits: Sequence[str] | None, *,
                          bag: BagDataConfig | None = None) -> dict[str, list[FrameRecord]]:
    """Frames of places the model should not know, per split: every frame of `splits` (None: those
    of `DEFAULT_UNKNOWN_SPLITS` the dataset has; a rosbag2, read with the options `bag`, has those
    its split_times name). A synthetic scene's `synthetic.json` marks which frames of undegraded
    sequences are still in the mapped area; those are left out."""
    in_map: dict[str, list[bool]] = {}
    description = root / "synthetic.json"
    if description.is_file():
        for sequence in json.loads(description.read_text()).get("sequences", []):
            if sequence.get("variation") is None:
                in_map[Path(sequence["folder"]).name] = sequence.get("in_map", [])

    def known(record: FrameRecord) -> bool:
        flags = in_map.get(record.sequence, [])
        return record.frame_index < len(flags) and bool(flags[record.frame_index])

    bag_splits = (bag or BagDataConfig()).ranges() if is_bag(root) else None
    result = {}
    for split in DEFAULT_UNKNOWN_SPLITS if splits is None else splits:
        if splits is None and bag_splits is not None and split not in bag_splits:
            continue  # without a time range of its own, the split would be the whole bag
        try:
            records = load_frames(root, split, bag=bag)
        except DatasetError:
            if splits is not None:
                raise
            continue
        records = [record for record in records if not known(record)]
        if records:
            result[split] = records
    return result


def loop_closure_metrics(known: Predictions, unknown: dict[str, Predictions],
                         config: LoopClosureConfig) -> dict[str, Any]:
    """How the loop-closure score tells the `known` frames from each split of `unknown` ones: ROC
    AUC of the score (unknown places should score higher; also of the Monte-Carlo spread alone, for
    comparison), overall and per split, and precision / recall of the hysteresis flag."""
    everything = _concatenate(list(unknown.values()))
    flags_known = run_detector(config, known.score_N, known.sequence)
    flags_unknown = run_detector(config, everything.score_N, everything.sequence)
    true_positive = int(flags_known.sum())
    false_positive = int(flags_unknown.sum())
    return {"roc_auc": roc_auc(known.score_N, everything.score_N),
            "roc_auc_mc_spread": roc_auc(known.mc_spread_N, everything.mc_spread_N),
            "roc_auc_by_split": {split: roc_auc(known.score_N, p.score_N) for split, p in unknown.items()},
            "roc_auc_mc_spread_by_split": {split: roc_auc(known.mc_spread_N, p.mc_spread_N)
                                           for split, p in unknown.items()},
            "precision": true_positive / max(true_positive + false_positive, 1),
            "recall": true_positive / max(len(known), 1),
            "known_frames": len(known), "unknown_frames": len(everything),
            "unknown_frames_by_split": {split: len(p) for split, p in unknown.items()},
            "enter_score": config.enter_score, "leave_score": config.leave_score,
            "min_frames": config.min_frames}


def nearest_neighbour_errors(train_records: Sequence[FrameRecord], test_records: Sequence[FrameRecord]
                             ) -> tuple[np.ndarray, np.ndarray]:
    """(position errors, orientation errors in degrees) of the nearest-neighbour retrieval baseline
    (`inference.metrics.nearest_neighbour_baseline`: the pose of the training frame whose 16x12 grey
    thumbnail is nearest) on `test_records`."""
    def described(records: Sequence[FrameRecord]) -> tuple[np.ndarray, np.ndarray]:
        descriptors = np.array([image_descriptor(read_frame_rgb(r.image_path)) for r in records])
        return descriptors, np.array([pose_vector(r.world_from_cam) for r in records])

    train_descriptors, train_poses = described(train_records)
    test_descriptors, test_poses = described(test_records)
    return nearest_neighbour_baseline(train_descriptors, train_poses[:, :3], train_poses[:, 3:],
                                      test_descriptors, test_poses[:, :3], test_poses[:, 3:])


def in_data_units(thresholds: Sequence[tuple[float, float]], unit_scale: float) -> list[tuple[float, float]]:
    """The thresholds for a model trained on data of arbitrary scale (`data.unit_scale` data units per
    metre): the default ones (`DEFAULT_THRESHOLDS`) get their metres in data units, others are kept as
    given (in data units)."""
    if unit_scale == 1.0:
        return list(thresholds)
    defaults = {tuple(pair) for pair in DEFAULT_THRESHOLDS}
    scaled = [(metres * unit_scale, degrees) if (metres, degrees) in defaults else (metres, degrees)
              for metres, degrees in thresholds]
    logger.warning("the model was trained on data of arbitrary scale (%.4g units stand for 1 m): default "
                   "position thresholds in data units: %s", unit_scale,
                   ", ".join(f"{m:.4g}" for (m, d), (m0, _) in zip(scaled, thresholds, strict=True)
                             if m != m0))
    return scaled


def with_solver(loaded: LoadedModel, solver: str) -> LoadedModel:
    """`loaded` with its scene coordinate pose solver replaced: "kabsch" (ransac.use_depth, each
    frame's depth) or "pnp" (RGB only). Other methods have no solver to choose: a ValueError."""
    if loaded.method != "scr":
        raise ValueError(f"--solver chooses the pose solver of scene coordinate models; {loaded.path} is a "
                         f"{loaded.method} model")
    ransac = dataclasses.replace(loaded.config.ransac, use_depth=solver == "kabsch")
    return dataclasses.replace(loaded, config=dataclasses.replace(loaded.config, ransac=ransac))


def evaluate(model_path: str | Path, data_roots: Sequence[str | Path], *, split: str = "test",
             out: str | Path, thresholds: Sequence[Sequence[float]] = DEFAULT_THRESHOLDS,
             batch_size: int = 32, device: str | torch.device = "auto", mc_samples: int | None = None,
             unknown_splits: Sequence[str] | None = None, bag_options: Mapping[str, Any] | None = None,
             smooth: str = "off", solver: str | None = None, odometry: str = "auto",
             odometry_noise: OdometryNoise | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate the checkpoint at `model_path` on `split` of each dataset folder or rosbag2 in
    `data_roots`.

    Each data root is one scene, named by its folder name (made unique with '-2', ... if two roots
    share a name). A rosbag2 is read with the checkpoint's training bag options (`data.bag`: topics,
    ground truth, split time ranges) with `bag_options` (field -> value) replacing some of them.
    Frames are prepared with `eval_transform(checkpoint config)`. Writes metrics.json,
    predictions.csv, error_cdf.png and top_view.png (and uncertainty_vs_error.png with
    Monte-Carlo sampling) into `out` (see the module docstring) and returns the metrics dict that
    metrics.json holds: per scene, overall (all frames of all scenes together) and the mean-pose
    baseline of the checkpoint's training poses. `mc_samples`: None = the checkpoint's setting,
    0 = deterministic. `unknown_splits`: splits of unknown places for the loop-closure metrics
    (None: those of `DEFAULT_UNKNOWN_SPLITS` present; frames marked in-map by a synthetic scene are
    left out). `smooth`: "off" (per-frame estimates), "causal" or "offline" (the checkpoint's temporal
    model over each sequence; see inference/temporal.py). Every evaluation reports the median frame-to-frame
    jitter (`temporal_jitter`). `solver` (scene coordinate models): "kabsch" (3D-3D with each frame's
    depth) or "pnp" (RGB only) instead of the checkpoint's `ransac.use_depth`. `odometry` (causal
    smoothing of a rosbag2): "auto" fuses the robot's odometry in the bag's /tf (`bag_odometry`) when it
    has it (the odometry-aided filter, inference/odometry_fusion.py; metrics.json's "odometry" counts
    the frames whose odometry was missing); "none" never (the learned filter). `odometry_noise`: the
    odometry's error model (default `OdometryNoise()`: 2% and 1° per metre).
    """
    if solver not in (None, "kabsch", "pnp"):
        raise ValueError(f"solver must be 'kabsch' or 'pnp', got {solver!r}")
    if smooth not in ("off", "causal", "offline"):
        raise ValueError(f"smooth must be 'off', 'causal' or 'offline', got {smooth!r}")
    if odometry not in ("auto", "none"):
        raise ValueError(f"odometry must be 'auto' or 'none', got {odometry!r}")
    roots = [Path(root) for root in data_roots]
    if not roots:
        raise ValueError("evaluate needs at least one data root")
    checked_thresholds = check_thresholds(thresholds)
    out = Path(out)
    resolved_device = resolve_device(device)
    loaded = load_model(model_path, resolved_device)
    if smooth != "off" and loaded.temporal is None:
        raise ValueError(f"{loaded.path} has no temporal model: run `posenet-ros train-temporal` first, or "
                         "evaluate with smoothing off")
    if solver is not None:
        loaded = with_solver(loaded, solver)
    checked_thresholds = in_data_units(checked_thresholds, loaded.config.data.unit_scale)
    transform = loaded.config.eval_transform()
    method = loaded.inference(mc_samples)
    map_poses = np.asarray(loaded.map_poses_N7, dtype=np.float64).reshape(-1, 7)
    bag = bag_config_for_checkpoint(loaded.config, loaded.needs_depth, bag_options)
    logger.info("evaluating %s on %d scene(s), split %r, device %s, resize %s, crop %s, MC samples %d",
                loaded.path, len(roots), split, resolved_device, transform.resize, transform.crop,
                method.settings()["mc_samples"])

    def run(records: list[FrameRecord], description: str) -> Predictions:
        return predict(method, records, transform, batch_size=batch_size, progress=progress,
                       description=description, keep_features=smooth != "off",
                       with_uncertainty=method.estimates_uncertainty)

    scenes: dict[str, Predictions] = {}
    scene_metrics: dict[str, dict[str, Any]] = {}
    unknown_parts: dict[str, list[Predictions]] = {}
    for name, root in zip(_scene_names(roots), roots, strict=True):
        records = load_frames(root, split, bag=bag)
        if not records:
            raise ValueError(f"{root}: the {split!r} split has no frames")
        without_depth = sum(record.depth_path is None for record in records)
        if loaded.needs_depth and without_depth:
            remedy = ("evaluate with --solver pnp (poses from RGB)" if loaded.method == "scr"
                      else "this RGB-D model needs depth images")
            raise ValueError(f"{root}: {without_depth} of the {len(records)} {split!r} frames have no depth "
                             f"image, and {loaded.path} solves poses with depth; {remedy}")
        predictions = run(records, f"evaluate {name}")
        odometry_used = None
        if smooth == "causal" and odometry == "auto" and is_bag(root):
            odometry_used = bag_odometry(root, records)
        if odometry_used is not None:
            predictions, fallbacks = odometry_smoothed_predictions(loaded, predictions, odometry_used,
                                                                   noise=odometry_noise)
        elif smooth != "off":
            predictions = smoothed_predictions(loaded, predictions, smooth)  # type: ignore[arg-type]
        scenes[name] = predictions
        metrics = {"data_root": str(root), **pose_metrics(predictions.position_error_N,
                                                          predictions.orientation_error_N,
                                                          checked_thresholds),
                   **jitter_of(predictions)}
        if odometry_used is not None:
            metrics["odometry"] = {"frames": len(records), "missing": fallbacks}
        unknown_records = (unknown_place_records(root, unknown_splits, bag=bag)
                           if method.estimates_uncertainty else {})
        unknown = {split: run(records, f"{split} {name}") for split, records in unknown_records.items()}
        for split, part in unknown.items():
            unknown_parts.setdefault(split, []).append(part)
        metrics.update(_uncertainty_sections(predictions, unknown, loaded.loop_closure))
        scene_metrics[name] = _with_baseline(metrics, predictions, map_poses, checked_thresholds)
        logger.info("%s: %d frames, median %.3f m, %.2f°", name, len(predictions),
                    metrics["median_position_error_m"], metrics["median_orientation_error_deg"])

    everything = _concatenate(list(scenes.values()))
    all_unknown = {split: _concatenate(parts) for split, parts in unknown_parts.items()}
    overall = _with_baseline(pose_metrics(everything.position_error_N, everything.orientation_error_N,
                                          checked_thresholds), everything, map_poses, checked_thresholds)
    overall.update(jitter_of(everything))
    odometry_counts = [m["odometry"] for m in scene_metrics.values() if "odometry" in m]
    if odometry_counts:
        overall["odometry"] = {key: sum(count[key] for count in odometry_counts)
                               for key in ("frames", "missing")}
    overall.update(_uncertainty_sections(everything, all_unknown, loaded.loop_closure))
    result: dict[str, Any] = {
        "model": str(loaded.path),
        "split": split,
        "device": str(resolved_device),
        "transform": {"resize": transform.resize, "crop": transform.crop, "centre_crop": True},
        "thresholds": [[metres, degrees] for metres, degrees in checked_thresholds],
        "method": loaded.method,
        **method.settings(),
        "uncertainty_source": method.uncertainty_source,
        "calibrated": loaded.calibrated,
        "smoothing": smooth,
        "scenes": scene_metrics,
        "overall": overall,
    }
    atomic_write_json(out / "metrics.json", result)
    atomic_write_text(out / "predictions.csv", _predictions_csv(scenes))
    errors = {scene: (p.position_error_N, p.orientation_error_N) for scene, p in scenes.items()}
    atomic_write_bytes(out / "error_cdf.png", plot_error_cdf(errors, checked_thresholds))
    atomic_write_bytes(out / "top_view.png", plot_top_view(scenes, map_poses))
    if method.estimates_uncertainty:
        atomic_write_bytes(out / "uncertainty_vs_error.png", plot_uncertainty(scenes, all_unknown))
    logger.info("wrote metrics.json, predictions.csv and plots to %s", out)
    return result


def jitter_of(predictions: Predictions) -> dict[str, float]:
    """Median frame-to-frame jitter of predictions, frames ordered by (sequence, frame index)."""
    order = sorted(range(len(predictions)),
                   key=lambda i: (predictions.sequence[i], int(predictions.frame_index[i])))
    return temporal_jitter(predictions.position_pred_N3[order], predictions.quat_pred_N4[order],
                           predictions.position_true_N3[order], predictions.quat_true_N4[order],
                           [predictions.sequence[i] for i in order])


def smoothed_predictions(loaded: LoadedModel, predictions: Predictions, mode: SmoothMode) -> Predictions:
    """`predictions` (made with keep_features) with the poses (and covariances, when present) of the
    checkpoint's temporal model run over each sequence, frames in frame-index order, in `mode`."""
    assert loaded.temporal is not None and predictions.features_NF is not None
    device = next(loaded.model.parameters()).device
    features = torch.from_numpy(predictions.features_NF).to(device)
    with torch.inference_mode():
        position_norm, quat_in = head_inputs(loaded.model, features)
    position, quat = predictions.position_pred_N3.copy(), predictions.quat_pred_N4.copy()
    covariance = None if predictions.covariance_N66 is None else predictions.covariance_N66.copy()
    for members in predictions.sequences():
        index = torch.tensor(members, device=device)
        smoothed = smooth_sequence(loaded.temporal, loaded.model, loaded.temporal_calibration,
                                   features[index], position_norm[index], quat_in[index], mode)
        position[members], quat[members] = smoothed.position_T3, smoothed.quat_T4
        if covariance is not None:
            covariance[members] = smoothed.covariance_T66
    position_error, orientation_error = pose_errors(position, quat, predictions.position_true_N3,
                                                    predictions.quat_true_N4)
    return dataclasses.replace(predictions, position_pred_N3=position, quat_pred_N4=quat,
                               covariance_N66=covariance, position_error_N=position_error,
                               orientation_error_N=orientation_error)


def bag_odometry(bag: Path, records: Sequence[FrameRecord], odom_frame: str = "odom",
                 base_frame: str = "base_link", max_gap_s: float = NodeSettings.odometry_max_gap
                 ) -> list[RobotOdometry | None] | None:
    """The robot's odometry at each record of `bag` (records read from it): odom_from_base (4x4) at the
    image's stamp, interpolated between /tf samples at most `max_gap_s` apart (None where there is no
    such pair: the odometry stopped; by default the node's `odometry_max_gap`), with base_from_cam
    (4x4) of the images' frame; None when the bag has no odom_frame -> base_frame -> camera chain."""
    with open_bag(bag) as reader:
        transforms = read_transforms(reader, bag)
    first = records[0].image_path
    assert isinstance(first, BagMessage)
    camera_frame = read_bag_message(first).header.frame_id
    try:
        base_from_cam = transforms.lookup(base_frame, camera_frame, first.stamp_ns)
    except TransformUnavailable:
        return None
    odometry: list[RobotOdometry | None] = []
    for record in records:
        assert isinstance(record.image_path, BagMessage)
        try:
            odom_from_base = transforms.lookup(odom_frame, base_frame, record.image_path.stamp_ns,
                                               max_gap_s=max_gap_s)
            odometry.append(RobotOdometry(odom_from_base, base_from_cam))
        except TransformUnavailable:
            odometry.append(None)
    return None if all(robot is None for robot in odometry) else odometry


def odometry_smoothed_predictions(loaded: LoadedModel, predictions: Predictions,
                                  odometry: Sequence[RobotOdometry | None],
                                  noise: OdometryNoise | None = None) -> tuple[Predictions, int]:
    """`predictions` (made with keep_features and covariances) of the frames of a bag, fused with the
    robot's odometry at each frame (`bag_odometry`) by the odometry-aided filter, frames of a sequence in
    frame-index order (`OdometryAidedSmoother`; `noise`: the odometry's, default `OdometryNoise()`).
    Returns them and the number of frames whose motion came from the learned model (no odometry at
    the frame)."""
    if loaded.temporal is None or loaded.temporal_fusion is None:
        raise ValueError(f"{loaded.path}: the temporal model has no odometry-aided filter: run "
                         "`posenet-ros train-temporal` again (with a val split, after calibrate)")
    if predictions.covariance_N66 is None or predictions.features_NF is None:
        raise ValueError("odometry-aided smoothing needs per-frame covariances (calibrate the model or train "
                         "it with an aleatoric loss) and features")
    noise = OdometryNoise() if noise is None else noise
    smoother = OdometryAidedSmoother(loaded.temporal, loaded.model, loaded.temporal_fusion, noise,
                                     reset_after_unknown=0)
    position, quat = predictions.position_pred_N3.copy(), predictions.quat_pred_N4.copy()
    covariance = predictions.covariance_N66.copy()
    features = torch.from_numpy(predictions.features_NF)
    fallbacks = 0
    for members in predictions.sequences():
        smoother.reset()
        for i in members:
            fused, fell_back = smoother.update(features[i:i + 1], predictions.position_pred_N3[i],
                                               predictions.quat_pred_N4[i], predictions.covariance_N66[i],
                                               odometry[i])
            position[i], quat[i], covariance[i] = fused.position_3, fused.quat_4, fused.covariance_66
            fallbacks += fell_back
    position_error, orientation_error = pose_errors(position, quat, predictions.position_true_N3,
                                                    predictions.quat_true_N4)
    return dataclasses.replace(predictions, position_pred_N3=position, quat_pred_N4=quat,
                               covariance_N66=covariance, position_error_N=position_error,
                               orientation_error_N=orientation_error), fallbacks


def _uncertainty_sections(predictions: Predictions, unknown: dict[str, Predictions],
                          loop_closure: LoopClosureConfig) -> dict[str, Any]:
    if predictions.covariance_N66 is None:
        return {}
    sections: dict[str, Any] = {"uncertainty": uncertainty_metrics(prediction_errors_N6(predictions),
                                                                   predictions.covariance_N66)}
    if unknown:
        sections["loop_closure"] = loop_closure_metrics(predictions, unknown, loop_closure)
    return sections


def format_table(metrics: dict[str, Any]) -> str:
    """A text table of `evaluate`'s metrics: one row per scene and an 'Overall' row.

    Columns: Scene | Frames | Median position (m) | Median orientation (°) | one column per
    threshold pair (share of frames within both bounds, in percent), e.g.

        Scene   | Frames | Median position | Median orientation | 5cm/5°
        chess   |   2000 |         0.320 m |              8.12° |  12.5%
    """
    thresholds = [(float(m), float(d)) for m, d in metrics.get("thresholds", [])]
    header = ["Scene", "Frames", "Median position", "Median orientation",
              *(threshold_label(m, d) for m, d in thresholds)]

    def row(name: str, values: dict[str, Any]) -> list[str]:
        cells = [name, str(values["frames"]), f"{values['median_position_error_m']:.3f} m",
                 f"{values['median_orientation_error_deg']:.2f}°"]
        for m, d in thresholds:
            share = values.get(threshold_key(m, d))
            cells.append("-" if share is None else f"{100.0 * share:.1f}%")
        return cells

    rows = [row(name, values) for name, values in metrics.get("scenes", {}).items()]
    rows.append(row("Overall", metrics["overall"]))
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in
                                               zip(cells[1:], widths[1:], strict=True)]
        return " | ".join(parts).rstrip()

    separator = "-+-".join("-" * width for width in widths)
    return "\n".join([render(header), separator, *(render(r) for r in rows[:-1]), separator,
                      render(rows[-1])])


def format_uncertainty(metrics: dict[str, Any]) -> str:
    """Lines summarising `evaluate`'s overall uncertainty and loop-closure metrics."""
    overall = metrics["overall"]
    source = metrics["uncertainty_source"]
    lines = [f"Uncertainty ({source}, {'calibrated' if metrics.get('calibrated') else 'not calibrated'}):"]
    for block, values in overall["uncertainty"].items():
        coverage_text = ", ".join(f"{k}σ {100 * values[f'within_{k}sigma']:.0f}% "
                                  f"({100 * values[f'expected_{k}sigma']:.0f}%)" for k in (1, 2, 3))
        rho = values.get("spearman_sigma_error")
        lines.append(f"  {block:<8} mean NEES {values['mean_nees']:.2f} ({values['dimension']}); inside "
                     f"{coverage_text}" + ("" if rho is None else f"; Spearman σ-error {rho:.2f}"))
    loop = overall.get("loop_closure")
    if loop:
        by_split = ", ".join(f"{split} {auc:.3f}" for split, auc in loop["roc_auc_by_split"].items())
        lines.append(f"  loop closure: ROC AUC {loop['roc_auc']:.3f} ({by_split}; MC-dropout spread alone "
                     f"{loop['roc_auc_mc_spread']:.3f}), precision {loop['precision']:.3f}, recall "
                     f"{loop['recall']:.3f} ({loop['known_frames']} known, {loop['unknown_frames']} "
                     "unknown-place frames)")
    return "\n".join(lines)


