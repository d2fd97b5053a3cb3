"""Replay throughput: frames/s of `posenet-ros replay` (in-process, every frame through the node's
pipeline) against the model's plain batched forward throughput, on the same machine in one run.

    python bench/replay_throughput.py [--backbone resnet18] [--size 224] [--samples 32] [--frames 200]
                                      [--width 640] [--height 480] [--device cpu] [--runtime torch]
                                      [--batches 1 64]

1. Renders a synthetic test sequence of FRAMES frames at WIDTHxHEIGHT and writes it with
   `posenet-ros make-bag` (mcap, raw rgb8 images).
2. An untrained BACKBONE checkpoint (resize SIZE, centre crop SIZE) with SAMPLES Monte-Carlo samples.
3. Plain batched forward: the model on batches of 32 random SIZExSIZE images, dropout off, under
   inference_mode (frames/s over 3 passes after a warm-up); also the same per frame (batch 1) with
   the Monte-Carlo head, which is what replay runs for each frame.
4. `replay` of the bag (reading, decoding, preprocessing, network, covariance, loop closure, output
   messages) with each of BATCHES frames per network call (`replay --batch`), frames/s over the whole
   bag; then the report writing time separately. RUNTIME onnx / torchscript: the exported network.
   Peak RSS of this process and, on CUDA, peak GPU memory.

The overhead of replay is 1 - replay fps / plain batched forward fps. Prints a table and writes JSON
(default bench/results/replay_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

from posenet_ros.core.device import resolve_device
from posenet_ros.data.synthetic import SceneConfig, write_synthetic_scene
from posenet_ros.evaluation.replay import replay
from posenet_ros.inference.loop_closure import LoopClosureConfig
from posenet_ros.inference.uncertainty import UncertaintyConfig, estimate
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.node.dds_node import load_settings
from posenet_ros.runtime.checkpoint import save_checkpoint, store_calibration
from posenet_ros.runtime.export import export_model
from posenet_ros.tools.make_bag import make_bag

REPO_ROOT = Path(__file__).resolve().parents[1]


def forward_fps(model: PoseNet, size: int, batch: int, samples: int, device: torch.device,
                passes: int = 3) -> float:
    """Frames/s of `model` on batches of `batch` images: plain forward (samples 0) or MC estimate."""
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    config = UncertaintyConfig(mc_samples=samples)
    frames = max(64, batch * 2)

    def run() -> None:
        with torch.inference_mode():
            for i in range(frames // batch):
                if samples == 0:
                    model(images)
                else:
                    estimate(model, images, config, seed=i)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up
    best = 0.0
    for _ in range(passes):
        start = time.perf_counter()
        run()
        best = max(best, (frames // batch) * batch / (time.perf_counter() - start))
    return best


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
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx", "torchscript"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "bench" / "results" / "replay_throughput.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        scene = SceneConfig(width=args.width, height=args.height, frames_per_sequence=args.frames,
                            train_sequences=1, test_sequences=1, outside_sequences=0, val_sequences=0,
                            variations=[])
        write_synthetic_scene(scene, "7scenes", root / "scene", progress=False)
        make_bag(root / "scene", root / "bag", splits=["test"], with_depth=False, progress=False)
        config = {"model": {"backbone": args.backbone}, "data": {"resize": args.size, "crop": args.size}}
        model = PoseNet(ModelConfig(**config["model"])).eval()
        with torch.no_grad():
            model.feature_covariance.copy_(torch.eye(model.head_dim))
        path = save_checkpoint(root / "model.safetensors", model, config, torch.zeros(0, 7).numpy())
        store_calibration(path, UncertaintyConfig(mc_samples=args.samples), LoopClosureConfig())
        model = model.to(device)

        batched = forward_fps(model, args.size, 32, 0, device)
        per_frame_mc = forward_fps(model, args.size, 1, args.samples, device)
        if args.runtime != "torch":
            export_model(path, args.runtime)
        settings = load_settings(REPO_ROOT / "config" / "relocalize.yaml", str(path),
                                 [f"device:={device}", f"runtime:={args.runtime}"])
        by_batch = {}
        for batch in args.batches:
            start = time.perf_counter()
            metrics = replay(root / "bag", root / f"out{batch}", settings, progress=False, batch_size=batch)
            by_batch[batch] = {"replay_fps": metrics["throughput_fps"], "latency_ms": metrics["latency_ms"],
                               "outputs_and_report_s": time.perf_counter() - start - metrics["elapsed_s"]}
    for values in by_batch.values():
        values["overhead_vs_plain_batched"] = 1.0 - values["replay_fps"] / batched
        values["overhead_vs_per_frame_mc"] = 1.0 - values["replay_fps"] / per_frame_mc
    results = {
        "device": str(device), "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "backbone": args.backbone, "size": args.size,
        "mc_samples": args.samples, "frames": metrics["frames"], "image": f"{args.width}x{args.height} rgb8",
        "runtime": args.runtime, "plain_batched_forward_fps": batched,
        "per_frame_mc_forward_fps": per_frame_mc,
        "replay_by_batch": by_batch, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_memory_mb": (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                               else None),
    }
    rows = [("plain batched forward (batch 32, no MC)", f"{batched:.1f} frames/s"),
            (f"per-frame forward + {args.samples} MC samples (batch 1)", f"{per_frame_mc:.1f} frames/s")]
    for batch, values in by_batch.items():
        rows += [(f"replay --batch {batch}, whole pipeline", f"{values['replay_fps']:.1f} frames/s"),
                 ("  overhead vs plain batched / per-frame MC forward",
                  f"{100 * values['overhead_vs_plain_batched']:.1f}% / "
                  f"{100 * values['overhead_vs_per_frame_mc']:.1f}%"),
                 ("  per-frame latency p50 / p99",
                  f"{values['latency_ms']['p50']:.1f} / {values['latency_ms']['p99']:.1f} ms"),
                 ("  metrics, CSV, output bag, HTML report", f"{values['outputs_and_report_s']:.1f} s")]
    rows += [("peak RSS", f"{results['peak_rss_mb']:.0f} MB")]
    if results["peak_gpu_memory_mb"] is not None:
        rows += [("peak GPU memory", f"{results['peak_gpu_memory_mb']:.0f} MB")]
    width = max(len(name) for name, _ in rows)
    print(f"{args.backbone} {args.size}x{args.size}, {args.frames} frames {results['image']}, {device}, "
          f"{results['threads']} threads, runtime {args.runtime}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
