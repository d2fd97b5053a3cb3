"""The benchmark scripts (bench/*.py) still run against the package (tiny settings; their timings are
not checked: benchmarks are scripts, measured on purpose, not in the test suite). All slow: each
starts Python processes that import torch, and node_latency.py a node."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_script(name: str, *args: str) -> None:
    completed = subprocess.run([sys.executable, str(REPO / "bench" / name), *args], cwd=REPO,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_pipeline_stages_reports_every_stage_for_each_runtime(tmp_path):
    out = tmp_path / "stages.json"
    run_script("pipeline_stages.py", "--backbone", "resnet_tiny", "--size", "32", "--samples", "4",
               "--frames", "2", "--width", "64", "--height", "48", "--device", "cpu", "--out", str(out))
    results = json.loads(out.read_text())
    assert set(results["cases"]) == {"torch fp32", "onnx fp32", "torchscript fp32"}
    for case in results["cases"].values():
        for stage in ("decode", "preprocess", "forward", "mc_sampling", "covariance", "smoothing", "publish",
                      "process"):
            assert 0 < case[stage]["p50_ms"] <= case[stage]["p99_ms"]
        # The exported runtimes give PyTorch's poses.
        assert case["difference_from_first_case"]["max_position_m"] < 1e-4
    assert results["peak_rss_mb"] > 0


def test_replay_throughput_runs_batched_and_per_frame(tmp_path):
    out = tmp_path / "replay.json"
    run_script("replay_throughput.py", "--backbone", "resnet_tiny", "--size", "32", "--samples", "4",
               "--frames", "12", "--width", "64", "--height", "48", "--batches", "1", "5", "--out", str(out))
    results = json.loads(out.read_text())
    assert results["frames"] == 12 and set(results["replay_by_batch"]) == {"1", "5"}
    assert all(values["replay_fps"] > 0 for values in results["replay_by_batch"].values())


def test_dds_serialization_times_both_paths(tmp_path):
    out = tmp_path / "dds.json"
    run_script("dds_serialization.py", "--width", "64", "--height", "48", "--repeats", "5",
               "--generic-repeats", "2", "--out", str(out))
    results = json.loads(out.read_text())
    assert set(results["cases"]) == {"fast path", "generic sequence[uint8]"}
    for case in results["cases"].values():
        for step in ("serialise", "deserialise"):
            assert 0 < case[step]["p50_ms"] <= case[step]["p99_ms"]


def test_node_latency_reports_the_node_under_overload(tmp_path):
    out = tmp_path / "node.json"
    run_script("node_latency.py", "--backbone", "resnet_tiny", "--size", "32", "--samples", "4",
               "--frames", "3", "--width", "64", "--height", "48", "--rate", "20", "--seconds", "1",
               "--overload-seconds", "2", "--overload-warmup", "0.5", "--out", str(out))
    results = json.loads(out.read_text())
    assert results["node_image_to_pose"]["n"] == 3 and results["node_throughput"]["answered"] > 0
    load = results["node_overload"]
    assert load["factor"] == 5 and 0 < load["answered"] <= load["published"]
    assert 0 < load["latency"]["p50_ms"] <= load["latency"]["max_ms"] and load["rss_end_mb"] > 0


def test_train_throughput_times_the_network_and_real_frames_from_disk(tmp_path):
    scene = tmp_path / "scene"
    synth = [sys.executable, "-m", "posenet_ros.cli", "synth", "--quiet", str(scene), "width=64", "height=48",
             "frames_per_sequence=48", "train_sequences=1", "test_sequences=0", "outside_sequences=0",
             "variations=[]"]
    assert subprocess.run(synth, cwd=REPO, timeout=300).returncode == 0
    sequence = scene / "seq-01"  # a 7-Scenes sequence folder, with the K of camera-intrinsics.txt
    camera = json.loads((scene / "camera.json").read_text())
    (sequence / "camera-intrinsics.txt").write_text(
        f"{camera['fx']} 0 {camera['cx']}\n0 {camera['fy']} {camera['cy']}\n0 0 1\n")
    out = tmp_path / "throughput.json"
    run_script("train_throughput.py", "--data", str(sequence), "--backbone", "resnet_tiny", "--resize", "24",
               "--crop", "20", "28", "--batch", "8", "--steps", "2", "--threads", "1", "--workers", "0", "1",
               "--epochs", "1", "--uncached", "--device", "cpu", "--out", str(out))
    results = json.loads(out.read_text())
    assert results["frames"] == 48  # the test blocks (frames 75-99, 175-199, ...) start after 48 frames
    assert [(row["threads"], row["workers"]) for row in results["rows"]] == [(1, 0), (1, 1)]
    for row in results["rows"]:
        for key in ("network_images_per_s", "warm_images_per_s", "uncached_images_per_s",
                    "cache_build_frames_per_s"):
            assert row[key] > 0


def test_temporal_step_times_the_learned_and_the_odometry_aided_steps(tmp_path):
    out = tmp_path / "temporal_step.json"
    run_script("temporal_step.py", "--backbone", "resnet_tiny", "--size", "32", "--frames", "5",
               "--device", "cpu", "--out", str(out))
    results = json.loads(out.read_text())
    for step in ("cnn_forward_ms", "temporal_step_ms", "odometry_step_ms", "learned_motion_step_ms"):
        assert 0 < results[step]["p50"] <= results[step]["p99"]
