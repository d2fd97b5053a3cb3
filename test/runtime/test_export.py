"""runtime/export.py (`posenet-ros export`): TorchScript and ONNX files that give PyTorch's outputs, run
by the Relocalizer and the node's settings; clear errors for files that do not fit."""

import numpy as np
import pytest
import torch

from posenet_ros.cli import main
from posenet_ros.inference.loop_closure import LoopClosureConfig
from posenet_ros.inference.uncertainty import UncertaintyConfig, head_dropout_masks, torch_network
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.node.pipeline import build_relocalizer
from posenet_ros.runtime.checkpoint import CheckpointError, load_model, save_checkpoint, store_calibration
from posenet_ros.runtime.export import ExportedNetwork, export_model, exported_path
from posenet_ros.runtime.relocalizer import Relocalizer

DATA = {"resize": 24, "crop": [20, 28]}
MODELS = {
    "aleatoric": {"backbone": "resnet_tiny", "feature_dim": 64, "aleatoric": "per_axis"},
    "spatial_lstm": {"backbone": "resnet_tiny", "feature_dim": 64, "head": "spatial_lstm", "lstm_hidden": 8},
    "rgbd": {"backbone": "resnet_tiny", "feature_dim": 64, "depth": "dual_stream"},
}


def write_checkpoint(folder, model_config: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = PoseNet(ModelConfig(**model_config))
    with torch.no_grad():
        model.feature_covariance.copy_(torch.eye(model.head_dim) * 0.01)
    path = save_checkpoint(folder / "model.safetensors", model, {"model": model_config, "data": DATA},
                           np.zeros((1, 7)))
    return store_calibration(path, UncertaintyConfig(mc_samples=16, position_scale=2.0, position_novelty=0.5),
                             LoopClosureConfig(enter_score=1e9, leave_score=1e9, min_frames=1))


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("export_format", ["onnx", "torchscript"])
def test_exported_network_equals_pytorch_for_any_batch_samples_and_size(tmp_path, kind, export_format):
    path = write_checkpoint(tmp_path, MODELS[kind])
    out, difference = export_model(path, export_format)
    assert out == exported_path(path, export_format) and out.is_file()
    assert difference < 1e-4
    model = load_model(path).model
    network = ExportedNetwork(out, model, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    for batch, samples, height, width in [(1, 1, 20, 28), (3, 5, 33, 41), (2, 32, 48, 64)]:
        images = torch.rand(batch, model.input_channels, height, width, generator=generator)
        if kind == "rgbd":
            images[:, 3] = 3.0 * images[:, 3]
            images[0, 3, :5] = 0.0  # holes
        masks = head_dropout_masks(batch, samples, model.head_dim, 0.5, 7, images.device)
        with torch.inference_mode():
            expected = torch_network(model)(images, masks)
            got = network(images, masks)
        assert got[1].shape == (batch * samples, 3) and got[0].shape == (batch, model.head_dim)
        assert (got[3] is None) == (kind != "aleatoric")
        for a, b in zip(expected, got, strict=True):
            if a is not None:
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_relocalizer_runs_the_exported_network_with_the_same_estimates(tmp_path, capsys):
    path = write_checkpoint(tmp_path, MODELS["aleatoric"])
    for export_format in ("onnx", "torchscript"):
        assert main(["export", "--model", str(tmp_path), "--format", export_format]) == 0
        assert "largest difference from PyTorch" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(3)]
    reference = Relocalizer(path, device="cpu")
    runtimes = {name: Relocalizer(path, device="cpu", runtime=name) for name in ("onnx", "torchscript")}
    for stamp, frame in enumerate(frames):
        expected = reference.process(frame, stamp_ns=stamp)
        for runtime, relocalizer in runtimes.items():
            got = relocalizer.process(frame, stamp_ns=stamp)
            np.testing.assert_allclose(got.position_3, expected.position_3, rtol=1e-5, atol=1e-6,
                                       err_msg=runtime)
            np.testing.assert_allclose(got.quat_wxyz_4, expected.quat_wxyz_4, atol=1e-6, err_msg=runtime)
            np.testing.assert_allclose(got.covariance_66, expected.covariance_66, rtol=1e-3, atol=1e-9,
                                       err_msg=runtime)
            assert got.score == pytest.approx(expected.score, rel=1e-5)
            assert got.known_place == expected.known_place
    # Monte-Carlo dropout is really on in the exported runtime: the covariance has an epistemic part.
    assert np.trace(got.epistemic_66) > 0
    # The node's settings select the runtime.
    settings = NodeSettings.from_values({"model": str(tmp_path), "device": "cpu", "runtime": "onnx"})
    node_relocalizer = build_relocalizer(settings)
    assert isinstance(node_relocalizer.network, ExportedNetwork)
    np.testing.assert_allclose(node_relocalizer.process(frames[0], stamp_ns=0).covariance_66,
                               reference.process(frames[0], stamp_ns=0).covariance_66, rtol=1e-3, atol=1e-9)


def test_calibrating_after_export_keeps_the_export_valid(tmp_path):
    path = write_checkpoint(tmp_path, MODELS["aleatoric"])
    export_model(path, "onnx")
    # Calibration rewrites the checkpoint (settings and the feature memory), not the network.
    model = load_model(path).model
    store_calibration(path, UncertaintyConfig(mc_samples=8), LoopClosureConfig(),
                      tensors_update={"feature_covariance": torch.eye(model.head_dim)})
    relocalizer = Relocalizer(path, device="cpu", runtime="onnx")
    assert relocalizer.uncertainty.mc_samples == 8
    assert np.isfinite(relocalizer.process(np.zeros((30, 40, 3), np.uint8)).score)


def test_exported_files_that_do_not_fit_are_clear_errors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = write_checkpoint(tmp_path / "a", MODELS["aleatoric"])
    with pytest.raises(FileNotFoundError, match="posenet-ros export"):
        Relocalizer(path, device="cpu", runtime="onnx")
    out, _ = export_model(path, "onnx")
    # Exported from other weights (a retrained checkpoint).
    other = write_checkpoint(tmp_path / "b", MODELS["aleatoric"], seed=1)
    with pytest.raises(CheckpointError, match="other weights"):
        Relocalizer(other, device="cpu", runtime="onnx", exported_model=out)
    # A file of the other format, a truncated file, garbage.
    with pytest.raises(ValueError, match="is a onnx file, not torchscript"):
        Relocalizer(path, device="cpu", runtime="torchscript", exported_model=out)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(out.read_bytes()[:1000])
    garbage = tmp_path / "garbage.torchscript.pt"
    garbage.write_bytes(b"not a model")
    for bad in (truncated, garbage):
        with pytest.raises(CheckpointError, match="not a readable"):
            Relocalizer(path, device="cpu", runtime="onnx" if bad.suffix == ".onnx" else "torchscript",
                        exported_model=bad)
    with pytest.raises(ValueError, match="runtime must be one of"):
        Relocalizer(path, device="cpu", runtime="tensorrt")  # type: ignore[arg-type]
    assert main(["export", "--model", str(tmp_path / "missing"), "--format", "onnx"]) == 2
    # An export that does not reproduce PyTorch (here: a tolerance nothing meets) leaves no file behind.
    with pytest.raises(ValueError, match="nothing was written"):
        export_model(path, "torchscript", tolerance=-1.0)
    assert not exported_path(path, "torchscript").exists()


def test_full_network_sampling_is_not_exported(tmp_path):
    config = {**MODELS["aleatoric"], "backbone_dropout": 0.1}
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "model.safetensors", PoseNet(ModelConfig(**config)),
                           {"model": config, "data": DATA}, np.zeros((1, 7)))
    store_calibration(path, UncertaintyConfig(mc_samples=4, mc_mode="full"), LoopClosureConfig())
    with pytest.raises(ValueError, match="mc_mode full"):
        export_model(path, "onnx")
