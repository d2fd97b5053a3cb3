"""tools/make_bag.py (`posenet-ros make-bag`): a tiny synthetic scene written as a rosbag2 (mcap and
sqlite3) and read back with rosbags' AnyReader (`play.open_bag`): topics, types, counts, pixels, depth,
poses, intrinsics and lens distortion, stamps, and the atomic write (nothing left behind on errors)."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from posenet_ros.cli import main
from posenet_ros.core.geometry import pose_from_position_quat
from posenet_ros.data.dataset import pose_vector
from posenet_ros.data.frames import DatasetError, FrameRecord
from posenet_ros.data.images import read_depth_mm, read_rgb
from posenet_ros.data.loading import load_frames
from posenet_ros.data.synthetic import SceneConfig, write_synthetic_scene
from posenet_ros.inference.odometry_fusion import OdometryNoise
from posenet_ros.ros.bag_reading import open_bag
from posenet_ros.ros.bag_writing import (
    CAMERA_INFO_TOPIC,
    COMPRESSED_IMAGE_TOPIC,
    DEPTH_TOPIC,
    IMAGE_TOPIC,
    POSE_TOPIC,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    TOPIC_TYPES,
)
from posenet_ros.ros.camera_info import camera_from_camera_info
from posenet_ros.ros.conversions import depth_to_metres, message_to_rgb, pose_from_msg, stamp_to_ns
from posenet_ros.tools import make_bag as make_bag_module
from posenet_ros.tools.make_bag import BASE_FROM_CAMERA, make_bag, map_from_odom, simulated_odometry

WIDTH, HEIGHT, FRAMES_PER_SEQUENCE = 32, 24, 3
SPLITS = ("train", "test")  # two train sequences and one test sequence: 9 frames
PER_FRAME_TOPICS = [TF_TOPIC, CAMERA_INFO_TOPIC, IMAGE_TOPIC, DEPTH_TOPIC, POSE_TOPIC]
ALL_TOPICS = [TF_STATIC_TOPIC, *PER_FRAME_TOPICS]  # /tf_static: one message


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("make_bag") / "scene"
    config = SceneConfig(width=WIDTH, height=HEIGHT, frames_per_sequence=FRAMES_PER_SEQUENCE,
                         train_sequences=2, test_sequences=1, outside_sequences=0, val_sequences=0,
                         variations=[])
    write_synthetic_scene(config, "7scenes", root, progress=False)
    return root


def _records(scene: Path, splits=SPLITS) -> list[FrameRecord]:
    return [record for split in splits for record in load_frames(scene, split)]


def _read_bag(path: Path) -> dict[str, list[tuple[int, Any]]]:
    """topic -> [(log time ns, deserialised message)] in the bag's order."""
    messages: dict[str, list[tuple[int, Any]]] = {}
    with open_bag(path) as reader:
        for connection, log_time, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            messages.setdefault(connection.topic, []).append((log_time, msg))
    return messages


def _assert_same_pose(msg: Any, expected_7: np.ndarray) -> None:
    position, quat_wxyz = pose_from_msg(msg)
    np.testing.assert_allclose(position, expected_7[:3], rtol=0, atol=1e-12)
    sign = 1.0 if float(np.dot(quat_wxyz, expected_7[3:])) >= 0 else -1.0  # q and -q: same rotation
    np.testing.assert_allclose(sign * quat_wxyz, expected_7[3:], rtol=0, atol=1e-12)


