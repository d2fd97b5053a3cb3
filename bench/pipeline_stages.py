"""Per-stage latency of the node's pipeline for one frame (p50/p99), per runtime, on CPU or CUDA.

    python bench/pipeline_stages.py [--backbone resnet18] [--size 224] [--samples 32] [--frames 200]
                                    [--width 640] [--height 480] [--device auto]
                                    [--runtimes torch onnx torchscript] [--precisions fp32 bf16 fp16]

An untrained BACKBONE checkpoint (resize SIZE, centre crop SIZE, aleatoric head, a fitted feature
memory, SAMPLES Monte-Carlo samples) with an untrained temporal model of the default size, exported
as ONNX and TorchScript. For each runtime (and, on CUDA, each precision) the stages of one frame, run
one after another on the same WIDTHxHEIGHT rgb8 frame, each timed on its own (CUDA: synchronised
after each stage):

    decode       sensor_msgs/Image CDR bytes -> message -> uint8 RGB (what the DDS runtime receives)
    preprocess   Relocalizer.prepare: resize, centre crop, to the device (CUDA fast path: uint8 upload
                 from pinned memory, resize on the GPU)
    forward      the network with one deterministic sample (backbone + head, dropout off)
    mc_sampling  the network with SAMPLES dropout masks (backbone once + head over SAMPLES copies);
                 `mc_ratio` = mc_sampling / forward, the Monte-Carlo overhead
    covariance   loop-closure score, the one device-to-host copy, float64 mean pose and 6x6 covariance
    smoothing    one causal temporal step (CausalSmoother.update)
    publish      PoseWithCovarianceStamped (+ Bool + Float64) built and CDR-serialised

and `process`, Relocalizer.process end to end (preprocess .. covariance, without smoothing and
without per-stage synchronisation), whose p50 gives `process_fps`; the largest pose difference of
each case from the first one (fp32, PyTorch) over 16 frames (the accuracy cost of bf16 / fp16 and
the exported runtimes). Also peak RSS of this process
and, on CUDA, peak GPU memory. Ratios are within one run; absolute times only mean something on the
machine that printed them. Prints a table and writes JSON (default
bench/results/pipeline_stages_<device>.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from posenet_ros.core.device import resolve_device
from posenet_ros.inference.loop_closure import LoopClosureConfig
from posenet_ros.inference.metrics import pose_errors
from posenet_ros.inference.temporal import head_inputs
from posenet_ros.inference.uncertainty import UncertaintyConfig, head_dropout_masks
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.models.temporal import TemporalConfig, TemporalModel
from posenet_ros.ros.conversions import (
    RosbagsTypes,
    bool_msg,
    float64_msg,
    image_msg,
    message_to_rgb,
    pose_with_covariance_stamped,
)
from posenet_ros.ros.dds_types import deserialize, from_dds, serialize, to_dds
from posenet_ros.runtime.checkpoint import save_checkpoint, store_calibration, store_temporal
from posenet_ros.runtime.export import export_model, onnx_cuda_available
from posenet_ros.runtime.relocalizer import Relocalizer

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_TYPE = "sensor_msgs/msg/Image"
POSE_TYPE = "geometry_msgs/msg/PoseWithCovarianceStamped"


def timed_ms(function, frames: int, device: torch.device, warmup: int = 10) -> np.ndarray:
    """Milliseconds of each of `frames` calls (after `warmup`), synchronising CUDA after each."""
    def call() -> None:
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        call()
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        call()
        times.append(1e3 * (time.perf_counter() - start))
    return np.asarray(times)


def summary(times_ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.median(times_ms)), "p99_ms": float(np.percentile(times_ms, 99))}


def write_checkpoint(folder: Path, backbone: str, size: int, samples: int) -> Path:
    torch.manual_seed(0)
    config = {"model": {"backbone": backbone, "aleatoric": "per_axis"},
              "data": {"resize": size, "crop": [size, size]}}
    model = PoseNet(ModelConfig(**config["model"]))
    with torch.no_grad():
        model.feature_covariance.copy_(torch.eye(model.head_dim))
    path = save_checkpoint(folder / "model.safetensors", model, config, np.zeros((1, 7)))
    store_calibration(path, UncertaintyConfig(mc_samples=samples), LoopClosureConfig())
    temporal = TemporalModel(TemporalConfig(), model.head_dim)
    store_temporal(path, temporal, {"config": dataclasses.asdict(temporal.config), "calibration": {}})
    for export_format in ("onnx", "torchscript"):
        export_model(path, export_format)
    return path


def stage_times(relocalizer: Relocalizer, cdr: bytes, frames: int) -> dict[str, dict[str, float]]:
    """Each stage of one frame timed on its own (module docstring)."""
    device = relocalizer.device
    types = RosbagsTypes()
    rgb = message_to_rgb(from_dds(deserialize(cdr, IMAGE_TYPE), IMAGE_TYPE))
    model, network = relocalizer.model, relocalizer.network
    samples = relocalizer.uncertainty.mc_samples
    images = relocalizer.prepare(rgb).images_BCHW
    ones = head_dropout_masks(1, 1, model.head_dim, 0.0, 0, device)
    masks = head_dropout_masks(1, samples, model.head_dim, model.config.dropout, 0, device)
    with torch.inference_mode(), relocalizer.autocast():
        features, position, quat, log_var = network(images, masks)

        smoother = relocalizer.smoother
        float_features = features.float()
        zero, identity = np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0])
        stages = {
            "decode": lambda: message_to_rgb(from_dds(deserialize(cdr, IMAGE_TYPE), IMAGE_TYPE)),
            "preprocess": lambda: relocalizer.prepare(rgb),
            "forward": lambda: network(images, ones),
            "mc_sampling": lambda: network(images, masks),
            "covariance": lambda: relocalizer.method.summarise_on_host(features, position, quat, log_var),
            "smoothing": lambda: smoother.update(float_features, *head_inputs(model, float_features)),
            "publish": lambda: (
                serialize(to_dds(pose_with_covariance_stamped(types, 0, "map", zero, identity, np.eye(6)),
                                 POSE_TYPE)),
                serialize(to_dds(bool_msg(types, True), "std_msgs/msg/Bool")),
                serialize(to_dds(float64_msg(types, 0.1), "std_msgs/msg/Float64"))),
        }
        results = {name: summary(timed_ms(function, frames, device)) for name, function in stages.items()}
    relocalizer.smoother = None  # `process` below: the per-frame pipeline
    stamp = iter(range(10**9))
    results["process"] = summary(timed_ms(lambda: relocalizer.process(rgb, stamp_ns=next(stamp)), frames,
                                          device))
    relocalizer.smoother = smoother
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnx", "torchscript"])
    parser.add_argument("--precisions", nargs="+", default=None,
                        help="CUDA only (default fp32 bf16 fp16); CPU runs fp32")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    precisions = ["fp32"] if device.type == "cpu" else (args.precisions or ["fp32", "bf16", "fp16"])
    rgb = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    cdr = serialize(to_dds(image_msg(RosbagsTypes(), rgb, 0, "camera", "rgb8"), IMAGE_TYPE))
    cases: dict[str, dict] = {}
    # Pose differences of each case from the first (fp32) one on the same frames: what reduced precision
    # and the other runtimes change.
    check_frames = [np.random.default_rng(i).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
                    for i in range(1, 17)]
    reference = None
    with tempfile.TemporaryDirectory() as folder:
        path = write_checkpoint(Path(folder), args.backbone, args.size, args.samples)
        for runtime in args.runtimes:
            if runtime == "onnx" and device.type == "cuda" and not onnx_cuda_available():
                print("skipping runtime onnx: ONNX Runtime has no CUDA provider here (onnxruntime-gpu)")
                continue
            for precision in precisions:
                if runtime == "onnx" and precision != "fp32":
                    continue  # autocast is a PyTorch feature
                for fast_path in ([True, False] if device.type == "cuda" and runtime != "onnx" else [True]):
                    slow = not fast_path and device.type == "cuda"
                    name = f"{runtime} {precision}" + (" no-fast" if slow else "")
                    relocalizer = Relocalizer(path, device=str(device), precision=precision, runtime=runtime,
                                              fast_path=fast_path)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    stages = stage_times(relocalizer, cdr, args.frames)
                    poses = [relocalizer.process(frame, stamp_ns=i) for i, frame in enumerate(check_frames)]
                    reference = reference or poses
                    position_error, angle_error = pose_errors(
                        [e.position_3 for e in poses], [e.quat_wxyz_4 for e in poses],
                        [e.position_3 for e in reference], [e.quat_wxyz_4 for e in reference])
                    stages["difference_from_first_case"] = {"max_position_m": float(np.max(position_error)),
                                                            "max_rotation_deg": float(np.max(angle_error))}
                    stages["mc_ratio"] = stages["mc_sampling"]["p50_ms"] / stages["forward"]["p50_ms"]
                    stages["process_fps"] = 1e3 / stages["process"]["p50_ms"]
                    if device.type == "cuda":
                        stages["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                    cases[name] = stages
    results = {"device": str(device),
               "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                               else platform.processor()),
               "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "backbone": args.backbone,
               "size": args.size, "mc_samples": args.samples, "image": f"{args.width}x{args.height} rgb8",
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cases": cases}
    columns = ["decode", "preprocess", "forward", "mc_sampling", "covariance", "smoothing", "publish",
               "process"]
    print(f"{args.backbone} {args.size}x{args.size}, {args.samples} MC samples, {args.width}x{args.height} "
          f"frames, {device} ({results['device_name']}), {results['threads']} threads; p50 (p99) ms")
    print(f"{'case':<22}" + "".join(f"{c:>16}" for c in columns) + f"{'MC ratio':>10}{'fps':>8}")
    for name, stages in cases.items():
        cells = "".join(f"{stages[c]['p50_ms']:>8.2f} ({stages[c]['p99_ms']:>5.1f})" for c in columns)
        print(f"{name:<22}{cells}{stages['mc_ratio']:>10.3f}{stages['process_fps']:>8.1f}")
    for name, stages in cases.items():
        difference = stages["difference_from_first_case"]
        print(f"{name:<22} pose difference from {next(iter(cases))}: position "
              f"{difference['max_position_m']:.2e} m, rotation {difference['max_rotation_deg']:.2e}° "
              "(max of 16 frames)")
    print(f"peak RSS {results['peak_rss_mb']:.0f} MB"
          + "".join(f"; {n} peak GPU {s['peak_gpu_memory_mb']:.0f} MB" for n, s in cases.items()
                    if "peak_gpu_memory_mb" in s))
    out = args.out or REPO_ROOT / "bench" / "results" / f"pipeline_stages_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
