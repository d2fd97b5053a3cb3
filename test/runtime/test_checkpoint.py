"""Checkpoints written before the layered redesign (test/fixtures/pre_redesign, commit d75eb00) load
with the current code and give the estimates that code gave, frame by frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from posenet_ros.data.dataset import read_depth_mm, read_rgb
from posenet_ros.runtime.checkpoint import load_model
from posenet_ros.runtime.relocalizer import Relocalizer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pre_redesign"


@pytest.mark.parametrize("name", ["posenet", "scr"])
def test_a_checkpoint_written_before_the_redesign_loads_and_predicts_the_same(name: str) -> None:
    expected = json.loads((FIXTURE / "expected.json").read_text())
    loaded = load_model(FIXTURE / name / "model.safetensors")
    assert loaded.method == name
    relocalizer = Relocalizer(FIXTURE / name / "model.safetensors", device="cpu")
    for frame, want in zip(expected["frames"], expected["models"][name]["results"], strict=True):
        estimate = relocalizer.process(read_rgb(FIXTURE / "frames" / frame["color"]),
                                       depth_HW=read_depth_mm(FIXTURE / "frames" / frame["depth"]),
                                       stamp_ns=frame["stamp_ns"])
        np.testing.assert_allclose(estimate.position_3, want["position_3"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(estimate.quat_wxyz_4, want["quat_wxyz_4"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(estimate.covariance_66, want["covariance_66"], rtol=1e-5, atol=1e-12)
        assert estimate.known_place == want["known_place"]
        assert estimate.score == pytest.approx(want["score"], rel=1e-6)
