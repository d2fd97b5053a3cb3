"""End-to-end latency of the relocalization node over Cyclone DDS, and the cost of the DDS path.

    python bench/node_latency.py [--backbone resnet18] [--size 224] [--samples 32] [--frames 100]
                                 [--width 640] [--height 480] [--device cpu] [--runtime torch]
                                 [--rate 60] [--seconds 10] [--overload-factor 5] [--overload-seconds 20]

1. DDS cost of one WIDTHxHEIGHT rgb8 sensor_msgs/Image: CDR serialise and deserialise (p50/p99), and
   publish -> callback between two processes on loopback (a child echoes each image's stamp back as
   a PoseWithCovarianceStamped; half the round trip is reported as one way).
2. The node as users run it (`posenet-ros node`, a separate process, untrained BACKBONE at SIZE with
   SAMPLES Monte-Carlo samples, calibrated placeholder scales): each image is published after the
   previous pose came back, and the latency is image publish -> pose callback in this process
   (one clock), p50/p99 over FRAMES frames after 5 warm-up frames. The node's own per-stage
   timings are not included separately (bench/pipeline_stages.py has them): this is the figure a
   subscriber sees. RUNTIME onnx or torchscript: the node runs the network exported by
   `posenet-ros export` (param runtime:=...).
3. Throughput of the full node pipeline: images published at RATE Hz for SECONDS s (the node keeps
   the newest unprocessed frame and drops older ones, as a live camera needs); frames/s = poses
   received / time between the first and the last; the node process's peak RSS.
4. The node under overload (what the test suite's soak checks by counts only,
   test/node/test_dds_node.py): images published at OVERLOAD_FACTOR times the node's throughput (one
   over the median image -> pose latency of 2.) for OVERLOAD_SECONDS s. Latency p50 / p99 / max of the
   answered frames sent after the first OVERLOAD_WARMUP s, and the node's resident memory then and at
   the end. A correct node keeps the newest frame and drops older ones, so its latency stays near one
   frame's processing time and its memory flat; an unbounded queue would grow both with the backlog.
   The former soak test's bounds (max latency 2 s, RSS growth 50 MB) are reported beside the figures.

Prints a table and writes JSON (default bench/results/node_latency.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from posenet_ros.inference.loop_closure import LoopClosureConfig
from posenet_ros.inference.uncertainty import UncertaintyConfig
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.ros.conversions import (
    RosbagsTypes,
    image_msg,
    ns_to_stamp,
    pose_with_covariance_stamped,
    stamp_to_ns,
)
from posenet_ros.ros.dds import DdsNode, loopback_config
from posenet_ros.ros.dds_types import deserialize, serialize, to_dds
from posenet_ros.runtime.checkpoint import save_checkpoint, store_calibration
from posenet_ros.runtime.export import export_model

REPO_ROOT = Path(__file__).resolve().parents[1]
POSE_TYPE = "geometry_msgs/msg/PoseWithCovarianceStamped"


def percentiles(values_s: list[float]) -> dict[str, float]:
    values = 1e3 * np.asarray(values_s)
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
            "n": int(values.size)}


def echo_child(domain: int) -> None:
    """Answer every image on /bench/image with a pose carrying its stamp on /bench/pose."""
    types = RosbagsTypes()
    with DdsNode("bench_echo", domain_id=domain, config=loopback_config()) as node:
        publisher = node.publisher("/bench/pose", POSE_TYPE, "default")

        def on_image(msg) -> None:
            answer = pose_with_covariance_stamped(types, stamp_to_ns(msg.header.stamp), "map", np.zeros(3),
                                                  np.array([1.0, 0, 0, 0]), np.eye(6))
            publisher.publish(answer)

        node.subscription("/bench/image", "sensor_msgs/msg/Image", "sensor_data", on_image)
        sys.stdin.read()


class Answers:
    """Stamps (ns) of received poses with their arrival time."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        self.condition = threading.Condition()

    def __call__(self, msg) -> None:
        with self.condition:
            self.arrived[stamp_to_ns(msg.header.stamp)] = time.perf_counter()
            self.condition.notify_all()

    def wait(self, stamp_ns: int, timeout: float) -> float | None:
        with self.condition:
            self.condition.wait_for(lambda: stamp_ns in self.arrived, timeout)
            return self.arrived.get(stamp_ns)


def round_trips(publisher, msg, answers: Answers, frames: int, warmup: int = 5,
                timeout: float = 60.0) -> list[float]:
    """Publish `msg` with fresh stamps one at a time; seconds from publish to answer (after warm-up)."""
    latencies = []
    for i in range(frames + warmup):
        stamp_ns = 1_700_000_000_000_000_000 + i * 100_000_000
        sec, nanosec = ns_to_stamp(stamp_ns)
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
        arrived = None
        for _ in range(int(timeout)):  # best effort: resend if the first was lost during discovery
            sent = time.perf_counter()
            publisher.publish(msg)
            arrived = answers.wait(stamp_ns, 1.0 if i < warmup else timeout)
            if arrived is not None:
                break
        if arrived is None:
            raise TimeoutError(f"no answer to frame {i}")
        if i >= warmup:
            latencies.append(arrived - sent)
        time.sleep(0.01)
    return latencies


