"""tools/echo.py: ``posenet-ros echo``'s message formatting (dicts, JSON, YAML; byte payloads as size
and CRC), DDS type names and QoS choice, the CLI's defaults, and clear failures without a publisher.
(echo receiving what ``posenet-ros play`` sends, across processes: test_play.py.)

Every DDS participant runs on the loopback interface only (``loopback_config()``) on a domain id
derived from the pid and the test; nothing asserts on timing.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
import pytest
import yaml

from posenet_ros.cli import build_parser, main
from posenet_ros.ros.conversions import RosbagsTypes, image_msg, pose_stamped
from posenet_ros.ros.dds import QOS_PROFILES, loopback_config, qos_for_topic
from posenet_ros.ros.dds_types import to_dds
from posenet_ros.tools.echo import (
    FORMATS,
    MAX_LISTED_BYTES,
    echo,
    format_message,
    message_to_dict,
    ros_type_from_dds_name,
)
from posenet_ros.tools.play import DEFAULT_STEP_TYPE

IMAGE_TOPIC = "/camera/image_raw"
POSE_TOPIC = "/ground_truth/pose"
HEIGHT, WIDTH = 24, 32
T0_NS = 1_700_000_000 * 10**9 + 123_456_789  # stamp of the first frame


def _domain(test: int) -> int:
    """A domain id (16..215) from the pid and the test, so that parallel runs and tests do not meet."""
    return 16 + (os.getpid() + 37 * test) % 200


def _pixels(index: int) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def test_message_to_dict_and_formats() -> None:
    types = RosbagsTypes()
    pixels = _pixels(3)
    image = image_msg(types, pixels, T0_NS, "camera", "rgb8")
    values = message_to_dict(image)
    assert values["header"] == {
        "stamp": {"sec": T0_NS // 10**9, "nanosec": T0_NS % 10**9},
        "frame_id": "camera",
    }
    assert values["data"] == f"<{pixels.size} bytes, crc32 {zlib.crc32(pixels.tobytes()):08x}>"
    assert (values["height"], values["width"], values["step"], values["encoding"]) == (24, 32, 96, "rgb8")
    # a DDS sample (data as bytes) gives the same dict
    assert message_to_dict(to_dds(image)) == values
    # short byte payloads are listed
    small = image_msg(types, pixels[:2, :4], T0_NS, "camera", "rgb8")
    assert message_to_dict(small)["data"] == pixels[:2, :4].reshape(-1).tolist()
    assert len(message_to_dict(small)["data"]) <= MAX_LISTED_BYTES

    store = types.typestore
    covariance = np.arange(36, dtype=np.float64) / 7.0
    pose = store.types["geometry_msgs/msg/PoseWithCovarianceStamped"](
        header=image.header,
        pose=store.types["geometry_msgs/msg/PoseWithCovariance"](
            pose=pose_stamped(types, T0_NS, "map", [1e-5, 1e17, -0.1], [1, 0, 0, 0]).pose,
            covariance=covariance,
        ),
    )
    float32 = store.types["std_msgs/msg/Float32"](data=np.float32(0.1))
    for msg in (pose, float32, image):
        expected = message_to_dict(msg)
        text = format_message(expected, "json")
        assert text.endswith("\n") and text.count("\n") == 1
        assert json.loads(text) == expected  # exact floats
        text = format_message(expected, "yaml")
        assert text.endswith("\n---\n")
        assert yaml.safe_load(text[: -len("---\n")]) == expected
    assert message_to_dict(pose)["pose"]["covariance"] == covariance.tolist()
    assert json.loads(format_message(message_to_dict(float32), "json"))["data"] == float(np.float32(0.1))
    assert "__msgtype__" not in message_to_dict(pose)
    with pytest.raises(ValueError, match="format"):
        format_message(expected, "xml")


def test_type_names_and_qos_choice() -> None:
    assert ros_type_from_dds_name("sensor_msgs::msg::dds_::Image_") == "sensor_msgs/msg/Image"
    assert (
        ros_type_from_dds_name("geometry_msgs::msg::dds_::PoseWithCovarianceStamped_")
        == "geometry_msgs/msg/PoseWithCovarianceStamped"
    )
    for bad in ("sensor_msgs/msg/Image", "a::b::c", "Image_", "pkg::msg::dds_::_"):
        with pytest.raises(ValueError):
            ros_type_from_dds_name(bad)
    assert qos_for_topic(IMAGE_TOPIC, "sensor_msgs/msg/Image") == "sensor_data"
    assert qos_for_topic("/camera/camera_info", "sensor_msgs/msg/CameraInfo") == "sensor_data"
    assert qos_for_topic("/tf_static", "tf2_msgs/msg/TFMessage") == "transient_local"
    assert qos_for_topic("/tf", "tf2_msgs/msg/TFMessage") == "default"
    assert qos_for_topic(POSE_TOPIC, "geometry_msgs/msg/PoseStamped") == "default"
    # the CLI spells defaults and choices out (so that building it imports no DDS code): same values
    play_args = build_parser().parse_args(["play", "bag"])
    assert play_args.step_type == DEFAULT_STEP_TYPE
    echo_parser = build_parser()
    echo_args = echo_parser.parse_args(["echo", "/topic"])
    assert (echo_args.qos, echo_args.format) == ("default", "yaml")
    for qos in QOS_PROFILES:
        assert echo_parser.parse_args(["echo", "/t", "--qos", qos]).qos == qos
    for fmt in FORMATS:
        assert echo_parser.parse_args(["echo", "/t", "--format", fmt]).format == fmt


def test_echo_without_publisher_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    domain = _domain(1)
    with pytest.raises(TimeoutError, match=f"no publisher of /nobody appeared on DDS domain {domain}"):
        echo("/nobody", wait_timeout=0.3, domain_id=domain, config=loopback_config())
    with pytest.raises(ValueError, match="not_a_pkg/msg/Nothing"):
        echo("/nobody", type_name="not_a_pkg/msg/Nothing", domain_id=domain, config=loopback_config())
    # the CLI reads the loopback configuration from CYCLONEDDS_URI, as the child processes do
    monkeypatch.setenv("CYCLONEDDS_URI", loopback_config())
    capsys.readouterr()
    assert main(["echo", "nobody", "--wait-timeout", "0.3", "--domain-id", str(_domain(2))]) == 2
    err = capsys.readouterr().err
    assert "posenet-ros echo: error: no publisher of /nobody appeared" in err and err.count("\n") == 1
    # with a type it subscribes at once and gives up after --timeout: 1 when --count is not reached
    assert (
        main(
            [
                "echo",
                "/nobody",
                "--type",
                "std_msgs/msg/Bool",
                "--timeout",
                "0.2",
                "--count",
                "1",
                "--domain-id",
                str(_domain(2)),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "echo: subscribed to /nobody [std_msgs/msg/Bool]" in err and "received 0 of 1" in err
    assert (
        main(
            [
                "echo",
                "/nobody",
                "--type",
                "std_msgs/msg/Bool",
                "--timeout",
                "0.2",
                "--domain-id",
                str(_domain(2)),
            ]
        )
        == 0
    )
