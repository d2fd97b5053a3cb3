"""runtime/checkpoint.py: a checkpoint rebuilds its model with nothing else; calibration and the
temporal model are stored in it; a missing, corrupt, foreign or mismatched file is a CheckpointError
naming the file; and checkpoints written before the layered redesign (test/fixtures/pre_redesign,
commit d75eb00) load with the current code and give the estimates that code gave, frame by frame."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from posenet_ros.core.config import config_to_dict
from posenet_ros.data.images import read_depth_mm, read_rgb
from posenet_ros.inference.loop_closure import LoopClosureConfig
from posenet_ros.inference.uncertainty import UncertaintyConfig
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.models.temporal import TemporalConfig, TemporalModel
from posenet_ros.runtime.checkpoint import (
    CheckpointError,
    load_model,
    save_checkpoint,
    store_calibration,
    store_temporal,
)
from posenet_ros.runtime.relocalizer import Relocalizer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pre_redesign"


def posenet_model(**kw) -> PoseNet:
    torch.manual_seed(0)
    model = PoseNet(ModelConfig(backbone="mobilenet_v2", feature_dim=64, **kw))
    model.set_position_statistics(torch.tensor([1.0, 2.0, 3.0]), 2.0)
    return model.eval()


def small_model(**kwargs) -> PoseNet:
    torch.manual_seed(0)
    config = ModelConfig(backbone="resnet_tiny", feature_dim=64, dropout=0.3, **kwargs)
    return PoseNet(config).eval()


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = posenet_model()
    config = {"model": config_to_dict(model.config)}
    path = save_checkpoint(tmp_path / "model.safetensors", model, config, np.zeros((4, 7)))
    assert (tmp_path / "config.json").is_file()
    loaded = load_model(tmp_path)
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(loaded.model(x).position_B3, model(x).position_B3)
    assert loaded.model.dropout_mode == "off" and not loaded.model.training
    assert loaded.map_poses_N7.shape == (4, 7)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors: not a readable"):
        load_model(truncated)
    pickle = tmp_path / "model.pth"
    torch.save(model.state_dict(), pickle)
    with pytest.raises(CheckpointError, match=r"model\.pth: not a readable"):
        load_model(pickle)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_model(tmp_path / "missing.safetensors")
    # Weights of one architecture with the configuration of another.
    other = tmp_path / "other.safetensors"
    resnet_config = {"model": config_to_dict(ModelConfig(backbone="resnet18"))}
    save_checkpoint(other, model, resnet_config, np.zeros((1, 7)))
    with pytest.raises(CheckpointError, match="do not fit the stored architecture"):
        load_model(other)


def test_calibration_round_trips_through_the_checkpoint(tmp_path):
    model = small_model()
    path = save_checkpoint(tmp_path / "model.safetensors", model, {"model": {"backbone": "resnet_tiny",
                                                                             "feature_dim": 64}},
                           np.zeros((1, 7)))
    loaded = load_model(path)
    assert not loaded.calibrated and loaded.uncertainty == UncertaintyConfig()
    store_calibration(path, UncertaintyConfig(mc_samples=8, position_scale=2.5, rotation_scale=0.5),
                      LoopClosureConfig(enter_score=-3.0, leave_score=-2.0, min_frames=4), {"frames": 10})
    loaded = load_model(path)
    assert loaded.calibrated
    assert loaded.uncertainty.position_scale == 2.5 and loaded.uncertainty.mc_samples == 8
    assert loaded.loop_closure == LoopClosureConfig(enter_score=-3.0, leave_score=-2.0, min_frames=4)
    torch.testing.assert_close(loaded.model.fc_position.weight, model.fc_position.weight)

    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={**loaded.metadata, "uncertainty": '{"mc_samples": -4}'})
    with pytest.raises(CheckpointError, match="calibration"):
        load_model(path)


@pytest.mark.parametrize("name", ["posenet", "scr"])
def test_a_checkpoint_written_before_the_redesign_loads_and_predicts_the_same(name: str) -> None:
    expected = json.loads((FIXTURE / "expected.json").read_text())
    loaded = load_model(FIXTURE / name / "model.safetensors")
    assert loaded.method == name
    relocalizer = Relocalizer(FIXTURE / name / "model.safetensors", device="cpu")
    # The scene coordinate model's poses are the pose solver's since its robust refinement (README).
    results = expected["models"][name].get("results_robust_refinement", expected["models"][name]["results"])
    for frame, want in zip(expected["frames"], results, strict=True):
        estimate = relocalizer.process(read_rgb(FIXTURE / "frames" / frame["color"]),
                                       depth_HW=read_depth_mm(FIXTURE / "frames" / frame["depth"]),
                                       stamp_ns=frame["stamp_ns"])
        # Equal up to float32 rounding: the Relocalizer now hands the network a contiguous (B, C, H, W)
        # input, as the datasets do, where it used to hand it a channels-last one, and the CPU kernels
        # round the two layouts differently (measured: up to 1.7e-6 m, 4e-7 in the quaternion).
        np.testing.assert_allclose(estimate.position_3, want["position_3"], atol=1e-5)
        np.testing.assert_allclose(estimate.quat_wxyz_4, want["quat_wxyz_4"], atol=1e-5)
        covariance = np.asarray(want["covariance_66"])
        np.testing.assert_allclose(estimate.covariance_66, covariance, rtol=1e-4,
                                   atol=1e-4 * np.abs(covariance).max())
        assert estimate.known_place == want["known_place"]
        assert estimate.score == pytest.approx(want["score"], abs=1e-5)


def _saved(tmp_path: Path) -> Path:
    model = small_model()
    return save_checkpoint(tmp_path / "run" / "model.safetensors", model,
                           {"model": {"backbone": "resnet_tiny", "feature_dim": 64}}, np.zeros((3, 7)))


def _rewrite(path: Path, **metadata: str) -> Path:
    """The checkpoint at `path` with these metadata entries replaced (None: removed)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        stored = dict(handle.metadata())
    stored.update(metadata)
    save_file(load_file(str(path)), str(path), metadata={k: v for k, v in stored.items() if v is not None})
    return path