def throughput(publisher, msg, answers: Answers, rate_hz: float, seconds: float) -> dict[str, float]:
    """Publish `msg` at `rate_hz` for `seconds` (fresh stamps); poses answered per second."""
    first_stamp = 1_800_000_000_000_000_000
    count = int(rate_hz * seconds)
    start = time.perf_counter()
    for i in range(count):
        sec, nanosec = ns_to_stamp(first_stamp + i * int(1e9 / rate_hz))
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
        publisher.publish(msg)
        time.sleep(max(0.0, start + (i + 1) / rate_hz - time.perf_counter()))
    time.sleep(1.0)  # the last frame's answer
    with answers.condition:
        arrivals = sorted(t for stamp, t in answers.arrived.items() if stamp >= first_stamp)
    fps = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
    return {"published": count, "answered": len(arrivals), "rate_hz": rate_hz, "frames_per_s": fps}


def _proc_status_mb(pid: int, key: str) -> float:
    """A memory figure of a running process from Linux /proc/PID/status, MB (NaN elsewhere)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return float("nan")
    for line in status.read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a running process (VmHWM), MB."""
    return _proc_status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    """Resident memory of a running process now (VmRSS), MB."""
    return _proc_status_mb(pid, "VmRSS")


# The former soak test's bounds (test_node_dds.py before the suite asserted counts only).
OVERLOAD_BOUNDS = {"max_latency_ms": 2000.0, "rss_growth_mb": 50.0}


