"""Evaluation: metrics, the mean-pose baseline, predict, evaluate's files and saliency maps.

The datasets are tiny synthetic 7-Scenes folders rendered once per module; the models are untrained
ResNet-18 PoseNets (their outputs are what they are: the tests check bookkeeping, not accuracy).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from posenet_ros.cli import main as cli_main
from posenet_ros.core.camera import FrameTransform, eval_transform
from posenet_ros.core.config import config_to_dict
from posenet_ros.core.geometry import angular_error_deg, translation_error
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.evaluate import PREDICTION_COLUMNS, UNCERTAINTY_COLUMNS, evaluate, format_table
from posenet_ros.evaluation.predict import predict
from posenet_ros.evaluation.saliency import saliency_maps, write_saliency
from posenet_ros.inference.metrics import (
    mean_pose_baseline,
    mean_quaternion,
    pose_errors,
    pose_metrics,
    threshold_key,
    threshold_label,
)
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.runtime.checkpoint import save_checkpoint

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODEL_CONFIG = ModelConfig(backbone="resnet18", feature_dim=32)
DATA_CONFIG = {"resize": 32, "crop": 32}


def quat_z(angle_deg: float) -> np.ndarray:
    half = math.radians(angle_deg) / 2.0
    return np.array([math.cos(half), 0.0, 0.0, math.sin(half)])


def make_model(seed: int = 0) -> PoseNet:
    torch.manual_seed(seed)
    model = PoseNet(MODEL_CONFIG)
    model.set_position_statistics(torch.tensor([0.5, -0.2, 1.0]), 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "office"
    cli_main(["synth", "--quiet", "--layout", "7scenes", str(root), "width=64", "height=48",
              "frames_per_sequence=8", "train_sequences=1", "outside_sequences=0", "variations=[]"])
    return root


@pytest.fixture(scope="module")
def second_root(scene_root: Path) -> Path:
    """A second scene: a copy of the first under another name, without its last two test frames."""
    root = scene_root.parent / "kitchen"
    shutil.copytree(scene_root, root)
    for index in (6, 7):
        for path in (root / "seq-02").glob(f"frame-{index:06d}.*"):
            path.unlink()
    return root


@pytest.fixture(scope="module")
def checkpoint(scene_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    records = load_frames(scene_root, "train")
    dataset = PoseDataset(records, FrameTransform(resize=None))
    map_poses = np.stack([dataset[i]["pose"].numpy() for i in range(len(dataset))]).astype(np.float64)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    config = {"model": config_to_dict(MODEL_CONFIG), "data": DATA_CONFIG}
    return save_checkpoint(path, make_model(), config, map_poses)


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------


def test_pose_metrics_on_hand_made_errors() -> None:
    position = [0.01, 0.02, 0.1, 0.2]
    orientation = [1.0, 10.0, 2.0, 3.0]
    metrics = pose_metrics(position, orientation, thresholds=((0.05, 5.0), (0.5, 20.0), (0.15, 2.0)))
    assert metrics["frames"] == 4
    assert metrics["median_position_error_m"] == pytest.approx(0.06)
    assert metrics["median_orientation_error_deg"] == pytest.approx(2.5)
    assert metrics["mean_position_error_m"] == pytest.approx(0.0825)
    assert metrics["mean_orientation_error_deg"] == pytest.approx(4.0)
    assert metrics["within_0.05m_5deg"] == pytest.approx(0.25)  # only frame 0: frame 1 is 10°
    assert metrics["within_0.5m_20deg"] == pytest.approx(1.0)
    assert metrics["within_0.15m_2deg"] == pytest.approx(0.5)  # frames 0 and 2 (2° counts)
    assert all(isinstance(value, (int, float)) for value in metrics.values())
    json.dumps(metrics)  # plain Python numbers


def test_threshold_bounds_are_inclusive_and_names_are_stable() -> None:
    metrics = pose_metrics([0.05, 0.0500001], [5.0, 0.0])
    assert list(metrics) == ["frames", "median_position_error_m", "median_orientation_error_deg",
                             "mean_position_error_m", "mean_orientation_error_deg", "within_0.05m_5deg"]
    assert metrics["within_0.05m_5deg"] == pytest.approx(0.5)
    assert threshold_key(0.05, 5.0) == "within_0.05m_5deg"
    assert threshold_key(0.25, 2.5) == "within_0.25m_2.5deg"
    assert threshold_label(0.05, 5.0) == "5cm/5°"
    assert threshold_label(2.0, 10.0) == "2m/10°"


def test_pose_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        pose_metrics([], [])
    with pytest.raises(ValueError, match="equal length"):
        pose_metrics([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        pose_metrics([0.1], [1.0], thresholds=((-1.0, 5.0),))


def test_pose_errors_treat_q_and_minus_q_as_equal() -> None:
    q = np.array([[0.5, 0.5, -0.5, 0.5], quat_z(30.0)])
    position = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    shifted = position + np.array([[0.0, 0.3, 0.4], [0.0, 0.0, 0.0]])
    position_error, orientation_error = pose_errors(position, -q, shifted, q)
    np.testing.assert_allclose(orientation_error, [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(position_error, [0.5, 0.0])
    _, ninety = pose_errors(position[:1], quat_z(0.0)[None], position[:1], quat_z(90.0)[None])
    assert ninety[0] == pytest.approx(90.0)


# --------------------------------------------------------------------------------------------------
# mean-pose baseline
# --------------------------------------------------------------------------------------------------


def test_mean_quaternion_ignores_signs_and_averages_symmetric_rotations() -> None:
    q = np.array([0.5, 0.5, -0.5, 0.5])
    np.testing.assert_allclose(mean_quaternion([q, -q, q]), q, atol=1e-12)
    symmetric = np.stack([quat_z(30.0), -quat_z(-30.0), quat_z(10.0), quat_z(-10.0)])
    np.testing.assert_allclose(mean_quaternion(symmetric), [1.0, 0.0, 0.0, 0.0], atol=1e-12)


def test_mean_pose_baseline_known_answers() -> None:
    train_positions = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 3.0, 0.0], [1.0, -3.0, 0.0]])
    train_quats = np.stack([quat_z(20.0), -quat_z(-20.0), quat_z(0.0), -quat_z(0.0)])
    true_positions = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [4.0, 4.0, 0.0]])
    true_quats = np.stack([quat_z(90.0), -quat_z(0.0), quat_z(-45.0)])
    position_error, orientation_error = mean_pose_baseline(train_positions, train_quats, true_positions,
                                                           true_quats)
    np.testing.assert_allclose(position_error, [1.0, 0.0, 5.0], atol=1e-12)
    np.testing.assert_allclose(orientation_error, [90.0, 0.0, 45.0], atol=1e-9)
    with pytest.raises(ValueError):
        mean_pose_baseline(np.zeros((0, 3)), np.zeros((0, 4)), true_positions, true_quats)


# --------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------


def test_predict_returns_true_poses_and_the_models_outputs(scene_root: Path) -> None:
    records = load_frames(scene_root, "test")
    transform = FrameTransform(resize=32, crop=32)
    model = make_model()
    model.train().set_dropout_mode("train")  # predict must switch to eval / dropout off and back
    predictions = predict(model, records, transform, device="cpu", batch_size=3)
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

    again = predict(model, records, transform, device="cpu", batch_size=8)  # deterministic
    np.testing.assert_allclose(again.position_pred_N3, predictions.position_pred_N3, atol=1e-5)
    with pytest.raises(ValueError, match="window"):
        predict(model, records, FrameTransform(resize=32, window=2), device="cpu")


def test_eval_transform_from_config() -> None:
    transform = eval_transform({"data": {"resize": 64, "crop": [48, 64]}})
    assert (transform.resize, transform.crop_size(), transform.random_crop) == (64, (48, 64), False)
    default = eval_transform({"model": {}})
    assert (default.resize, default.crop_size(), default.random_crop) == (256, (224, 224), False)


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------


def test_evaluate_writes_consistent_files(checkpoint: Path, scene_root: Path, second_root: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "eval"
    thresholds = ((0.05, 5.0), (10.0, 180.0))
    result = evaluate(checkpoint, [scene_root, second_root], out=out, thresholds=thresholds,
                      batch_size=4, device="cpu", progress=False)
    for name in ("metrics.json", "predictions.csv", "error_cdf.png", "top_view.png"):
        assert (out / name).is_file(), name
    for name in ("error_cdf.png", "top_view.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000

    stored = json.loads((out / "metrics.json").read_text())
    assert stored == json.loads(json.dumps(result))
    assert stored["model"] == str(checkpoint)
    assert stored["thresholds"] == [[0.05, 5.0], [10.0, 180.0]]
    assert list(stored["scenes"]) == ["office", "kitchen"]

    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Monte-Carlo sampling is on by default (the checkpoint's 32 samples): σ columns follow.
    assert tuple(rows[0]) == PREDICTION_COLUMNS + UNCERTAINTY_COLUMNS
    assert stored["mc_samples"] == 32 and not stored["calibrated"]
    assert stored["overall"]["uncertainty"]["position"]["dimension"] == 3
    assert all(float(r["sigma_position_m"]) > 0 for r in rows)
    assert len(rows) == 14
    groups = {"office": [r for r in rows if r["scene"] == "office"],
              "kitchen": [r for r in rows if r["scene"] == "kitchen"], "overall": rows}
    for name, group in groups.items():
        metrics = stored["overall"] if name == "overall" else stored["scenes"][name]
        position_error = np.array([float(r["position_error_m"]) for r in group])
        orientation_error = np.array([float(r["orientation_error_deg"]) for r in group])
        recomputed = pose_metrics(position_error, orientation_error, thresholds)
        for key, value in recomputed.items():
            assert metrics[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (name, key)
        assert metrics["frames"] == len(group) == {"office": 8, "kitchen": 6, "overall": 14}[name]
        assert metrics["within_10m_180deg"] == 1.0
        # The error columns are the errors of the pose columns.
        true = np.array([[float(r[c]) for c in PREDICTION_COLUMNS[3:10]] for r in group])
        pred = np.array([[float(r[c]) for c in PREDICTION_COLUMNS[10:17]] for r in group])
        np.testing.assert_allclose(position_error, translation_error(pred[:, :3], true[:, :3]), atol=1e-12)
        np.testing.assert_allclose(orientation_error, angular_error_deg(pred[:, 3:], true[:, 3:]), atol=1e-9)
        assert "mean_pose_baseline" in metrics
    assert stored["scenes"]["office"]["data_root"] == str(scene_root)
    frame_indices = [int(r["frame_index"]) for r in groups["office"]]
    assert frame_indices == list(range(8))
    assert {r["sequence"] for r in rows} == {"seq-02"}

    table = format_table(result)
    lines = table.splitlines()
    assert "Median position" in lines[0] and "5cm/5°" in lines[0] and "1000cm/180°" not in lines[0]
    assert "10m/180°" in lines[0]
    assert any(line.startswith("office") for line in lines)
    assert any(line.startswith("kitchen") for line in lines)
    assert lines[-1].startswith("Overall") and " 14 " in lines[-1]
    assert f"{stored['overall']['median_position_error_m']:.3f} m" in lines[-1]


def test_evaluate_rejects_no_roots(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        evaluate(checkpoint, [], out=tmp_path, device="cpu", progress=False)


# --------------------------------------------------------------------------------------------------
# saliency
# --------------------------------------------------------------------------------------------------


def test_saliency_maps_shape_sign_and_dependence_on_input() -> None:
    model = make_model()
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 24, 32, generator=generator)
    saliency = saliency_maps(model, images)
    assert saliency.shape == (2, 24, 32)
    assert torch.all(saliency >= 0) and torch.all(saliency.flatten(1).amax(1) > 0)
    assert all(p.grad is None for p in model.parameters())
    # Per image: the batched map equals the map of the image alone (eval mode, no interaction).
    torch.testing.assert_close(saliency_maps(model, images[1:]), saliency[1:], rtol=1e-4, atol=1e-7)
    changed = saliency_maps(model, images.flip(-1) * 0.5)
    assert (changed - saliency).abs().amax() > 1e-2 * saliency.amax()
    with torch.inference_mode():  # works inside the caller's inference mode too
        assert saliency_maps(model, images[:1]).shape == (1, 24, 32)
    with pytest.raises(ValueError, match="shape"):
        saliency_maps(model, images[0])


def test_write_saliency_writes_pngs_and_rejects_bad_frames(checkpoint: Path, scene_root: Path,
                                                          tmp_path: Path) -> None:
    paths = write_saliency(checkpoint, scene_root, out=tmp_path / "default", device="cpu")
    assert [p.name for p in paths] == [f"saliency_seq-02_{i}.png" for i in (0, 2, 5, 7)]
    for path in paths:
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    chosen = write_saliency(checkpoint, scene_root, frames=[3], out=tmp_path / "one", device="cpu")
    assert [p.name for p in chosen] == ["saliency_seq-02_3.png"]
    with pytest.raises(ValueError, match=r"0\.\.7"):
        write_saliency(checkpoint, scene_root, frames=[8], out=tmp_path / "bad", device="cpu")
    with pytest.raises(ValueError, match=r"0\.\.7"):
        write_saliency(checkpoint, scene_root, frames=[-1], out=tmp_path / "bad", device="cpu")
    assert not (tmp_path / "bad").exists()