def test_a_folder_stands_for_its_model_file_and_a_missing_one_is_named(tmp_path):
    path = _saved(tmp_path)
    assert load_model(path.parent).path == path
    assert json.loads((path.parent / "config.json").read_text())["model"]["backbone"] == "resnet_tiny"
    missing = f"no such checkpoint: {tmp_path / 'model.safetensors'}"
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_model(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"not a checkpoint at all\n" * 40,
                                     b"\xff\xff\xff\xff\xff\xff\xff\x7f{}"])


def test_a_corrupt_file_is_a_checkpoint_error_naming_it(tmp_path, content):
    path = tmp_path / "run" / "model.safetensors"
    path.parent.mkdir()
    path.write_bytes(content)
    for given in (path, path.parent):
        with pytest.raises(CheckpointError,
                           match=f"^{re.escape(str(path))}: not a readable safetensors checkpoint"):
            load_model(given)
    assert issubclass(CheckpointError, ValueError)  # the CLI reports it as one line, exit code 2


def test_a_safetensors_file_of_another_format_is_refused_naming_it(tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "weights.safetensors"
    save_file({"conv1.weight": torch.zeros(2, 3, 1, 1)}, str(plain))  # e.g. a backbone's weights
    with pytest.raises(CheckpointError, match="^" + re.escape(
            f"{plain}: not a posenet_ros checkpoint (format None, expected 'posenet_ros.checkpoint.v1')")):
        load_model(plain)
    other = _rewrite(_saved(tmp_path), format="posenet_ros.checkpoint.v0")
    foreign = f"{other}: not a posenet_ros checkpoint (format 'posenet_ros.checkpoint.v0', expected "
    with pytest.raises(CheckpointError, match="^" + re.escape(foreign)):
        load_model(other)
    # Writing calibration or a temporal model into such a file is refused too, and leaves it alone.
    before = plain.read_bytes()
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(plain))}: not a posenet_ros checkpoint"):
        store_calibration(plain, UncertaintyConfig(), LoopClosureConfig())
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(plain))}: not a posenet_ros checkpoint"):
        store_temporal(plain, TemporalModel(TemporalConfig(hidden=4), 8), {"config": {}, "calibration": {}})
    assert plain.read_bytes() == before


@pytest.mark.parametrize(("metadata", "message"), [
    ({"config": "{not json"}, "the stored configuration is invalid"),
    ({"config": None}, "the stored configuration is invalid"),
    ({"config": json.dumps({"model": {"backbone": "resnet_tiny", "colour": 1}})},
     "the stored configuration is invalid"),
    ({"uncertainty": json.dumps({"mc_samples": "many"})}, "the stored calibration is invalid"),
    ({"loop_closure": json.dumps({"enter_score": 2.0, "leave_score": 1.0})},
     "the stored calibration is invalid"),
    ({"temporal": json.dumps({"config": {"hidden": 4}})},
     "the stored temporal model is invalid or from an older version of posenet_ros; "
     "run `posenet-ros train-temporal` on it again"),
])


def test_invalid_stored_metadata_is_a_checkpoint_error_naming_the_file(tmp_path, metadata, message):
    path = _rewrite(_saved(tmp_path), **metadata)
    with pytest.raises(CheckpointError, match=f"^{re.escape(f'{path}: {message}')}"):
        load_model(path)


def test_store_calibration_replaces_only_tensors_of_the_same_name_and_shape(tmp_path):
    path = _saved(tmp_path)
    memory = load_model(path).model.feature_covariance
    store_calibration(path, UncertaintyConfig(), LoopClosureConfig(),
                      tensors_update={"feature_covariance": 2.0 * torch.eye(memory.shape[0])})
    torch.testing.assert_close(load_model(path).model.feature_covariance, 2.0 * torch.eye(memory.shape[0]))
    for update in ({"feature_covariance": torch.eye(3)}, {"no_such_tensor": torch.zeros(1)}):
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: cannot replace tensor"):
            store_calibration(path, UncertaintyConfig(), LoopClosureConfig(), tensors_update=update)
