"""evaluation/predict.py: `predict` returns the true poses and the model's outputs frame by frame,
switches the model to eval / dropout off and back, and is deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from posenet_ros.core.camera import FrameTransform
from posenet_ros.core.geometry import angular_error_deg, translation_error
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.predict import predict
from posenet_ros.inference.uncertainty import UncertaintyConfig
from posenet_ros.runtime.methods import PoseRegression


def test_predict_returns_true_poses_and_the_models_outputs(scene_root: Path, untrained_model) -> None:
    records = load_frames(scene_root, "test")
    transform = FrameTransform(resize=32, crop=32)
    model = untrained_model
    model.train().set_dropout_mode("train")  # predict must switch to eval / dropout off and back
    method = PoseRegression(model, UncertaintyConfig(mc_samples=0))
    predictions = predict(method, records, transform, batch_size=3, with_uncertainty=False)
    assert model.training and model.dropout_mode == "train"
    assert len(predictions) == len(records) == 8

    model.eval().set_dropout_mode("off")
    dataset = PoseDataset(records, transform)
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            output = model(item["image"][None])
            np.testing.assert_allclose(predictions.position_pred_N3[i], output.position_B3[0].numpy(),
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(predictions.quat_pred_N4[i], output.quat_B4[0].numpy(), atol=1e-5)
            np.testing.assert_allclose(predictions.position_true_N3[i], item["pose"][:3].numpy(), atol=1e-6)
            np.testing.assert_allclose(predictions.quat_true_N4[i], item["pose"][3:].numpy(), atol=1e-6)
            assert predictions.sequence[i] == item["sequence"]
            assert predictions.frame_index[i] == item["frame_index"]
    np.testing.assert_allclose(predictions.position_error_N,
                               translation_error(predictions.position_pred_N3, predictions.position_true_N3))
    np.testing.assert_allclose(predictions.orientation_error_N,
                               angular_error_deg(predictions.quat_pred_N4, predictions.quat_true_N4))
    assert predictions.position_pred_N3.dtype == np.float64
    assert predictions.frame_index.shape == (8,)

    again = predict(method, records, transform, batch_size=8)  # deterministic, whatever the batch size
    np.testing.assert_allclose(again.position_pred_N3, predictions.position_pred_N3, atol=1e-5)
    with pytest.raises(ValueError, match="window"):
        predict(method, records, FrameTransform(resize=32, window=2))