def _no_leftovers(folder: Path, name: str) -> bool:
    """Neither the bag folder nor a temporary folder for it exists in `folder`."""
    return not any(entry.name == name or entry.name.startswith(f".{name}.") for entry in folder.iterdir())


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_holds_every_frame_exactly(scene: Path, tmp_path: Path, storage: str):
    out = tmp_path / "bag"
    summary = make_bag(scene, out, splits=SPLITS, storage=storage, progress=False)
    records = _records(scene)
    n = len(records)
    assert n == 9 and summary.frames == n and summary.path == out and summary.storage == storage

    # A standard rosbag2 folder: metadata.yaml naming the storage, one storage file named after the folder.
    info = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    suffix = {"mcap": ".mcap", "sqlite3": ".db3"}[storage]
    assert info["storage_identifier"] == storage and info["version"] == 8
    assert info["relative_file_paths"] == [f"bag{suffix}"] and (out / f"bag{suffix}").is_file()
    assert info["message_count"] == 5 * n + 1
    counts = {**dict.fromkeys(PER_FRAME_TOPICS, n), TF_STATIC_TOPIC: 1}
    assert {t["topic_metadata"]["name"]: (t["topic_metadata"]["type"], t["message_count"])
            for t in info["topics_with_message_count"]} == {t: (TOPIC_TYPES[t], counts[t])
                                                            for t in ALL_TOPICS}
    assert summary.topics == counts

    with open_bag(out) as reader:
        offered = {c.topic: c.ext.offered_qos_profiles[0].reliability.name for c in reader.connections}
    assert offered[IMAGE_TOPIC] == "BEST_EFFORT" and offered[POSE_TOPIC] == "RELIABLE"
    assert offered[TF_STATIC_TOPIC] == "RELIABLE"

    messages = _read_bag(out)
    assert sorted(messages) == sorted(ALL_TOPICS)
    stamps = [stamp for stamp, *_ in summary.frame_stamps]
    assert [(split, seq, index) for _, split, seq, index in summary.frame_stamps] == [
        (split, r.sequence, r.frame_index) for split in SPLITS for r in load_frames(scene, split)]
    for topic in PER_FRAME_TOPICS:
        # Every message of frame i carries frame i's stamp, which is also its log time.
        assert [log_time for log_time, _ in messages[topic]] == stamps
        if topic == TF_TOPIC:
            assert [stamp_to_ns(m.transforms[0].header.stamp) for _, m in messages[topic]] == stamps
        else:
            assert [stamp_to_ns(m.header.stamp) for _, m in messages[topic]] == stamps

    for i, record in enumerate(records):
        image = messages[IMAGE_TOPIC][i][1]
        assert image.encoding == "rgb8" and image.header.frame_id == "camera"
        np.testing.assert_array_equal(message_to_rgb(image), read_rgb(record.image_path))
        depth = messages[DEPTH_TOPIC][i][1]
        assert depth.encoding == "16UC1" and depth.header.frame_id == "camera"
        assert record.depth_path is not None
        np.testing.assert_array_equal(depth_to_metres(depth), read_depth_mm(record.depth_path))
        info_msg = messages[CAMERA_INFO_TOPIC][i][1]
        assert record.intrinsics is not None and info_msg.header.frame_id == "camera"
        assert (info_msg.width, info_msg.height) == (WIDTH, HEIGHT)
        np.testing.assert_array_equal(np.asarray(info_msg.k).reshape(3, 3), record.intrinsics.matrix())
        expected = pose_vector(record.world_from_cam)
        pose = messages[POSE_TOPIC][i][1]
        assert pose.header.frame_id == "map"
        _assert_same_pose(pose, expected)
        odometry, ground_truth = messages[TF_TOPIC][i][1].transforms
        assert (ground_truth.header.frame_id, ground_truth.child_frame_id) == ("map", "camera_ground_truth")
        _assert_same_pose(ground_truth, expected)
        # The robot: drifting odometry of the base that carries the camera.
        assert (odometry.header.frame_id, odometry.child_frame_id) == ("odom", "base_link")
        elapsed_s = (stamps[i] - stamps[0]) / 1e9
        odom_from_base = pose_from_position_quat(*pose_from_msg(odometry))
        np.testing.assert_allclose(map_from_odom(elapsed_s) @ odom_from_base @ BASE_FROM_CAMERA,
                                   record.world_from_cam, atol=1e-9)
    ((log_time, static),) = messages[TF_STATIC_TOPIC]
    (extrinsic,) = static.transforms
    assert log_time == stamp_to_ns(extrinsic.header.stamp) == stamps[0]
    assert (extrinsic.header.frame_id, extrinsic.child_frame_id) == ("base_link", "camera")
    np.testing.assert_allclose(pose_from_position_quat(*pose_from_msg(extrinsic)), BASE_FROM_CAMERA,
                               atol=1e-12)
    # The odometry drifts: map -> odom is no identity and changes over the bag.
    assert not np.allclose(map_from_odom(0.0), np.eye(4), atol=0.1)
    assert not np.allclose(map_from_odom(0.0), map_from_odom((stamps[-1] - stamps[0]) / 1e9), atol=1e-3)


