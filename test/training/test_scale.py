"""training/scale.py: the metric defaults of data of arbitrary scale come from the data (median depth,
else the cameras' spread) and scale exactly with it; metric data and explicit values are kept."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from posenet_ros.data.frames import FrameRecord
from posenet_ros.data.synthetic import SceneConfig, SyntheticScene
from posenet_ros.evaluation.evaluate import in_data_units
from posenet_ros.runtime.train_config import ScrLossConfig, TrainConfig
from posenet_ros.training.scale import unit_scale_from_data, with_data_scale


def scene_records(folder: Path, room_scale: float, metric: bool, depth: bool = True) -> list[FrameRecord]:
    """The training loop of a small synthetic scene, written as PNGs (depth in mm), as records."""
    scene = SyntheticScene(SceneConfig(width=32, height=24, frames_per_sequence=10, variations=[],
                                       outside_sequences=0, val_sequences=0, test_sequences=0,
                                       room_scale=room_scale))
    folder.mkdir(parents=True)
    records = []
    for index, frame in enumerate(scene.frames(scene.sequences[0], 0)):
        image, depth_path = folder / f"{index}.color.png", folder / f"{index}.depth.png"
        cv2.imwrite(str(image), frame.rgb_HW3[..., ::-1])
        cv2.imwrite(str(depth_path), np.round(frame.depth_HW * 1000).astype(np.uint16))
        records.append(FrameRecord(image, depth_path if depth else None, frame.world_from_cam,
                                   scene.intrinsics, "seq", index, metric=metric))
    return records


def test_metric_data_keeps_metres(tmp_path):
    config = TrainConfig(method="scr")
    assert with_data_scale(config, scene_records(tmp_path / "m", 1.0, metric=True)) is config


def test_derived_defaults_scale_exactly_with_the_data(tmp_path, caplog):
    config = TrainConfig(method="scr", scr_loss=ScrLossConfig(prior_depth=5.0))  # prior_depth explicit
    with caplog.at_level(logging.WARNING):
        base = with_data_scale(config, scene_records(tmp_path / "a", 1.0, metric=False))
        scaled = with_data_scale(config, scene_records(tmp_path / "b", 3.0, metric=False))
    # With depth: the median training depth stands for 2 m (depth rounded to mm in the files).
    assert scaled.data.unit_scale == pytest.approx(3.0 * base.data.unit_scale, rel=2e-3)
    for section, field in (("scr_loss", "min_depth"), ("ransac", "threshold_m"), ("loss", "min_depth")):
        default = getattr(getattr(TrainConfig(), section), field)
        assert getattr(getattr(base, section), field) == pytest.approx(default * base.data.unit_scale)
        assert getattr(getattr(scaled, section), field) == pytest.approx(default * scaled.data.unit_scale)
    assert base.scr_loss.prior_depth == scaled.scr_loss.prior_depth == 5.0  # the user's value wins
    assert "not metric" in caplog.text and "median training depth" in caplog.text
    assert "scr_loss.min_depth=" in caplog.text and "scr_loss.prior_depth" not in caplog.text


def test_without_depth_the_camera_spread_sets_the_scale(tmp_path):
    records = scene_records(tmp_path / "rgb", 1.0, metric=False, depth=False)
    scaled_records = [dataclasses.replace(r, world_from_cam=r.world_from_cam.copy()) for r in records]
    for record in scaled_records:  # the same capture in another unit
        record.world_from_cam[:3, 3] *= 7.3
    base, how = unit_scale_from_data(records)
    scaled, _ = unit_scale_from_data(scaled_records)
    assert "spread" in how
    assert scaled == pytest.approx(7.3 * base, rel=1e-12)
    positions = np.array([r.world_from_cam[:3, 3] for r in records])
    assert base == pytest.approx(np.sqrt(np.mean((positions - positions.mean(0)) ** 2)))
    derived = with_data_scale(TrainConfig(method="scr"), scaled_records)
    assert derived.scr_loss.prior_depth == pytest.approx(2.0 * 7.3 * base)


def test_default_thresholds_are_given_in_data_units():
    assert in_data_units([(0.05, 5.0), (0.3, 10.0)], 1.0) == [(0.05, 5.0), (0.3, 10.0)]
    scaled = in_data_units([(0.05, 5.0), (0.3, 10.0), (0.5, 2.0)], 4.0)
    assert scaled[0] == pytest.approx((0.2, 5.0)) and scaled[2] == (0.5, 2.0)  # (0.5, 2) is not a default
