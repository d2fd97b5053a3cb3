"""Relocalizer: the same frame gives the same estimate as `posenet-ros eval`'s path; bad images are
clear errors; the loop-closure flag follows the hysteresis."""

import numpy as np
import pytest
import torch

from posenet_ros.cli import main
from posenet_ros.core.camera import eval_transform
from posenet_ros.data.dataset import read_rgb
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.predict import predict
from posenet_ros.inference.loop_closure import LoopClosureConfig
from posenet_ros.inference.uncertainty import UncertaintyConfig
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.runtime.checkpoint import save_checkpoint, store_calibration
from posenet_ros.runtime.relocalizer import Relocalizer

CONFIG = {"model": {"backbone": "resnet_tiny", "feature_dim": 64, "aleatoric": "per_axis"},
          "data": {"resize": 24, "crop": [20, 28]}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("relocalizer")
    assert main(["synth", "--quiet", str(root / "scene"), "width=40", "height=30", "frames_per_sequence=6",
                 "train_sequences=1", "outside_sequences=0", "val_sequences=0", "variations=[]"]) == 0
    torch.manual_seed(0)
    model = PoseNet(ModelConfig(**CONFIG["model"]))
    with torch.no_grad():
        model.feature_covariance.copy_(torch.eye(model.head_dim))
    path = save_checkpoint(root / "model.safetensors", model, CONFIG, np.zeros((1, 7)))
    store_calibration(path, UncertaintyConfig(mc_samples=8, position_scale=2.0),
                      LoopClosureConfig(enter_score=1e9, leave_score=1e9, min_frames=2))
    return path, load_frames(root / "scene", "test")


def test_estimate_equals_the_evaluation_path(setup):
    path, records = setup
    relocalizer = Relocalizer(path, device="cpu")
    estimate = relocalizer.process(read_rgb(records[0].image_path), stamp_ns=0)
    reference = predict(relocalizer.model, records[:1], eval_transform(CONFIG),
                        uncertainty=relocalizer.uncertainty)
    # float32 network outputs: the two paths may round differently in the last bits.
    np.testing.assert_allclose(estimate.position_3, reference.position_pred_N3[0], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(estimate.quat_wxyz_4, reference.quat_pred_N4[0], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(estimate.covariance_66, reference.covariance_N66[0], rtol=1e-5, atol=1e-9)
    assert np.all(np.linalg.eigvalsh(estimate.covariance_66) > 0)
    assert estimate.uncertainty_m == pytest.approx(np.sqrt(np.trace(estimate.covariance_66[:3, :3])))
    assert set(estimate.timings_ms) == {"preprocess", "forward", "summary"}
    # The same frame and stamp give the same estimate again; another stamp other dropout masks.
    again = relocalizer.process(read_rgb(records[0].image_path), stamp_ns=0)
    np.testing.assert_array_equal(again.covariance_66, estimate.covariance_66)
    other = relocalizer.process(read_rgb(records[0].image_path), stamp_ns=17)
    assert not np.array_equal(other.covariance_66, estimate.covariance_66)


def test_known_place_flag_needs_consecutive_frames_and_resets(setup):
    path, records = setup
    relocalizer = Relocalizer(path, device="cpu")
    rgb = read_rgb(records[1].image_path)
    flags = [relocalizer.process(rgb, stamp_ns=i).known_place for i in range(3)]
    assert flags == [False, True, True]
    relocalizer.reset()
    assert not relocalizer.process(rgb, stamp_ns=5).known_place


@pytest.mark.parametrize("image, message", [
    (np.zeros((0, 0, 3), np.uint8), "too small"),
    (np.zeros((1, 30, 3), np.uint8), "too small"),
    (np.zeros((30, 40, 3), np.float32), "uint8"),
    (np.zeros((30, 40), np.uint8), "uint8"),
])
def test_bad_images_are_clear_errors(setup, image, message):
    relocalizer = Relocalizer(setup[0], device="cpu")
    with pytest.raises(ValueError, match=message):
        relocalizer.process(image)


def test_half_precision_needs_cuda(setup):
    with pytest.raises(ValueError, match="CUDA"):
        Relocalizer(setup[0], device="cpu", precision="fp16")