def test_stamps_are_periodic_within_a_sequence_with_a_gap_between_sequences(scene: Path, tmp_path: Path):
    start = 1_650_000_000 * 10**9 + 7
    summary = make_bag(scene, tmp_path / "bag", splits=SPLITS, rate_hz=30.0, start_ns=start,
                       sequence_gap_s=2.5, progress=False)
    stamps = [stamp for stamp, *_ in summary.frame_stamps]
    sequences = [(split, seq) for _, split, seq, _ in summary.frame_stamps]
    assert sequences == [("train", "seq-01")] * 3 + [("train", "seq-02")] * 3 + [("test", "seq-03")] * 3
    assert all(isinstance(stamp, int) for stamp in stamps)
    # Frame k of a sequence at its start + round(k / 30 s); sequences 2.5 s after the previous last frame.
    period = [0, 33_333_333, 66_666_667]
    seq2 = start + period[2] + 2_500_000_000
    seq3 = seq2 + period[2] + 2_500_000_000
    assert stamps == [start + p for p in period] + [seq2 + p for p in period] + [seq3 + p for p in period]
    assert (summary.first_stamp_ns, summary.last_stamp_ns) == (stamps[0], stamps[-1])
    # The stamps map back to the dataset frames.
    by_stamp = {stamp: (split, seq, index) for stamp, split, seq, index in summary.frame_stamps}
    poses = {stamp_to_ns(m.header.stamp): m for _, m in _read_bag(summary.path)[POSE_TOPIC]}
    records = {(split, r.sequence, r.frame_index): r for split in SPLITS for r in load_frames(scene, split)}
    for stamp, msg in poses.items():
        _assert_same_pose(msg, pose_vector(records[by_stamp[stamp]].world_from_cam))


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_compressed_images(scene: Path, tmp_path: Path, image_format: str):
    out = tmp_path / "bag"
    summary = make_bag(scene, out, splits=["test"], compressed=True, compressed_format=image_format,
                       progress=False)
    expected_topics = [CAMERA_INFO_TOPIC, COMPRESSED_IMAGE_TOPIC, DEPTH_TOPIC, POSE_TOPIC, TF_TOPIC,
                       TF_STATIC_TOPIC]
    assert summary.topics == {**dict.fromkeys(expected_topics, 3), TF_STATIC_TOPIC: 1}
    messages = _read_bag(out)
    assert sorted(messages) == sorted(expected_topics)
    for (_, msg), record in zip(messages[COMPRESSED_IMAGE_TOPIC], load_frames(scene, "test"), strict=True):
        assert msg.format == f"rgb8; {image_format} compressed bgr8"
        decoded, expected = message_to_rgb(msg), read_rgb(record.image_path)
        if image_format == "png":
            np.testing.assert_array_equal(decoded, expected)
        else:
            assert decoded.shape == expected.shape
            assert np.abs(decoded.astype(int) - expected.astype(int)).mean() < 10  # about 5 at quality 95


