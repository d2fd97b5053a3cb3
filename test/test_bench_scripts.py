"""The benchmark scripts still run against the package (tiny settings; their timings are not checked:
benchmarks are scripts, measured on purpose, not in the test suite)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
