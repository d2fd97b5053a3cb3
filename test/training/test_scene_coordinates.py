"""training/scene_coordinates.py: the head refit reports its progress (plain lines in a log)."""

from __future__ import annotations

import numpy as np
import torch

from posenet_ros.core.config import load_config
from posenet_ros.data.loading import load_frames
from posenet_ros.runtime.methods import SceneCoordinates
from posenet_ros.runtime.train_config import TrainConfig
from posenet_ros.training.scene_coordinates import refit_scr_head


def test_head_refit_shows_its_progress(small_capture, capsys):
    records = load_frames(small_capture, "train")
    config = load_config(TrainConfig, None, ["method=scr", "scr.backbone=resnet_tiny", "scr.head_channels=16",
                                             "data.resize=24", "data.crop=null", "batch_size=8",
                                             "scr_refit.iterations=30", "scr_refit.batch_cells=64"])
    torch.manual_seed(0)
    model = SceneCoordinates.network(config)
    model.set_scene_statistics(torch.zeros(3), 2.0)
    row = refit_scr_head(model, records, config, torch.device("cpu"), progress=True)
    assert np.isfinite(row["refit_distance_m"])
    log = capsys.readouterr().err
    assert "\r" not in log
    lines = log.splitlines()
    assert any(line.startswith("scr refit: features: ") for line in lines)
    assert lines[-1].startswith("scr refit: 100% 30/30")
    refit_scr_head(model, records, config, torch.device("cpu"), progress=False)
    assert capsys.readouterr().err == ""
