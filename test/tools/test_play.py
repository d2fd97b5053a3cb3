"""tools/play.py: ``posenet-ros play`` over Cyclone DDS (real processes, loopback): errors, the round
trip to ``posenet-ros echo`` in other processes, lock-step with a node, and in-process counts. (echo
alone: test_echo.py.)

Every DDS participant runs on the loopback interface only (``loopback_config()``: passed as
``config=`` in this process, as ``CYCLONEDDS_URI`` to child processes) on a domain id derived from
the pid and the test, and the tests wait on events with generous timeouts; nothing asserts on timing.

Discovery is not instantaneous and best-effort samples sent before the reader has discovered the
writer are lost, so the round trip plays the bag in a loop and checks that every message of the
bag arrived (each one equal to the bag's); the lock-step test orders discovery so that nothing can
be lost (see there).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from posenet_ros.cli import main
from posenet_ros.ros.conversions import RosbagsTypes, image_msg, pose_stamped, stamp_to_ns
from posenet_ros.ros.dds import DdsNode, loopback_config
from posenet_ros.ros.dds_types import dds_type
from posenet_ros.tools.echo import (
    echo,
    message_to_dict,
)
from posenet_ros.tools.play import open_bag, play

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60.0
IMAGE_TOPIC = "/camera/image_raw"
POSE_TOPIC = "/ground_truth/pose"
ANSWER_TOPIC = "/relocalized_pose"
FRAMES = 5
HEIGHT, WIDTH = 24, 32
T0_NS = 1_700_000_000 * 10**9 + 123_456_789  # stamp of the first frame
PERIOD_NS = 20_000_000  # recorded 50 Hz, so a pass of the bag takes 0.1 s at rate 1


def _domain(test: int) -> int:
    """A domain id (16..215) from the pid and the test, so that parallel runs and tests do not meet."""
    return 16 + (os.getpid() + 37 * test) % 200


def _child_env() -> dict[str, str]:
    env = dict(
        os.environ,
        CYCLONEDDS_URI=loopback_config(),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    env.pop("ROS_DOMAIN_ID", None)
    return env


class _Child:
    """A ``python -m posenet_ros.cli`` child process whose output is collected by threads.

    The child starts with SIGINT at its default action, as a shell's foreground job does, so that
    Python turns SIGINT into KeyboardInterrupt (Ctrl-C). Had the test run inherited SIGINT ignored
    (a background job of a non-interactive shell), the child would inherit that and ignore it too.
    """

    def __init__(self, *args: str) -> None:
        inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # reset to default by exec
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "posenet_ros.cli", *args],
                cwd=REPO_ROOT,
                env=_child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        finally:
            signal.signal(signal.SIGINT, inherited)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._stderr_lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=self._collect, args=(self.process.stdout, self.stdout, None), daemon=True
            ),
            threading.Thread(
                target=self._collect, args=(self.process.stderr, self.stderr, self._stderr_lines), daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _collect(stream: Any, lines: list[str], notify: queue.SimpleQueue[str] | None) -> None:
        for line in stream:
            lines.append(line)
            if notify is not None:
                notify.put(line)

    def wait_for_stderr(self, text: str, timeout: float = TIMEOUT_S) -> None:
        """Block until a stderr line contains ``text`` (fails if the process ends or time runs out)."""
        while True:
            try:
                line = self._stderr_lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {text!r} on stderr; got {''.join(self.stderr)}") from None
            if text in line:
                return

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        for thread in self._threads:
            thread.join(timeout)
        return self.process.returncode

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------------------------------------
# A small bag


def _pixels(index: int) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _write_bag(path: Path, storage: StoragePlugin, frames: int = FRAMES) -> None:
    """``frames`` rgb8 Images on IMAGE_TOPIC and as many PoseStamped on POSE_TOPIC, interleaved."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    types = RosbagsTypes(store)
    with Writer(path, version=9, storage_plugin=storage) as writer:
        images = writer.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=store)
        poses = writer.add_connection(POSE_TOPIC, "geometry_msgs/msg/PoseStamped", typestore=store)
        for i in range(frames):
            stamp = T0_NS + i * 33_333_333
            recorded = T0_NS + i * PERIOD_NS
            image = image_msg(types, _pixels(i), stamp, "camera", "rgb8")
            writer.write(images, recorded, store.serialize_cdr(image, "sensor_msgs/msg/Image"))
            quat = np.array([1.0, 0.1 * i, -0.2, 0.05])
            pose = pose_stamped(types, stamp, "map", [0.1 * i, -1.0 / 3.0, 2.5e-7 * i], quat)
            writer.write(poses, recorded + 1000, store.serialize_cdr(pose, "geometry_msgs/msg/PoseStamped"))


