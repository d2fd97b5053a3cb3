"""ros/bag_reading.py: a small rosbag2 written in tmp_path as a camera driver records one (images,
depth, camera info, ground truth as a pose topic and as /tf) and read back, in both storages: the
topics and streams chosen, messages in the bag's order, the intrinsics, the trajectory from a topic
or from /tf (stored either way round), timestamp association, and the errors a user's bag can give,
each naming the bag and what it holds."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from node_support import TYPES, depth_frame, rgb_frame, stamp

from posenet_ros.core.geometry import quat_exp, quat_to_matrix
from posenet_ros.ros.bag_reading import (
    Trajectory,
    bag_topics,
    check_overlap,
    describe_topics,
    open_bag,
    read_camera_info,
    read_messages,
    read_trajectory,
    select_streams,
    stream_messages,
)
from posenet_ros.ros.bag_writing import write_messages
from posenet_ros.ros.conversions import (
    camera_info_msg,
    compressed_image_msg,
    depth_msg,
    depth_to_metres,
    image_msg,
    message_to_rgb,
    pose_stamped,
    stamp_to_ns,
    tf_message,
    transform_stamped,
)

FRAMES = 6
K = np.array([[40.0, 0.0, 19.5], [0.0, 41.0, 14.5], [0.0, 0.0, 1.0]])
IMAGE, DEPTH, INFO = "sensor_msgs/msg/Image", "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"
POSE, TF = "geometry_msgs/msg/PoseStamped", "tf2_msgs/msg/TFMessage"


def ground_truth(i: int) -> tuple[np.ndarray, np.ndarray]:
    """(position, quaternion wxyz) of frame i: moving along x and turning about z, 0.1 rad a frame."""
    return np.array([0.1 * i, -0.2, 1.5]), quat_exp(np.array([0.0, 0.0, 0.1 * i]))


def write_bag(path: Path, storage: str = "mcap", *, compressed: bool = False, tf_inverse: bool = False,
              ground_truth_topic: bool = True) -> Path:
    """FRAMES frames at 10 Hz: camera info, image (rgb8, or png CompressedImage), 16UC1 depth, the pose
    on /ground_truth/pose and the transform map -> camera on /tf (or camera -> map, inverted)."""
    messages = []
    for i in range(FRAMES):
        t = stamp(i)
        position, quat = ground_truth(i)
        messages.append(("/camera/camera_info", INFO, t, camera_info_msg(TYPES, t, "camera", 40, 30, K)))
        if compressed:
            messages.append(("/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage", t,
                             compressed_image_msg(TYPES, rgb_frame(i), t, "camera", format="png")))
        else:
            messages.append(("/camera/image_raw", IMAGE, t,
                             image_msg(TYPES, rgb_frame(i), t, "camera", "rgb8")))
        messages.append(("/camera/depth/image_raw", DEPTH, t, depth_msg(TYPES, depth_frame(i), t, "camera",
                                                                       "16UC1")))
        if ground_truth_topic:
            messages.append(("/ground_truth/pose", POSE, t, pose_stamped(TYPES, t, "map", position, quat)))
        if tf_inverse:  # camera -> map: the inverse pose
            inverse_quat = quat * np.array([1.0, -1.0, -1.0, -1.0])
            transform = transform_stamped(TYPES, t, "camera", "map", -quat_to_matrix(inverse_quat) @ position,
                                          inverse_quat)
        else:
            transform = transform_stamped(TYPES, t, "map", "camera", position, quat)
        messages.append(("/tf", TF, t, tf_message(TYPES, [transform])))
    write_messages(path, messages, storage=storage)
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_small_bag_reads_back_as_written(tmp_path, storage):
    bag = write_bag(tmp_path / "bag", storage)
    with open_bag(bag) as reader:
        assert bag_topics(reader) == {"/camera/camera_info": INFO, "/camera/image_raw": IMAGE,
                                      "/camera/depth/image_raw": DEPTH, "/ground_truth/pose": POSE, "/tf": TF}
        streams = select_streams(reader, bag)
        assert (streams.image_topic, streams.image_type) == ("/camera/image_raw", IMAGE)
        assert streams.depth_topic is None  # depth is read only with use_depth
        assert streams.camera_info_topic == "/camera/camera_info" and streams.image_count == FRAMES
        with_depth = select_streams(reader, bag, use_depth=True)
        assert with_depth.depth_topic == "/camera/depth/image_raw"
        # Images and depth in the bag's order, as a node subscribed to both receives them.
        received = list(stream_messages(reader, bag, with_depth))
        assert [kind for kind, _ in received] == ["image", "depth"] * FRAMES
        for i in range(FRAMES):
            (_, image), (_, depth) = received[2 * i: 2 * i + 2]
            assert stamp_to_ns(image.header.stamp) == stamp_to_ns(depth.header.stamp) == stamp(i)
            np.testing.assert_array_equal(message_to_rgb(image), rgb_frame(i))
            np.testing.assert_allclose(depth_to_metres(depth), depth_frame(i), atol=0.5e-3 + 1e-6)
        assert [kind for kind, _ in stream_messages(reader, bag, streams)] == ["image"] * FRAMES
        camera = read_camera_info(reader, bag, streams)
        np.testing.assert_array_equal(camera.matrix(), K)
        assert (camera.width, camera.height, camera.distortion) == (40, 30, ())
        # The ground truth, and the frames' poses at their stamps.
        trajectory = read_trajectory(reader, bag)
        assert trajectory.source == "/ground_truth/pose" and len(trajectory) == FRAMES
        np.testing.assert_array_equal(trajectory.stamp_ns, [stamp(i) for i in range(FRAMES)])
        position, quat, valid = trajectory.at([stamp(i) for i in range(FRAMES)])
        assert valid.all()
        for i in range(FRAMES):
            np.testing.assert_allclose(position[i], ground_truth(i)[0], rtol=0, atol=1e-12)
            np.testing.assert_allclose(quat[i], ground_truth(i)[1], rtol=0, atol=1e-12)
        # Halfway between two frames: interpolated (linear position, slerp rotation).
        position, quat, valid = trajectory.at([stamp(2) + 50_000_000])
        assert valid[0]
        np.testing.assert_allclose(position[0], [0.25, -0.2, 1.5], atol=1e-12)
        np.testing.assert_allclose(quat[0], quat_exp(np.array([0.0, 0.0, 0.25])), atol=1e-12)
        # Every message of the chosen topics, in log-time order.
        times = [log_time for _, log_time, _ in read_messages(reader, bag, ["/ground_truth/pose", "/tf"])]
        assert times == sorted(times) and len(times) == 2 * FRAMES


def test_the_ground_truth_from_tf_either_way_round_equals_the_pose_topic(tmp_path):
    bag = write_bag(tmp_path / "bag")
    with open_bag(bag) as reader:
        from_topic = read_trajectory(reader, bag)
        from_tf = read_trajectory(reader, bag, gt_tf=("map", "/camera"))
    inverse = write_bag(tmp_path / "inverse", "sqlite3", tf_inverse=True, ground_truth_topic=False)
    with open_bag(inverse) as reader:
        from_inverse = read_trajectory(reader, inverse, gt_tf=("map", "camera"))
    assert from_tf.source == from_inverse.source == "/tf map -> camera"
    for trajectory in (from_tf, from_inverse):
        np.testing.assert_array_equal(trajectory.stamp_ns, from_topic.stamp_ns)
        np.testing.assert_allclose(trajectory.position_M3, from_topic.position_M3, rtol=0, atol=1e-12)
        np.testing.assert_allclose(trajectory.quat_M4, from_topic.quat_M4, rtol=0, atol=1e-12)


def test_a_compressed_image_stream_is_chosen_with_its_camera_info(tmp_path):
    bag = write_bag(tmp_path / "bag", compressed=True)
    with open_bag(bag) as reader:
        streams = select_streams(reader, bag)
        assert (streams.image_topic, streams.image_type) == ("/camera/image_raw/compressed",
                                                             "sensor_msgs/msg/CompressedImage")
        assert streams.camera_info_topic == "/camera/camera_info"
        images = [msg for _, msg in stream_messages(reader, bag, streams)]
    assert len(images) == FRAMES
    np.testing.assert_array_equal(message_to_rgb(images[3]), rgb_frame(3))  # png: lossless


def test_errors_name_the_bag_and_what_it_holds(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"bag {tmp_path / 'missing'} does not exist")):
        with open_bag(tmp_path / "missing"):
            pass
    (tmp_path / "folder").mkdir()
    (tmp_path / "old.bag").write_bytes(b"#ROSBAG V2.0\n")
    (tmp_path / "notes.txt").write_text("hello")
    for path, message in ((tmp_path / "folder", "is not a rosbag2 (no metadata.yaml in the folder)"),
                          (tmp_path / "old.bag", "is a ROS 1 bag; convert it to rosbag2 first"),
                          (tmp_path / "notes.txt", "is not a rosbag2 (expected a bag folder")):
        with pytest.raises(ValueError, match=re.escape(f"{path} {message}")):
            with open_bag(path):
                pass

    bag = write_bag(tmp_path / "bag", ground_truth_topic=False)
    listing = describe_topics({"/camera/camera_info": INFO, "/camera/depth/image_raw": DEPTH,
                               "/camera/image_raw": IMAGE, "/tf": TF})
    assert listing.startswith("/camera/camera_info [sensor_msgs/msg/CameraInfo], /camera/depth/image_raw")
    assert describe_topics({}) == "none"
    with open_bag(bag) as reader:
        no_image = f"bag {bag} has no image topic /nope; it has: {listing}"
        with pytest.raises(ValueError, match=re.escape(no_image)):
            select_streams(reader, bag, image_topic="/nope")
        wrong_type = f"image topic /tf in bag {bag} has type {TF}; expected"
        with pytest.raises(ValueError, match=re.escape(wrong_type)):
            select_streams(reader, bag, image_topic="/tf")
        with pytest.raises(ValueError, match=re.escape(f"bag {bag} has no depth topic /depth; it has:")):
            select_streams(reader, bag, depth_topic="/depth", use_depth=True)
        no_truth = f"bag {bag} has no ground-truth topic /ground_truth/pose"
        with pytest.raises(ValueError, match=re.escape(no_truth)):
            read_trajectory(reader, bag)
        with pytest.raises(ValueError, match="transforms found: map -> camera"):
            read_trajectory(reader, bag, gt_tf=("map", "base_link"))
        trajectory = read_trajectory(reader, bag, gt_tf=("map", "camera"))
    # Images that the ground truth never covers.
    later = [stamp(100), stamp(101)]
    _, _, valid = trajectory.at(later)
    with pytest.raises(ValueError, match=re.escape(f"no image of /camera/image_raw in bag {bag} overlaps the "
                                                   "ground truth (/tf map -> camera)")):
        check_overlap(trajectory, later, valid, bag, "/camera/image_raw")
    check_overlap(trajectory, [stamp(1)], trajectory.at([stamp(1)])[2], bag, "/camera/image_raw")

    # Two image topics, neither the default one: the user must choose.
    two = tmp_path / "two"
    write_messages(two, [(topic, IMAGE, stamp(0), image_msg(TYPES, rgb_frame(0), stamp(0), "cam", "rgb8"))
                         for topic in ("/left/image", "/right/image")])
    with open_bag(two) as reader:
        with pytest.raises(ValueError, match=r"cannot choose the image topic .* \(several: /left/image, "
                                             r"/right/image\); pass it \(--image-topic\)"):
            select_streams(reader, two)
        assert select_streams(reader, two, image_topic="/right/image").camera_info_topic is None


def test_a_truncated_bag_is_a_value_error_naming_it(tmp_path):
    bag = write_bag(tmp_path / "bag_truncated")
    storage = next(bag.glob("*.mcap"))
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(f"cannot read bag {bag}")):
        with open_bag(bag) as reader:
            list(read_messages(reader, bag, ["/camera/image_raw"]))


def test_trajectory_association():
    stamps = np.array([0, 100, 200, 1000], np.int64)
    position = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [9, 0, 0]], float)
    half_turn = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])  # 90° about z
    quat = np.array([[1, 0, 0, 0], [1, 0, 0, 0], -half_turn, half_turn])  # a sign flip to undo
    trajectory = Trajectory(stamps[::-1].copy(), position[::-1].copy(), quat[::-1].copy(), "test")
    at, q, valid = trajectory.at([100, 150, 600, 1000, 1200, -5], max_gap_s=150e-9)
    np.testing.assert_array_equal(valid, [True, True, False, True, False, False])
    np.testing.assert_allclose(at[:2], [[1, 0, 0], [1.5, 0, 0]])
    expected = np.array([np.cos(np.pi / 8), 0, 0, np.sin(np.pi / 8)])  # halfway: 45° about z
    np.testing.assert_allclose(q[1], expected, atol=1e-12)
    assert np.isnan(at[2]).all() and np.isnan(q[4]).all()
    empty = Trajectory(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 4)), "none")
    assert not empty.at([0, 1])[2].any()
