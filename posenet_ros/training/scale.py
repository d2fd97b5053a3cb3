"""Metric defaults for data of arbitrary scale.

Several defaults are lengths in metres: the scene coordinate loss's `scr_loss.prior_depth` (2 m) and
`scr_loss.min_depth` (0.1 m), the depth solver's `ransac.threshold_m` (0.1 m), PoseNet's reprojection
`loss.min_depth` (0.05 m) and the evaluation's position thresholds (5 cm, ...). Captures whose poses
are not metric (frame records with `metric=False`: COLMAP models, NeRF `transforms.json`) have their
own unit, so there these defaults come from the data: one factor `data.unit_scale`, the length in
data units that stands for 1 m, multiplies each of them. It is

- with usable depth (`method.missing_depth`): the median training depth / `REFERENCE_DEPTH_M`
  (2 m, the indoor scenes' typical median depth, which is also `scr_loss.prior_depth`'s default);
- without: the training cameras' RMS spread about their mean / `REFERENCE_SPREAD_M` (1 m).

Metric data keeps metres (factor 1), and a value that differs from its default counts as the user's
explicit choice and is kept. The factor and the values are stored in the checkpoint's config, so
inference and evaluation use the same ones; a warning says what was chosen and why.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from posenet_ros.data.frames import FrameRecord
from posenet_ros.runtime.train_config import TrainConfig
from posenet_ros.training.method import median_depth, missing_depth

logger = logging.getLogger(__name__)

REFERENCE_DEPTH_M = 2.0
REFERENCE_SPREAD_M = 1.0
# (section, field) of every metric default that `data.unit_scale` multiplies.
METRIC_DEFAULTS: tuple[tuple[str, str], ...] = (("scr_loss", "prior_depth"), ("scr_loss", "min_depth"),
                                                 ("ransac", "threshold_m"), ("loss", "min_depth"))


def unit_scale_from_data(records: Sequence[FrameRecord], use_depth: bool = True) -> tuple[float, str]:
    """(data units per metre-equivalent, how it was found) for the training `records` (see the module
    docstring); `use_depth=False` ignores depth images."""
    if use_depth and not missing_depth(records):
        depth = median_depth(records)
        return depth / REFERENCE_DEPTH_M, f"median training depth {depth:.4g} units = {REFERENCE_DEPTH_M:g} m"
    positions = np.array([record.world_from_cam[:3, 3] for record in records])
    spread = float(np.sqrt(np.mean((positions - positions.mean(axis=0)) ** 2)))
    if not spread > 0:
        raise ValueError("the training cameras all lie at one position: no scale can be derived for data "
                         "that is not metric; set data.unit_scale (data units per metre)")
    return spread / REFERENCE_SPREAD_M, (f"RMS spread of the training cameras {spread:.4g} units = "
                                         f"{REFERENCE_SPREAD_M:g} m")


def with_data_scale(config: TrainConfig, records: Sequence[FrameRecord]) -> TrainConfig:
    """`config` with its metric defaults in the unit of `records` (module docstring): unchanged for
    metric data or when `data.unit_scale` is already set (not 1), else the scale derived from the
    data multiplies every default in `METRIC_DEFAULTS` that still has its default value."""
    if all(record.metric for record in records):
        return config
    if config.data.unit_scale != 1.0:
        scale, how = config.data.unit_scale, "data.unit_scale as given"
    else:
        scale, how = unit_scale_from_data(records, use_depth=config.method == "scr"
                                          or config.model.needs_depth)
    defaults = TrainConfig()
    sections = {name: getattr(config, name) for name, _ in METRIC_DEFAULTS}
    chosen = []
    for section, field in METRIC_DEFAULTS:
        value, default = getattr(sections[section], field), getattr(getattr(defaults, section), field)
        if value == default:
            sections[section] = dataclasses.replace(sections[section], **{field: default * scale})
            chosen.append(f"{section}.{field}={default * scale:.4g}")
    logger.warning("the training poses are not metric (a capture of arbitrary scale): 1 m of the metric "
                   "defaults is taken as %.4g data units (%s): %s; set these keys to override",
                   scale, how, ", ".join(chosen) or "every one was set explicitly")
    return dataclasses.replace(config, **sections, data=dataclasses.replace(config.data, unit_scale=scale))