def overload(publisher, msg, answers: Answers, period_s: float, seconds: float, warmup_s: float,
             pid: int) -> dict[str, object]:
    """Publish `msg` every `period_s` for `seconds` (fresh stamps): latency of the answered frames
    sent after `warmup_s`, and the node's resident memory at `warmup_s` and at the end."""
    first_stamp = 1_900_000_000_000_000_000
    sent_at: dict[int, float] = {}
    start = time.perf_counter()
    rss_start, i = None, 0
    while (now := time.perf_counter()) < start + seconds:
        stamp_ns = first_stamp + i * 1_000_000
        msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_stamp(stamp_ns)
        sent_at[stamp_ns] = now
        publisher.publish(msg)
        i += 1
        if rss_start is None and now > start + warmup_s:
            rss_start = rss_mb(pid)
        time.sleep(max(0.0, start + i * period_s - time.perf_counter()))
    rss_end = rss_mb(pid)
    rss_start = rss_end if rss_start is None else rss_start
    time.sleep(1.0)  # the last frame's answer
    with answers.condition:
        arrived = {stamp: t for stamp, t in answers.arrived.items() if stamp in sent_at}
    latencies = [arrived[stamp] - sent_at[stamp] for stamp in arrived
                 if sent_at[stamp] > start + warmup_s]
    nan = float("nan")
    latency = percentiles(latencies) if latencies else {"p50_ms": nan, "p99_ms": nan, "n": 0}
    latency["max_ms"] = 1e3 * max(latencies) if latencies else nan
    growth = rss_end - rss_start
    return {"period_ms": 1e3 * period_s, "seconds": seconds, "published": i, "answered": len(arrived),
            "latency": latency, "rss_start_mb": rss_start, "rss_end_mb": rss_end, "rss_growth_mb": growth,
            "former_test_bounds": OVERLOAD_BOUNDS,
            "within_former_test_bounds": bool(latency["max_ms"] < OVERLOAD_BOUNDS["max_latency_ms"]
                                              and growth < OVERLOAD_BOUNDS["rss_growth_mb"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx", "torchscript"])
    parser.add_argument("--rate", type=float, default=60.0, help="input rate of the throughput phase, Hz")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the throughput phase")
    parser.add_argument("--overload-factor", type=float, default=5.0,
                        help="input rate of the overload phase, in multiples of the node's throughput")
    parser.add_argument("--overload-seconds", type=float, default=20.0,
                        help="length of the overload phase (0: skip it)")
    parser.add_argument("--overload-warmup", type=float, default=5.0,
                        help="seconds of the overload phase before latency and memory are measured")
    parser.add_argument("--out", type=Path, default=Path("bench/results/node_latency.json"))
    args = parser.parse_args()
    domain = 200 + os.getpid() % 30
    env = dict(os.environ, CYCLONEDDS_URI=loopback_config(), ROS_DOMAIN_ID=str(domain))
    types = RosbagsTypes()
    rgb = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    msg = image_msg(types, rgb, 0, "camera", "rgb8")
    sample = to_dds(msg, "sensor_msgs/msg/Image")
    serialise_s, deserialise_s = [], []
    for _ in range(200):
        start = time.perf_counter()
        data = serialize(sample)
        middle = time.perf_counter()
        deserialize(data, "sensor_msgs/msg/Image")
        serialise_s.append(middle - start)
        deserialise_s.append(time.perf_counter() - middle)
    results: dict = {"image": f"{args.width}x{args.height} rgb8 ({len(data)} bytes CDR)",
                     "serialise": percentiles(serialise_s), "deserialise": percentiles(deserialise_s)}

    answers, poses = Answers(), Answers()
    with DdsNode("bench", domain_id=domain, config=loopback_config()) as node:
        node.subscription("/bench/pose", POSE_TYPE, "default", answers)
        node.subscription("/relocalized_pose", POSE_TYPE, "default", poses)
        child = subprocess.Popen([sys.executable, __file__, "--echo-child", str(domain)], env=env,
                                 stdin=subprocess.PIPE, cwd=REPO_ROOT)
        try:
            bench_images = node.publisher("/bench/image", "sensor_msgs/msg/Image", "sensor_data")
            bench_images.wait_for_subscribers(1, 60)
            trips = round_trips(bench_images, msg, answers, args.frames)
            results["dds_one_way"] = percentiles([t / 2 for t in trips])
        finally:
            child.stdin.close()
            child.wait(60)

        with tempfile.TemporaryDirectory() as folder:
            torch.manual_seed(0)
            config = {"model": {"backbone": args.backbone, "aleatoric": "per_axis"},
                      "data": {"resize": args.size, "crop": [args.size, args.size]}}
            model = PoseNet(ModelConfig(**config["model"]))
            with torch.no_grad():
                model.feature_covariance.copy_(torch.eye(model.head_dim))
            map_poses = np.array([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
            path = save_checkpoint(Path(folder) / "model.safetensors", model, config, map_poses)
            store_calibration(path, UncertaintyConfig(mc_samples=args.samples), LoopClosureConfig())
            if args.runtime != "torch":
                export_model(path, args.runtime)
            node_process = subprocess.Popen(
                [sys.executable, "-m", "posenet_ros.cli", "node", "--model", str(path), "--params",
                 str(REPO_ROOT / "config" / "relocalize.yaml"), "--param", f"device:={args.device}",
                 "--param", f"runtime:={args.runtime}", "--param", "base_frame:=",  # no TF: camera poses
                 "--param", "publish_unknown:=true"],
                env=env, cwd=REPO_ROOT)
            try:
                camera = node.publisher("/camera/image_raw", "sensor_msgs/msg/Image", "sensor_data")
                camera.wait_for_subscribers(1, 120)
                trips = round_trips(camera, msg, poses, args.frames)
                results["node_image_to_pose"] = percentiles(trips)
                results["node_throughput"] = throughput(camera, msg, poses, args.rate, args.seconds)
                results["node_peak_rss_mb"] = peak_rss_mb(node_process.pid)
                if args.overload_seconds > 0:
                    period_s = results["node_image_to_pose"]["p50_ms"] / 1e3 / args.overload_factor
                    results["node_overload"] = {"factor": args.overload_factor, **overload(
                        camera, msg, poses, period_s, args.overload_seconds, args.overload_warmup,
                        node_process.pid)}
            finally:
                node_process.terminate()
                node_process.wait(60)

    results.update(backbone=args.backbone, size=args.size, mc_samples=args.samples, device=args.device,
                   runtime=args.runtime,
                   torch_threads=torch.get_num_threads(), machine=platform.processor() or platform.machine(),
                   cpus=os.cpu_count())
    print(f"{'stage':<34}{'p50 ms':>10}{'p99 ms':>10}")
    for key in ("serialise", "deserialise", "dds_one_way", "node_image_to_pose"):
        print(f"{key:<34}{results[key]['p50_ms']:>10.2f}{results[key]['p99_ms']:>10.2f}")
    rate = results["node_throughput"]
    print(f"node throughput at {rate['rate_hz']:.0f} Hz input: {rate['frames_per_s']:.1f} frames/s "
          f"({rate['answered']} of {rate['published']} answered); node peak RSS "
          f"{results['node_peak_rss_mb']:.0f} MB")
    if "node_overload" in results:
        load = results["node_overload"]
        bounds = load["former_test_bounds"]
        latency = load["latency"]
        print(f"node under overload ({load['factor']:.0f}x its throughput, a frame every "
              f"{load['period_ms']:.1f} ms for {load['seconds']:.0f} s; {load['answered']} of "
              f"{load['published']} answered): latency p50 {latency['p50_ms']:.0f} ms, p99 "
              f"{latency['p99_ms']:.0f} ms, max {latency['max_ms']:.0f} ms (former test bound "
              f"{bounds['max_latency_ms']:.0f} ms); RSS {load['rss_start_mb']:.0f} -> "
              f"{load['rss_end_mb']:.0f} MB ({load['rss_growth_mb']:+.1f}, "
              f"bound {bounds['rss_growth_mb']:.0f} MB)")
    print(f"({results['image']}; node: {args.backbone} {args.size}x{args.size}, {args.samples} MC samples, "
          f"{args.device}, runtime {args.runtime}, {os.cpu_count()} CPUs)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo-child":
        echo_child(int(sys.argv[2]))
    else:
        main()
