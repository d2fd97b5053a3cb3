"""The issue's acceptance for REP-105 frames, across processes over Cyclone DDS on loopback: this
process publishes camera images, /tf_static base_link -> camera_optical (a rotated, offset optical
frame) and a moving odom -> base_link on /tf; `posenet-ros node` (base_frame base_link, publish_tf,
tf_mode map_odom) answers. At each stamp the published map -> odom composed with odom -> base and
base -> camera is the camera pose world_from_cam of that frame, and the published base covariance is
the camera covariance carried by the lever arm."""

from __future__ import annotations

import re
import threading

import numpy as np
from dds_support import POSE_TYPE, TIMEOUT_S, domain_id, send_until, start_node
from node_support import (
    BASE_FROM_CAMERA,
    TYPES,
    image,
    make_checkpoint,
    odom_from_base,
    rgb_frame,
    stamp,
    transform,
)

from posenet_ros.core.covariance_transport import transport_covariance
from posenet_ros.core.geometry import pose_from_position_quat
from posenet_ros.ros.conversions import covariance_from_msg, pose_from_msg, stamp_to_ns, tf_message
from posenet_ros.ros.dds import DdsNode, loopback_config
from posenet_ros.ros.dds_types import from_dds
from posenet_ros.runtime.relocalizer import Relocalizer

TF_TYPE = "tf2_msgs/msg/TFMessage"
TOLERANCE_NS = 250_000_000
FRAMES = 4


def test_map_odom_odometry_and_extrinsic_compose_to_the_camera_pose_across_processes(tmp_path):
    model = make_checkpoint(tmp_path / "model.safetensors")
    domain = domain_id(5)
    # transform_timeout is only an upper bound: the node waits for odometry that is still on its way.
    node = start_node(model, domain, "--param", "base_frame:=base_link", "--param", "publish_tf:=true",
                      "--param", "transform_tolerance:=0.25", "--param", "transform_timeout:=10.0")
    received: dict[str, dict[int, object]] = {"pose": {}, "camera_pose": {}, "map_odom": {}}
    condition = threading.Condition()

    def on(kind: str, type_name: str):
        def callback(sample) -> None:
            msg = from_dds(sample, type_name)
            with condition:
                if kind == "tf":
                    for t in msg.transforms:
                        if (t.header.frame_id, t.child_frame_id) == ("map", "odom"):
                            received["map_odom"][stamp_to_ns(t.header.stamp)] = t
                else:
                    received[kind][stamp_to_ns(msg.header.stamp)] = msg
                condition.notify_all()
        return callback

    try:
        with DdsNode("frames_test", domain_id=domain, config=loopback_config()) as dds:
            dds.subscription("/relocalized_pose", POSE_TYPE, "default", on("pose", POSE_TYPE))
            dds.subscription("/relocalization/camera_pose", POSE_TYPE, "default",
                             on("camera_pose", POSE_TYPE))
            dds.subscription("/tf", TF_TYPE, "default", on("tf", TF_TYPE))
            static = dds.publisher("/tf_static", TF_TYPE, "transient_local")
            odometry = dds.publisher("/tf", TF_TYPE, "default")
            camera = dds.publisher("/camera/image_raw", "sensor_msgs/msg/Image", "sensor_data")
            extrinsic = transform("base_link", "camera_optical", 0, BASE_FROM_CAMERA)
            static.publish(tf_message(TYPES, [extrinsic]))
            for publisher in (static, odometry, camera):
                assert publisher.wait_for_subscribers(1, TIMEOUT_S)
            for i in range(FRAMES):
                moved = transform("odom", "base_link", stamp(i), odom_from_base(i))
                odometry.publish(tf_message(TYPES, [moved]))

                def publish(_: int, i: int = i) -> None:  # resent until answered: best-effort images
                    camera.publish(image(i))
                send_until(publish, condition, lambda i=i: stamp(i) in received["pose"]
                           and stamp(i) + TOLERANCE_NS in received["map_odom"]
                           and stamp(i) in received["camera_pose"])
    finally:
        assert node.stop() == 0, "".join(node.lines)
    counts = {key: int(value) for key, value in re.findall(r"(\w+) (\d+)", node.lines[-1])}
    assert counts["processed"] == FRAMES and counts["no_transform"] == 0
    reference = Relocalizer(model, device="cpu")
    for i in range(FRAMES):
        camera_pose = received["camera_pose"][stamp(i)]
        map_from_camera = pose_from_position_quat(*pose_from_msg(camera_pose))
        expected = reference.process(rgb_frame(i), stamp_ns=stamp(i))
        np.testing.assert_allclose(map_from_camera[:3, 3], expected.position_3, rtol=1e-5, atol=1e-6)
        # map -> odom (post-dated by transform_tolerance) · odom -> base (t) · base -> camera = world_from_cam
        map_from_odom = pose_from_position_quat(*pose_from_msg(received["map_odom"][stamp(i) + TOLERANCE_NS]))
        np.testing.assert_allclose(map_from_odom @ odom_from_base(i) @ BASE_FROM_CAMERA, map_from_camera,
                                   atol=1e-6)
        pose = received["pose"][stamp(i)]
        assert pose.header.frame_id == "map"
        map_from_base = pose_from_position_quat(*pose_from_msg(pose))
        np.testing.assert_allclose(map_from_base @ BASE_FROM_CAMERA, map_from_camera, atol=1e-6)
        transported = transport_covariance(covariance_from_msg(camera_pose), map_from_camera,
                                           np.linalg.inv(BASE_FROM_CAMERA))
        np.testing.assert_allclose(covariance_from_msg(pose), transported, rtol=0, atol=1e-9)
