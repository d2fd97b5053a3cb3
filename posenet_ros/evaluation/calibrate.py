"""`posenet-ros calibrate`: fit a checkpoint's covariance calibration and loop-closure thresholds on
held-out frames of mapped places (and training frames) and store them in the checkpoint. The maths
(NEES, the block fit, coverage) is in inference/calibration.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posenet_ros.core.device import resolve_device
from posenet_ros.data.bag_dataset import bag_config_for_checkpoint
from posenet_ros.data.loading import load_training_frames
from posenet_ros.data.splits import MIN_VALIDATION_FRAMES
from posenet_ros.evaluation.evaluate import prediction_errors_N6
from posenet_ros.evaluation.predict import Predictions, fit_feature_memory, predict
from posenet_ros.inference.calibration import fit_block_calibration, nees, uncertainty_metrics
from posenet_ros.inference.loop_closure import LoopClosureConfig, calibrate_thresholds
from posenet_ros.inference.uncertainty import UncertaintyConfig, calibrated
from posenet_ros.node.pose_policy import calibrated_sigma_limits
from posenet_ros.runtime.checkpoint import load_model, store_calibration
from posenet_ros.runtime.methods import inference_method
from posenet_ros.runtime.train_config import VALIDATION_BLOCKS_SPLIT

BLOCKS: dict[str, slice] = {"position": slice(0, 3), "rotation": slice(3, 6), "pose": slice(0, 6)}
MAX_TRAIN_FRAMES = 2000  # training frames predicted by `calibrate_checkpoint` (evenly subsampled)
MIN_HELD_OUT_FRAMES = MIN_VALIDATION_FRAMES  # the fewest held-out frames a calibration is fitted on


def calibrate_checkpoint(model_path: str | Path, data_root: str | Path, *, split: str | None = None,
                         train_split: str | None = None,
                         mc_samples: int | None = None, mc_mode: str | None = None,
                         enter_percentile: float = 90.0, leave_percentile: float = 99.0,
                         min_frames: int = 3, batch_size: int = 32, device: str = "auto",
                         bag_options: Mapping[str, Any] | None = None,
                         progress: bool = True) -> dict[str, Any]:
    """Fit the covariance calibration and loop-closure thresholds and store them in the checkpoint
    at `model_path`, with the feature memory of the loop-closure score refitted on the training frames.
    The covariance is fitted on held-out frames of mapped places (frames the model did not train on)
    together with up to MAX_TRAIN_FRAMES training frames (`fit_block_calibration`); the thresholds on
    the held-out frames alone.

    Which frames: `split` None takes the checkpoint's own validation frames (`data.val_split`:
    "blocks" = the time blocks training held out of its training split, the default; a named split),
    and the training frames it trained on; a `split` name takes that split of `data_root` ("blocks":
    the block hold-out); `train_split` (None: the checkpoint's `data.train_split`) the training frames.
    Fewer than MIN_HELD_OUT_FRAMES held-out frames (or a checkpoint trained with `data.val_split=''`
    and no `split`) is a ValueError saying what to set: calibrating on training frames alone would
    make the covariance overconfident, and no calibration is never silent.
    A rosbag2 `data_root` is read with the checkpoint's training bag options (`data.bag`),
    `bag_options` (field -> value) replacing some.

    Returns the report stored with them: the fitted values and the uncertainty metrics of the held-out
    frames before and after calibration, and of the training frames after it.
    """

    loaded = load_model(model_path, resolve_device(device))
    stored = loaded.uncertainty
    setting = UncertaintyConfig(mc_samples=stored.mc_samples if mc_samples is None else mc_samples,
                                mc_mode=stored.mc_mode if mc_mode is None else mc_mode,  # type: ignore[arg-type]
                                seed=stored.seed)
    method = inference_method(loaded.method, loaded.model, uncertainty=setting, ransac=loaded.ransac)
    if not method.estimates_uncertainty and loaded.model.config.aleatoric == "none":
        raise ValueError("nothing to calibrate: mc_samples is 0 and the model has no aleatoric outputs")
    bag = bag_config_for_checkpoint(loaded.config, loaded.needs_depth, bag_options)
    data = loaded.config.data
    if split is None and not data.val_split:
        raise ValueError(f"{loaded.path}: the model was trained without validation frames "
                         "(data.val_split=''), and calibration needs frames it did not train on: pass "
                         "--split SPLIT naming held-out frames of mapped places (e.g. val), or train with "
                         "data.val_split=blocks (the default)")
    if split is None and data.val_split == "test":
        raise ValueError(f"{loaded.path}: the model was validated on the test split (data.val_split=test); "
                         "calibrating on it would fit the test frames: pass --split SPLIT naming other "
                         "held-out frames of mapped places (e.g. val or blocks)")
    data = dataclasses.replace(data, train_split=train_split or data.train_split)
    train_records, records = load_training_frames(data_root, data, bag)  # what the model trained on
    if split is not None and split != data.val_split:
        _, records = load_training_frames(data_root, dataclasses.replace(data, val_split=split), bag)
    split = data.val_split if split is None else split
    train_split = data.train_split
    if method.has_feature_memory:
        fit_feature_memory(loaded.model, train_records, loaded.config.eval_transform(),
                           batch_size=batch_size, progress=progress)
    if len(records) < MIN_HELD_OUT_FRAMES:
        hint = (" (the time blocks held out of the training split; a longer capture, or a named split "
                "of held-out frames with --split, gives more)" if split == VALIDATION_BLOCKS_SPLIT else "")
        raise ValueError(f"{data_root}: {split!r} has {len(records)} frames{hint}; calibration needs at "
                         f"least {MIN_HELD_OUT_FRAMES} frames of mapped places not used for training")
    transform = loaded.config.eval_transform()
    predictions = predict(method, records, transform, batch_size=batch_size, progress=progress,
                          description=f"calibrate on {split}")
    step = max(1, math.ceil(len(train_records) / MAX_TRAIN_FRAMES))
    seen = predict(method, train_records[::step], transform, batch_size=batch_size, progress=progress,
                   description=f"calibrate on {train_split}")
    # frames without a pose (scene coordinates: RANSAC found none) have no error to fit
    predictions, seen = _with_pose(predictions), _with_pose(seen)
    errors, seen_errors = prediction_errors_N6(predictions), prediction_errors_N6(seen)
    finite_scores = predictions.score_N[np.isfinite(predictions.score_N)]
    reference = float(np.median(finite_scores)) if finite_scores.size else 0.0
    fit = {block: fit_block_calibration(nees(errors, predictions.covariance_N66, block), predictions.score_N,
                                        nees(seen_errors, seen.covariance_N66, block), seen.score_N, 3,
                                        reference)
           for block in ("position", "rotation")}
    (position_scale, position_novelty), (rotation_scale, rotation_novelty) = fit["position"], fit["rotation"]
    fitted = dataclasses.replace(setting, position_scale=position_scale, rotation_scale=rotation_scale,
                                 position_novelty=position_novelty, rotation_novelty=rotation_novelty,
                                 score_reference=reference)
    loop_closure = (calibrate_thresholds(predictions.score_N, enter_percentile, leave_percentile, min_frames)
                    if method.estimates_uncertainty else LoopClosureConfig(min_frames=min_frames))

    def after(part: Predictions) -> np.ndarray:
        factors = fitted.block_factors(torch.from_numpy(part.score_N))
        return calibrated(torch.from_numpy(part.covariance_N66), *factors).numpy()

    report = {
        "data_root": str(data_root), "split": split, "frames": len(records),
        "train_split": train_split, "train_frames": len(seen),
        "mc_samples": setting.mc_samples, "mc_mode": setting.mc_mode, "method": loaded.method,
        "uncertainty_source": method.uncertainty_source,
        "position_scale": fitted.position_scale, "rotation_scale": fitted.rotation_scale,
        "position_novelty": fitted.position_novelty, "rotation_novelty": fitted.rotation_novelty,
        "score_reference": reference,
        "loop_closure": dataclasses.asdict(loop_closure),
        "before": uncertainty_metrics(errors, predictions.covariance_N66),
        "after": uncertainty_metrics(errors, after(predictions)),
        "after_train": uncertainty_metrics(seen_errors, after(seen)),
        # the node's default σ limits of a confident pose (node/pose_policy.py)
        "sigma_limits": calibrated_sigma_limits(after(predictions)),
    }
    memory = {"feature_covariance": loaded.model.feature_covariance} if method.has_feature_memory else {}
    store_calibration(loaded.path, fitted, loop_closure, report, memory)
    return report


def _with_pose(predictions: Any) -> Any:
    """The frames of `predictions` that have a pose (scene coordinates: RANSAC found one)."""
    keep = np.flatnonzero(np.isfinite(predictions.position_error_N))
    values = {}
    for field in dataclasses.fields(predictions):
        value = getattr(predictions, field.name)
        if isinstance(value, np.ndarray) and len(value) == len(predictions):
            value = value[keep]
        elif isinstance(value, list):
            value = [value[i] for i in keep]
        values[field.name] = value
    return type(predictions)(**values)
