"""Shared by the tests that start `posenet-ros` processes over Cyclone DDS (node/test_dds_node.py,
evaluation/test_replay.py): a CLI subprocess whose stderr lines are collected, domain ids that keep
parallel runs apart, a resend-until-answered helper for best-effort topics, and a random Image as a
Cyclone DDS object (ros/test_dds.py, ros/test_dds_types.py).

Cross-process waits use readiness lines and generous timeouts, never fixed sleeps.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from posenet_ros.ros.dds import loopback_config
from posenet_ros.ros.dds_types import dds_type

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS = REPO_ROOT / "config" / "relocalize.yaml"
TIMEOUT_S = 60.0
POSE_TYPE = "geometry_msgs/msg/PoseWithCovarianceStamped"


def domain_id(offset: int) -> int:
    """A DDS domain id (100..199) from the pid and `offset`, so that parallel runs and tests do not meet."""
    return 100 + (os.getpid() * 3 + offset) % 100


class Process:
    """A CLI subprocess whose stderr lines are collected by a thread."""

    def __init__(self, args: list[str], domain: int) -> None:
        env = dict(os.environ, CYCLONEDDS_URI=loopback_config(), ROS_DOMAIN_ID=str(domain),
                   PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen([sys.executable, "-m", "posenet_ros.cli", *args], cwd=REPO_ROOT,
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line)
            self._queue.put(line)

    def wait_for_line(self, text: str, timeout: float = TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.popen.poll() is not None and self._queue.empty():
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r}; stderr so far:\n{''.join(self.lines)}")

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            return self.popen.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


def start_node(model: Path, domain: int, *params: str) -> Process:
    """`posenet-ros node` on the CPU with config/relocalize.yaml and `params`, once it says it is ready;
    base_frame "" (the camera's pose, no TF) and every pose published (publish_unknown:=true) unless
    `params` set them: the tests of frames and of the pose policy do (node/test_dds_frames.py,
    node/test_pose_policy.py)."""
    node = Process(["node", "--model", str(model), "--params", str(PARAMS), "--param", "device:=cpu",
                    "--param", "base_frame:=", "--param", "publish_unknown:=true", *params], domain)
    node.wait_for_line("node: ready")
    return node


def send_until(publish: Callable[[int], None], condition: threading.Condition, done: Callable[[], bool],
               resend_s: float = 1.0) -> None:
    """Call `publish(k)` for attempts k = 0, 1, ... every `resend_s` until `done()`: best-effort
    samples may be lost, e.g. before the node's readers have discovered this process's writers
    (`wait_for_subscribers` only says that this process's writers matched them)."""
    deadline = time.monotonic() + TIMEOUT_S
    k = 0
    while time.monotonic() < deadline:
        publish(k)
        k += 1
        with condition:
            if condition.wait_for(done, resend_s):
                return
    raise AssertionError("no answer from the node")


def stamp_to_ns_dict(value: dict) -> int:
    """A `header.stamp` printed by `posenet-ros echo --format json`, in nanoseconds."""
    return int(value["sec"]) * 1_000_000_000 + int(value["nanosec"])


def dds_image(height: int, width: int, seed: int, stamp_sec: int = 0) -> Any:
    """A random rgb8 Image of `height` x `width` px, frame 'cam', stamped `stamp_sec` s and
    1000 * `seed` + 7 ns (so images of different seeds differ in their stamps too)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = dds_type("sensor_msgs/msg/Image")(
        height=height, width=width, encoding="rgb8", is_bigendian=0, step=3 * width, data=pixels
    )
    image.header.stamp.sec = stamp_sec
    image.header.stamp.nanosec = 1000 * seed + 7
    image.header.frame_id = "cam"
    return image
