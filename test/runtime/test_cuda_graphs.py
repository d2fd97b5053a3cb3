"""runtime/cuda_graphs.py and the CUDA fast path of the Relocalizer (device preprocessing,
channels_last, CUDA graphs, autocast) against the CPU path. Skipped where CUDA is absent; run on a
GPU machine."""

import numpy as np
import pytest
import torch

from posenet_ros.inference.loop_closure import LoopClosureConfig
from posenet_ros.inference.uncertainty import UncertaintyConfig, head_dropout_masks, torch_network
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.runtime.checkpoint import save_checkpoint, store_calibration
from posenet_ros.runtime.cuda_graphs import CudaGraphNetwork
from posenet_ros.runtime.export import export_model
from posenet_ros.runtime.relocalizer import Relocalizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MODEL = {"backbone": "resnet_tiny", "feature_dim": 64, "aleatoric": "per_axis"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cuda")
    torch.manual_seed(0)
    model = PoseNet(ModelConfig(**MODEL))
    with torch.no_grad():
        model.feature_covariance.copy_(torch.eye(model.head_dim) * 0.01)
    path = save_checkpoint(folder / "model.safetensors", model,
                           {"model": MODEL, "data": {"resize": 48, "crop": [44, 60]}}, np.zeros((1, 7)))
    store_calibration(path, UncertaintyConfig(mc_samples=32),
                      LoopClosureConfig(enter_score=1e9, leave_score=1e9))
    export_model(path, "torchscript")
    return path


@pytest.fixture(autouse=True)
def no_tf32():
    """Full fp32 convolutions and matrix products (TF32 is on by default for cuDNN convolutions)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def frames(count: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(count)]


def test_cuda_graph_replays_equal_the_eager_network():
    torch.manual_seed(0)
    model = PoseNet(ModelConfig(**MODEL)).cuda().eval()
    eager = torch_network(model)
    graphed = CudaGraphNetwork(eager, torch.device("cuda"))
    with torch.inference_mode():
        for seed in range(3):
            images = torch.rand(1, 3, 44, 60, device="cuda")
            masks = head_dropout_masks(1, 32, model.head_dim, 0.5, seed, torch.device("cuda"))
            for a, b in zip(eager(images, masks), graphed(images, masks), strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert graphed.captured == 1


@pytest.mark.parametrize("runtime", ["torch", "torchscript"])
def test_fast_path_estimates_equal_the_cpu_path(checkpoint, runtime):
    cpu = Relocalizer(checkpoint, device="cpu")
    gpu = Relocalizer(checkpoint, device="cuda", runtime=runtime)
    assert gpu.fast_path
    for stamp, frame in enumerate(frames()):
        expected, got = cpu.process(frame, stamp_ns=stamp), gpu.process(frame, stamp_ns=stamp)
        # Resizing on the GPU differs from OpenCV's fixed-point resize by at most 1/255 per pixel.
        np.testing.assert_allclose(got.position_3, expected.position_3, atol=2e-3)
        np.testing.assert_allclose(got.quat_wxyz_4, expected.quat_wxyz_4, atol=2e-3)
        # Entries below 1e-5 of the largest variance (cross terms of ~1e-7 against variances of ~1) are
        # rounding noise of the float32 network.
        scale = np.abs(np.diag(expected.covariance_66)).max()
        np.testing.assert_allclose(got.covariance_66, expected.covariance_66, rtol=5e-2, atol=1e-5 * scale)
    if runtime == "torch":
        assert gpu.network.captured == 1  # one camera size, one graph


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_stay_close_to_fp32(checkpoint, precision):
    full = Relocalizer(checkpoint, device="cuda")
    half = Relocalizer(checkpoint, device="cuda", precision=precision)
    for stamp, frame in enumerate(frames()):
        expected, got = full.process(frame, stamp_ns=stamp), half.process(frame, stamp_ns=stamp)
        assert np.all(np.isfinite(got.covariance_66))
        np.testing.assert_allclose(got.position_3, expected.position_3, atol=5e-2)


def test_pinned_upload_and_device_preprocessing_match_prepare_on_cpu(checkpoint):
    cpu = Relocalizer(checkpoint, device="cpu")
    gpu = Relocalizer(checkpoint, device="cuda")
    for frame in frames(2):
        expected = cpu.prepare(frame)
        got = gpu.prepare(frame)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert (got.cpu() - expected).abs().max() <= 1.0 / 255 + 1e-6
