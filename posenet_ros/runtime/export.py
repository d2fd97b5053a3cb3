"""Export a pose-regression network as TorchScript or ONNX, and run an exported file.

    posenet-ros export --model run --format onnx          # -> run/model.onnx
    posenet-ros export --model run --format torchscript   # -> run/model.torchscript.pt

The exported network is `PoseNet.forward_samples`, a deterministic function of two inputs:

    images (B, C, H, W) float32   RGB in [0, 1], then depth in metres for RGB-D models (C = 4)
    masks  (B, N, F)    float32   the head's dropout masks (uncertainty.head_dropout_masks; all ones
                                  with N = 1 for the deterministic head), F = the model's head_dim
 -> features (B, F), position (B*N, 3) metres, quat (B*N, 4) unit wxyz of world_from_cam,
    [log_var (B*N, K) for aleatoric models]

with B, N, H and W free. Monte-Carlo sampling is therefore the same in PyTorch, TorchScript and ONNX
Runtime: same masks, same samples (float tolerance). Everything else (calibration, loop-closure
thresholds and feature memory, temporal model, map poses) stays in the checkpoint: the Relocalizer
loads the checkpoint and runs the network from the exported file (`runtime="onnx"` or
"torchscript"), after checking that the file was exported from the checkpoint's weights (a SHA-256
fingerprint of the network's tensors, stored in the file; `posenet-ros calibrate` does not change it).

On 2 CPU cores ONNX Runtime runs ResNet-18 at 224x224 about 1.4x faster than eager PyTorch (see
bench/pipeline_stages.py), so it is the CPU fast path. A TorchScript file holds code as well as
weights: load only files you exported yourself (ONNX files hold a graph, no code).
Export covers pose regression (`method: posenet`) with head Monte-Carlo sampling; scene coordinate
models and full-network sampling run in PyTorch.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from posenet_ros.core.atomic_io import atomic_write_bytes
from posenet_ros.inference.uncertainty import head_dropout_masks, torch_network
from posenet_ros.models.posenet import PoseNet
from posenet_ros.runtime.checkpoint import CheckpointError, load_model, resolve_checkpoint_path
from posenet_ros.runtime.train_config import TrainConfig

ExportFormat = Literal["torchscript", "onnx"]
FORMATS: tuple[str, ...] = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
EXPORT_FORMAT = "posenet_ros.export.v1"
METADATA_KEY = "posenet_ros"  # ONNX metadata_props key / TorchScript extra file name
ONNX_OPSET = 17
_NOT_EXPORTED = ("feature_covariance",)  # changed by calibration, used outside the network


def exported_path(checkpoint: str | Path, export_format: ExportFormat) -> Path:
    """Where `export` writes by default: beside the checkpoint (run/model.onnx, run/model.torchscript.pt)."""
    path = resolve_checkpoint_path(checkpoint)
    return path.with_name(path.stem + SUFFIXES[export_format])


def weights_fingerprint(model: PoseNet) -> str:
    """SHA-256 of the network's tensors (names, shapes, dtypes, values), without the feature memory."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in _NOT_EXPORTED:
            continue
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


class SamplingModule(torch.nn.Module):
    """`PoseNet.forward_samples` as a module of plain tensors, the graph that is exported."""

    def __init__(self, model: PoseNet) -> None:
        super().__init__()
        self.model = model
        self.run = torch_network(model)

    def forward(self, images_BCHW: torch.Tensor, masks_BNF: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, position, quat, log_var = self.run(images_BCHW, masks_BNF)
        return (features, position, quat) if log_var is None else (features, position, quat, log_var)


def example_inputs(model: PoseNet, config: TrainConfig,
                   samples: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded (images 1xCxHxW at the checkpoint's input size, masks 1xNxF) pair for tracing and checks."""
    transform = config.eval_transform()
    crop = transform.crop_size() or (transform.resize or 224,) * 2
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, model.input_channels, *crop, generator=generator)
    if model.config.needs_depth:
        images[:, 3] = 0.5 + 4.0 * images[:, 3]  # metres
    masks = head_dropout_masks(1, samples, model.head_dim, max(model.config.dropout, 0.5), 0,
                               torch.device("cpu"))
    return images, masks


def export_model(checkpoint: str | Path, export_format: ExportFormat, out: str | Path | None = None,
                 tolerance: float = 1e-3) -> tuple[Path, float]:
    """Write the checkpoint's network as `export_format` (atomically) and check it: the exported file
    run by its runtime against PyTorch on a seeded input with 4 Monte-Carlo masks. Returns the path and
    the largest absolute difference over all outputs; raises ValueError (and removes the file) when
    it exceeds `tolerance`, and when the checkpoint cannot be exported."""
    if export_format not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {export_format!r}")
    loaded = load_model(checkpoint, "cpu")
    if "onnx" not in loaded.method_class.RUNTIMES:
        raise ValueError(f"{loaded.path} is a {loaded.method} model, which runs in PyTorch only; export "
                         "covers pose regression")
    if loaded.uncertainty.mc_samples > 0 and loaded.uncertainty.mc_mode == "full":
        raise ValueError(f"{loaded.path} is calibrated for full-network Monte-Carlo dropout (mc_mode "
                         "full), which runs in PyTorch only; export covers head sampling")
    model = loaded.model
    module = SamplingModule(model).eval()
    images, masks = example_inputs(model, loaded.config)
    aleatoric = model.fc_log_var is not None
    metadata = json.dumps({"format": EXPORT_FORMAT, "fingerprint": weights_fingerprint(model),
                           "checkpoint": loaded.path.name, "aleatoric": aleatoric})
    out = Path(out) if out is not None else exported_path(loaded.path, export_format)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The shape checks of forward_features are Python conditions, fixed at trace time: harmless.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's notice since PyTorch 2.10
        buffer = io.BytesIO()
        if export_format == "torchscript":
            traced = torch.jit.trace(module, (images, masks), check_trace=False)
            torch.jit.save(traced, buffer, _extra_files={METADATA_KEY: metadata})
            data = buffer.getvalue()
        else:
            data = _onnx_bytes(module, images, masks, aleatoric, metadata)
        expected = [t.numpy() for t in module(images, masks)]
    atomic_write_bytes(out, data)
    exported = ExportedNetwork(out, model, torch.device("cpu"))
    got = [t.numpy() for t in exported(images, masks) if t is not None]
    difference = max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))
    if not difference <= tolerance:
        out.unlink()  # a runtime must never pick up a file that does not compute the model
        raise ValueError(f"the {export_format} export differs from PyTorch by {difference:.3g} (tolerance "
                         f"{tolerance}); nothing was written")
    return out, difference