def _bag_dicts(path: Path, topic: str) -> dict[int, dict[str, Any]]:
    """header stamp (ns) -> message_to_dict of every message of ``topic`` in the bag."""
    with open_bag(path) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        messages = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(connections)]
    return {stamp_to_ns(msg.header.stamp): message_to_dict(msg) for msg in messages}


@pytest.fixture(params=[StoragePlugin.SQLITE3, StoragePlugin.MCAP], ids=["sqlite3", "mcap"])
def bag(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, StoragePlugin]:
    path = tmp_path / "bag"
    _write_bag(path, request.param)
    return path, request.param


# ---------------------------------------------------------------------------------------------
# errors


def test_play_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag_path = tmp_path / "bag"
    _write_bag(bag_path, StoragePlugin.SQLITE3, frames=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        play(tmp_path / "missing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a rosbag2"):
        play(tmp_path / "folder")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a rosbag2"):
        play(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="ROS 1"):
        (tmp_path / "old.bag").write_bytes(b"#ROSBAG V2.0\n")
        play(tmp_path / "old.bag")
    with pytest.raises(ValueError, match="rate"):
        play(bag_path, rate=-1.0)
    with pytest.raises(ValueError, match="has no header"):
        play(
            bag_path,
            step_topic=ANSWER_TOPIC,
            step_type="std_msgs/msg/Bool",
            domain_id=_domain(9),
            config=loopback_config(),
        )
    with pytest.raises(ValueError) as error:
        play(bag_path, topics=["/camera/depth"])
    message = str(error.value)
    assert "/camera/depth not in bag" in message
    assert f"{IMAGE_TOPIC} [sensor_msgs/msg/Image]" in message
    assert f"{POSE_TOPIC} [geometry_msgs/msg/PoseStamped]" in message

    empty = tmp_path / "empty"
    with Writer(empty, version=9) as writer:
        writer.add_connection(
            IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=get_typestore(Stores.ROS2_HUMBLE)
        )
    with pytest.raises(ValueError, match="empty"):
        play(empty)

    # the CLI: exit code 2 and one line naming the problem
    capsys.readouterr()
    assert main(["play", str(tmp_path / "missing")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"posenet-ros play: error: bag {tmp_path / 'missing'} does not exist"
    )
    assert main(["play", str(bag_path), "--topics", "/nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("posenet-ros play: error: topic /nope not in bag") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# play -> echo across processes


def test_play_to_echo_round_trip(bag: tuple[Path, StoragePlugin], tmp_path: Path) -> None:
    """``play --loop`` in a child; ``echo`` of the images in another child (type given for sqlite3,
    discovered for mcap), ``echo`` of the poses in a thread here (type discovered); Ctrl-C ends play."""
    bag_path, storage = bag
    discover = storage == StoragePlugin.MCAP
    domain = _domain(4 if discover else 3)
    images_out, poses_out = tmp_path / "images.jsonl", tmp_path / "poses.yaml"
    image_echo = _Child(
        "echo",
        IMAGE_TOPIC,
        *([] if discover else ["--type", "sensor_msgs/msg/Image"]),
        "--qos",
        "sensor_data",
        "--count",
        str(2 * FRAMES),
        "--timeout",
        str(TIMEOUT_S),
        "--wait-timeout",
        str(TIMEOUT_S),
        "--format",
        "json",
        "--output",
        str(images_out),
        "--domain-id",
        str(domain),
    )
    pose_count: list[int] = []
    pose_echo = threading.Thread(
        target=lambda: pose_count.append(
            echo(
                POSE_TOPIC,
                count=2 * FRAMES,
                timeout=TIMEOUT_S,
                wait_timeout=TIMEOUT_S,
                domain_id=domain,
                fmt="yaml",
                output=poses_out,
                config=loopback_config(),
            )
        ),
        daemon=True,
    )
    player = None
    try:
        pose_echo.start()
        if not discover:
            image_echo.wait_for_stderr(f"echo: subscribed to {IMAGE_TOPIC} [sensor_msgs/msg/Image]")
        player = _Child(
            "play",
            str(bag_path),
            "--loop",
            "--wait-subscribers",
            "1",
            "--wait-timeout",
            str(TIMEOUT_S),
            "--domain-id",
            str(domain),
        )
        if discover:
            image_echo.wait_for_stderr(f"echo: subscribed to {IMAGE_TOPIC} [sensor_msgs/msg/Image]")
        assert image_echo.wait() == 0, "".join(image_echo.stderr)
        pose_echo.join(TIMEOUT_S)
        assert not pose_echo.is_alive() and pose_count == [2 * FRAMES]
        assert player.process.poll() is None, "".join(player.stderr)  # still looping
        player.process.send_signal(signal.SIGINT)
        assert player.wait() == 130
        assert "posenet-ros play: interrupted" in "".join(player.stderr)
    finally:
        image_echo.stop()
        if player is not None:
            player.stop()

    expected_images = _bag_dicts(bag_path, IMAGE_TOPIC)
    images = [json.loads(line) for line in images_out.read_text().splitlines()]
    assert len(images) == 2 * FRAMES
    for image in images:
        assert image == expected_images[stamp_to_ns(_Stamp(image["header"]["stamp"]))]
    assert {stamp_to_ns(_Stamp(image["header"]["stamp"])) for image in images} == set(expected_images)
    for i, stamp in enumerate(sorted(expected_images)):  # the pixels themselves, independently
        crc = zlib.crc32(_pixels(i).tobytes())
        assert expected_images[stamp]["data"] == f"<{HEIGHT * WIDTH * 3} bytes, crc32 {crc:08x}>"

    expected_poses = _bag_dicts(bag_path, POSE_TOPIC)
    text = poses_out.read_text()
    assert text.endswith("---\n")
    poses = [yaml.safe_load(doc) for doc in text.split("---\n")[:-1]]
    assert len(poses) == 2 * FRAMES
    for pose in poses:
        assert pose == expected_poses[stamp_to_ns(_Stamp(pose["header"]["stamp"]))]
    assert {stamp_to_ns(_Stamp(pose["header"]["stamp"])) for pose in poses} == set(expected_poses)
    assert expected_poses[T0_NS + 33_333_333]["pose"]["position"]["y"] == -1.0 / 3.0


class _Stamp:
    """A parsed ``header.stamp`` dict as an object with ``sec``/``nanosec``, for ``stamp_to_ns``."""

    def __init__(self, values: dict[str, int]) -> None:
        self.sec, self.nanosec = values["sec"], values["nanosec"]


# ---------------------------------------------------------------------------------------------
# lock-step


class _Answerer:
    """A participant that answers each image with a PoseWithCovarianceStamped carrying its stamp.

    Discovery is ordered so that no image can be lost: the answer publisher is created only once
    the image subscription has matched play's writer, and ``play --wait-subscribers`` waits for
    that publisher; each answer waits until its own writer has matched play's reader.
    ``lose_first``: the first image received is ignored, as a reader that discovered play's writer
    late never sees it (``received`` lists every stamp received, ``stamps`` those answered).
    """

    def __init__(self, node: DdsNode, lose_first: bool = False) -> None:
        self.node = node
        self.lose_first = lose_first
        self.received: list[int] = []
        self.stamps: list[int] = []
        self.publisher: Any = None
        self._ready = threading.Event()
        self._pose_type = dds_type("geometry_msgs/msg/PoseWithCovarianceStamped")
        self.subscription = node.subscription(
            IMAGE_TOPIC, "sensor_msgs/msg/Image", "sensor_data", self._on_image
        )
        self._thread = threading.Thread(target=self._create_publisher, daemon=True)
        self._thread.start()

    def _create_publisher(self) -> None:
        if self.subscription.wait_for_publishers(1, TIMEOUT_S):
            self.publisher = self.node.publisher(ANSWER_TOPIC, "geometry_msgs/msg/PoseWithCovarianceStamped")
            self._ready.set()

    def _on_image(self, image: Any) -> None:
        assert self._ready.wait(TIMEOUT_S) and self.publisher.wait_for_subscribers(1, TIMEOUT_S)
        self.received.append(stamp_to_ns(image.header.stamp))
        if self.lose_first and len(self.received) == 1:
            return
        self.stamps.append(stamp_to_ns(image.header.stamp))
        answer = self._pose_type(header=image.header)
        answer.pose.pose.orientation.w = 1.0
        self.publisher.publish(answer)


@pytest.mark.parametrize("lose_first", [False, True])
def test_lock_step_every_image_answered(tmp_path: Path, lose_first: bool) -> None:
    bag_path = tmp_path / "bag"
    _write_bag(bag_path, StoragePlugin.MCAP)
    domain = _domain(5)
    with DdsNode("answerer", domain_id=domain, config=loopback_config()) as node:
        answerer = _Answerer(node, lose_first)
        player = _Child(
            "play",
            str(bag_path),
            "--topics",
            IMAGE_TOPIC,
            "--step-topic",
            ANSWER_TOPIC,
            "--step-timeout",
            str(TIMEOUT_S),
            "--wait-subscribers",
            "1",
            "--wait-timeout",
            str(TIMEOUT_S),
            "--domain-id",
            str(domain),
        )
        try:
            assert player.wait() == 0, "".join(player.stderr)
        finally:
            player.stop()
    expected = [T0_NS + i * 33_333_333 for i in range(FRAMES)]
    assert answerer.stamps == expected
    # Until the first answer, play re-sends the frame waiting for it (every RESEND_S seconds).
    assert answerer.received == expected[:1] * lose_first + expected
    stderr = "".join(player.stderr)
    assert "no answer" not in stderr
    assert "".join(player.stdout).splitlines() == [
        f"published {FRAMES} messages:",
        f"  {IMAGE_TOPIC}  {FRAMES}",
    ]


def test_lock_step_without_answers_times_out_and_finishes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bag_path = tmp_path / "bag"
    _write_bag(bag_path, StoragePlugin.SQLITE3, frames=3)
    with caplog.at_level(logging.WARNING, logger="posenet_ros.tools.play"):
        counts = play(
            bag_path,
            step_topic=ANSWER_TOPIC,
            step_timeout=0.5,
            domain_id=_domain(6),
            config=loopback_config(),
        )
    assert counts == {IMAGE_TOPIC: 3, POSE_TOPIC: 3}
    warnings = [record.getMessage() for record in caplog.records if "no answer" in record.getMessage()]
    assert len(warnings) == 3 and all(ANSWER_TOPIC in warning for warning in warnings)


def test_play_in_process_rate_zero_counts(tmp_path: Path) -> None:
    """``rate=0`` with a reliable subscriber in this process: every pose arrives, counts are right."""
    bag_path = tmp_path / "bag"
    _write_bag(bag_path, StoragePlugin.MCAP)
    domain = _domain(7)
    received: list[int] = []
    done = threading.Event()

    def on_pose(msg: Any) -> None:
        received.append(stamp_to_ns(msg.header.stamp))
        if len(received) == FRAMES:
            done.set()

    with DdsNode("listener", domain_id=domain, config=loopback_config()) as node:
        node.subscription(POSE_TOPIC, "geometry_msgs/msg/PoseStamped", "default", on_pose)
        counts = play(
            bag_path,
            rate=0.0,
            topics=[POSE_TOPIC.lstrip("/")],
            domain_id=domain,
            wait_subscribers=1,
            wait_timeout=TIMEOUT_S,
            config=loopback_config(),
        )
        assert counts == {POSE_TOPIC: FRAMES}
        assert done.wait(TIMEOUT_S)
    assert received == [T0_NS + i * 33_333_333 for i in range(FRAMES)]


def test_play_skips_topics_without_dds_mapping(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A bag topic of a custom type (not in the ROS 2 Humble typestore) is skipped with a warning."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(get_types_from_msg("int32 value\nstring label", "my_pkg/msg/Custom"))
    custom_type = store.types["my_pkg/msg/Custom"]
    bag_path = tmp_path / "bag"
    with Writer(bag_path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        custom = writer.add_connection("/custom", "my_pkg/msg/Custom", typestore=store)
        flags = writer.add_connection("/flag", "std_msgs/msg/Bool", typestore=store)
        for i in range(3):
            writer.write(
                custom, T0_NS + i, store.serialize_cdr(custom_type(value=i, label="x"), "my_pkg/msg/Custom")
            )
            writer.write(
                flags,
                T0_NS + i,
                store.serialize_cdr(store.types["std_msgs/msg/Bool"](data=True), "std_msgs/msg/Bool"),
            )
    with caplog.at_level(logging.WARNING, logger="posenet_ros.tools.play"):
        counts = play(bag_path, rate=0.0, domain_id=_domain(8), config=loopback_config())
    assert counts == {"/flag": 3}
    assert any("skipping topic /custom" in record.getMessage() for record in caplog.records)
    with pytest.raises(ValueError, match="none of the topics"):
        play(bag_path, topics=["/custom"], domain_id=_domain(8), config=loopback_config())