def test_depth_and_camera_info_follow_the_records(scene: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    no_depth = make_bag(scene, tmp_path / "no_depth", with_depth=False, storage="sqlite3", progress=False)
    assert list(no_depth.topics) == [TF_STATIC_TOPIC, TF_TOPIC, CAMERA_INFO_TOPIC, IMAGE_TOPIC, POSE_TOPIC]

    # Records as the Cambridge layout gives them: no depth, no intrinsics.
    def bare_frames(root, split):
        return [dataclasses.replace(r, depth_path=None, intrinsics=None) for r in load_frames(root, split)]

    monkeypatch.setattr(make_bag_module, "load_frames", bare_frames)
    bare = make_bag(scene, tmp_path / "bare", progress=False)
    assert list(bare.topics) == [TF_STATIC_TOPIC, TF_TOPIC, IMAGE_TOPIC, POSE_TOPIC]
    assert sorted(_read_bag(bare.path)) == sorted(bare.topics)
    with pytest.raises(ValueError, match="with_depth=True but 3 of 3 frames have no depth"):
        make_bag(scene, tmp_path / "wants_depth", with_depth=True, progress=False)
    assert _no_leftovers(tmp_path, "wants_depth")


def test_camera_info_carries_the_lens_distortion_of_the_images_or_is_left_out(tmp_path: Path):
    """A camera other than the map's (`synth --distortion`, another field of view): the bag's
    CameraInfo describes its images as written (K and D), so a node can undistort them."""
    assert main(["synth", "--quiet", "--distortion=-0.25,0.05,0.001,0", str(tmp_path / "other"), "width=40",
                 "height=30", "hfov_deg=100", "frames_per_sequence=2", "train_sequences=1",
                 "outside_sequences=0", "val_sequences=0", "variations=[]"]) == 0
    camera = load_frames(tmp_path / "other", "test")[0].intrinsics
    assert main(["make-bag", "--quiet", str(tmp_path / "other"), str(tmp_path / "bag")]) == 0
    infos = [msg for _, msg in _read_bag(tmp_path / "bag")[CAMERA_INFO_TOPIC]]
    assert infos[0].distortion_model == "plumb_bob" and infos[0].d.tolist() == [-0.25, 0.05, 0.001, 0.0, 0.0]
    plumb_bob = dataclasses.replace(camera, distortion=(*camera.distortion, 0.0))  # k3 = 0 written
    assert len(infos) == 2 and camera_from_camera_info(infos[0]) == plumb_bob and camera.distorted
    assert load_frames(tmp_path / "bag", "test")[0].intrinsics == plumb_bob  # training from the bag
    assert main(["make-bag", "--quiet", "--no-camera-info", str(tmp_path / "other"),
                 str(tmp_path / "bare")]) == 0
    assert CAMERA_INFO_TOPIC not in _read_bag(tmp_path / "bare")


def test_existing_output_is_left_alone(scene: Path, tmp_path: Path):
    out = tmp_path / "bag"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=str(out)):
        make_bag(scene, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"storage": "rosbag1"}, "unsupported bag storage 'rosbag1'"),
        ({"compressed": True, "compressed_format": "webp"}, "unsupported compressed image format 'webp'"),
        ({"rate_hz": 0.0}, "rate_hz must be a positive"),
        ({"sequence_gap_s": -1.0}, "sequence_gap_s must be a positive"),
        ({"splits": []}, "splits must be a non-empty list"),
        ({"splits": ["test", "test"]}, "given more than once"),
        ({"splits": ["val"]}, "split 'val'"),  # the scene has no val split
    ],
)
def test_bad_arguments_write_nothing(scene: Path, tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        make_bag(scene, tmp_path / "bag", progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_missing_split_is_a_dataset_error_naming_it(scene: Path, tmp_path: Path):
    with pytest.raises(DatasetError, match="split 'outside'"):
        make_bag(scene, tmp_path / "bag", splits=["test", "outside"], progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [DatasetError("frame 4 is unreadable"), KeyboardInterrupt()])
def test_failure_while_writing_removes_the_partial_bag(scene: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, error: BaseException):
    calls = []

    def failing_read_rgb(path):
        calls.append(path)
        if len(calls) == 4:
            raise error
        return read_rgb(path)

    monkeypatch.setattr(make_bag_module, "read_frame_rgb", failing_read_rgb)
    with pytest.raises(type(error)):
        make_bag(scene, tmp_path / "bag", splits=SPLITS, progress=False)
    assert len(calls) == 4
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_a_bag_and_prints_a_summary(scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "cli_bag"
    code = main(["make-bag", str(scene), str(out), "--split", "train", "--split", "test", "--storage",
                 "sqlite3", "--compressed", "--compressed-format", "png", "--no-depth", "--rate", "10",
                 "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    assert str(out) in printed[0] and "sqlite3" in printed[0] and "9 frames" in printed[0]
    for topic in (CAMERA_INFO_TOPIC, COMPRESSED_IMAGE_TOPIC, POSE_TOPIC, TF_TOPIC):
        assert f"{topic} 9" in printed[0]
    assert DEPTH_TOPIC not in printed[0]
    messages = _read_bag(out)
    assert sorted(messages) == sorted([CAMERA_INFO_TOPIC, COMPRESSED_IMAGE_TOPIC, POSE_TOPIC, TF_TOPIC,
                                       TF_STATIC_TOPIC])
    stamps = [log_time for log_time, _ in messages[POSE_TOPIC]]
    assert stamps[1] - stamps[0] == 100_000_000  # 10 Hz

    # A user error is one line on stderr and exit code 2; the existing bag is untouched.
    before = sorted(p.name for p in out.iterdir())
    assert main(["make-bag", str(scene), str(out), "--quiet"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "exists" in error[0] and str(out) in error[0]
    assert sorted(p.name for p in out.iterdir()) == before
    assert main(["make-bag", str(scene), str(tmp_path / "other"), "--rate", "0", "--quiet"]) == 2
    assert "rate_hz must be a positive" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_simulated_odometry_drifts_as_its_noise_model_says():
    poses = []
    for k in range(400):  # a straight drive, 0.1 m per frame
        pose = np.eye(4)
        pose[:3, 3] = [0.1 * k, 0.0, 0.0]
        poses.append(pose @ BASE_FROM_CAMERA)
    records = [FrameRecord(Path("x.png"), None, pose, None, "seq", k) for k, pose in enumerate(poses)]
    elapsed = [0.1 * k for k in range(len(records))]
    fixed = simulated_odometry(records, elapsed, None)
    np.testing.assert_allclose(fixed[5] @ BASE_FROM_CAMERA, np.linalg.inv(map_from_odom(0.5)) @ poses[5],
                               atol=1e-12)
    noise = OdometryNoise(0.02, 1.0)
    steps = []
    for seed in range(20):
        odometry = simulated_odometry(records, elapsed, noise, seed=seed)
        steps += [(np.linalg.inv(a) @ b)[:3, 3] - [0.1, 0.0, 0.0] for a, b in itertools.pairwise(odometry)]
    # per step of 0.1 m the position error has standard deviation 0.02 x √0.1 per axis
    np.testing.assert_allclose(np.std(steps, axis=0), 0.02 * np.sqrt(0.1), rtol=0.1)