def _onnx_bytes(module: SamplingModule, images: torch.Tensor, masks: torch.Tensor, aleatoric: bool,
                metadata: str) -> bytes:
    import onnx  # optional dependency (pip install posenet_ros[export])

    outputs = ["features", "position", "quat"] + (["log_var"] if aleatoric else [])
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "masks": {0: "batch", 1: "samples"},
            "features": {0: "batch"}} | {name: {0: "rows"} for name in outputs[1:]}
    buffer = io.BytesIO()
    # The TorchScript-based exporter (dynamo=False where torch has both): dynamic_axes, no onnxscript.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
        # Its LSTM notice (batch sizes other than the traced one): the spatial LSTM head is checked
        # with other batch sizes in test/runtime/test_export.py.
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size")
        torch.onnx.export(module, (images, masks), buffer, input_names=["images", "masks"],
                          output_names=outputs, dynamic_axes=axes, opset_version=ONNX_OPSET, **legacy)
    graph = onnx.load_from_string(buffer.getvalue())
    graph.metadata_props.add(key=METADATA_KEY, value=metadata)
    return graph.SerializeToString()


class ExportedNetwork:
    """An exported file as a `uncertainty.SamplingNetwork`: (images_BCHW, masks_BNF) on `device` ->
    (features_BF, position_M3, quat_M4, log_var_MK or None) on `device`.

    Raises FileNotFoundError for a missing file and CheckpointError for an unreadable one or one
    exported from other weights than `model`'s. ONNX files run in ONNX Runtime (CPU, or its CUDA
    provider for a CUDA device), with as many threads as torch uses."""

    def __init__(self, path: str | Path, model: PoseNet, device: torch.device) -> None:
        self.path = Path(path)
        self.device = device
        if not self.path.is_file():
            raise FileNotFoundError(f"no exported model at {self.path}: run `posenet-ros export`")
        self.format: ExportFormat = "onnx" if self.path.suffix == ".onnx" else "torchscript"
        if self.format == "onnx" and device.type == "cuda" and not onnx_cuda_available():
            raise ValueError("running ONNX files on a CUDA device needs onnxruntime-gpu (its "
                             "CUDAExecutionProvider); install it, or use runtime torch or torchscript")
        try:
            metadata = self._load()
            info = json.loads(metadata)
        except (RuntimeError, ValueError, OSError) as exc:
            raise CheckpointError(f"{self.path}: not a readable {self.format} export ({exc})") from exc
        if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
            raise CheckpointError(f"{self.path}: not a posenet_ros export")
        if info.get("fingerprint") != weights_fingerprint(model):
            raise CheckpointError(f"{self.path} was exported from other weights than the checkpoint "
                                  f"loaded with it: run `posenet-ros export` again")
        self.aleatoric = bool(info.get("aleatoric"))

    def _load(self) -> str:
        """Open the file for this device; returns its posenet_ros metadata (JSON)."""
        if self.format == "torchscript":
            extra = {METADATA_KEY: ""}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's notice
                self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra)
            return extra[METADATA_KEY]
        import onnxruntime  # optional dependency (pip install posenet_ros[export])

        providers: list = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: spinning ORT threads slow the PyTorch work that
        # follows each run on a small CPU (measured 29 ms instead of 18 ms per frame on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for malformed files
            raise ValueError(str(exc)) from exc
        return self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "")

    def __call__(self, images_BCHW: torch.Tensor, masks_BNF: torch.Tensor):
        if self.format == "torchscript":
            with torch.no_grad():
                outputs = list(self.module(images_BCHW, masks_BNF))
        else:
            feeds = {"images": images_BCHW.detach().float().cpu().numpy(),
                     "masks": masks_BNF.detach().float().cpu().numpy()}
            outputs = [torch.from_numpy(a).to(self.device) for a in self.session.run(None, feeds)]
        features, position, quat = outputs[:3]
        return features, position, quat, outputs[3] if self.aleatoric else None


def onnx_cuda_available() -> bool:
    """Whether ONNX Runtime can run on CUDA here (onnxruntime-gpu installed)."""
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
