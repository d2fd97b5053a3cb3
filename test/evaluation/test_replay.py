"""evaluation/replay.py (`posenet-ros replay`): bag replay on the synthetic scene, through the CLI as
a user runs it: synth -> train -> calibrate -> make-bag -> replay, checked against `posenet-ros eval`
on the same frames, across storages and image transports, against the node running over DDS in
another process, and on broken bags. On the session's trained models (slow): replay feeds the bag's
depth to an RGB-D model and smooths as eval does."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dds_support import PARAMS, Process, domain_id
from node_support import image, make_checkpoint
from node_support import stamp as image_stamp

from posenet_ros.cli import main
from posenet_ros.core.geometry import pose_from_position_quat
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.replay import replay, run_in_process
from posenet_ros.node.dds_node import load_settings
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.ros.bag_reading import open_bag, read_messages, select_streams
from posenet_ros.ros.bag_writing import write_messages
from posenet_ros.ros.conversions import pose_from_msg, stamp_to_ns
from posenet_ros.ros.dds import loopback_config
from posenet_ros.runtime.checkpoint import calibration_report
from posenet_ros.tools.make_bag import BASE_FROM_CAMERA

SCENE = ["width=64", "height=48", "hfov_deg=90", "frames_per_sequence=24", "train_sequences=3",
         "val_sequences=1", "test_sequences=2", "outside_sequences=1", "variations=[]"]
TRAIN = ["device=cpu", "model.backbone=resnet_tiny", "model.dropout=0.2", "data.resize=48",
         "data.crop=[44,60]", "batch_size=16", "lr=1e-3", "epochs=30", "data.val_split=''",
         "loss.kind=aleatoric", "model.aleatoric=per_axis"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("replay")
    paths = {"root": root, "scene": root / "scene", "run": root / "run", "bag": root / "bag_mcap"}
    assert main(["synth", "--quiet", str(paths["scene"]), *SCENE]) == 0
    assert main(["train", "--quiet", "--data", str(paths["scene"]), "--out", str(paths["run"]), *TRAIN]) == 0
    assert main(["calibrate", "--quiet", "--model", str(paths["run"]), "--data", str(paths["scene"]),
                 "--split", "val"]) == 0
    assert main(["make-bag", "--quiet", str(paths["scene"]), str(paths["bag"]), "--split", "test"]) == 0
    return paths


def _replay(trained: dict[str, Path], bag: Path, out: Path, *args: str) -> dict:
    run = str(trained["run"])
    assert main(["replay", "--quiet", str(bag), "--model", run, "--out", str(out), *args]) == 0
    return json.loads((out / "metrics.json").read_text())


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "frames.csv").open() as handle:
        return list(csv.DictReader(handle))


def _output_poses(out: Path) -> dict[str, dict[int, np.ndarray]]:
    """topic -> stamp -> 4x4 pose of the output bag's /relocalized_pose and camera_pose."""
    topics = ("/relocalized_pose", "/relocalization/camera_pose")
    poses: dict[str, dict[int, np.ndarray]] = {topic: {} for topic in topics}
    with open_bag(out / "output_bag") as reader:
        for connection, _, msg in read_messages(reader, out / "output_bag", topics):
            pose = pose_from_position_quat(*pose_from_msg(msg))
            poses[connection.topic][stamp_to_ns(msg.header.stamp)] = pose
    return poses


def _poses(out: Path) -> np.ndarray:
    keys = ("x", "y", "z", "qw", "qx", "qy", "qz")
    return np.array([[float(row[key]) for key in keys] for row in _rows(out)])


def test_the_output_bag_is_in_bag_time_from_the_first_frame_to_the_last(tmp_path):
    """The Humble finding: the map poses were stamped with the wall clock, so `ros2 bag info` gave the
    output bag of a 2023 recording a duration of about 3 years. They carry the first frame's stamp now."""
    frames = [image(i) for i in (0, 1, 2, 3, 4)]
    write_messages(tmp_path / "bag", [("/camera/image_raw", "sensor_msgs/msg/Image", image_stamp(i), msg)
                                      for i, msg in enumerate(frames)])
    model = make_checkpoint(tmp_path / "model.safetensors")
    with open_bag(tmp_path / "bag") as reader:
        streams = select_streams(reader, tmp_path / "bag")
    settings = NodeSettings(model=str(model), device="cpu", base_frame="", publish_unknown=True)
    run = run_in_process(tmp_path / "bag", settings, streams, progress=False)
    counts = write_messages(tmp_path / "out", run.messages)
    assert counts["/relocalization/map_poses"] == 1 and counts["/relocalized_pose"] == 5
    with open_bag(tmp_path / "out") as reader:
        assert (reader.start_time, reader.end_time) == (image_stamp(0), image_stamp(4) + 1)
        (connection,) = [c for c in reader.connections if c.topic == "/relocalization/map_poses"]
        ((_, timestamp, raw),) = list(reader.messages([connection]))
        map_poses = reader.deserialize(raw, connection.msgtype)
    assert timestamp == stamp_to_ns(map_poses.header.stamp) == image_stamp(0) and len(map_poses.poses) == 5


def test_replay_reproduces_eval_on_the_same_frames(trained, capsys):
    out = trained["root"] / "replay_det"
    metrics = _replay(trained, trained["bag"], out, "--mc-samples", "0")
    assert main(["eval", "--quiet", "--model", str(trained["run"]), "--data", str(trained["scene"]),
                 "--out", str(trained["root"] / "eval_det"), "--mc-samples", "0", "--batch-size", "1"]) == 0
    evaluated = json.loads((trained["root"] / "eval_det" / "metrics.json").read_text())["overall"]
    assert metrics["frames"] == metrics["frames_with_ground_truth"] == evaluated["frames"] == 48
    assert metrics["median_position_error_m"] == pytest.approx(evaluated["median_position_error_m"], abs=1e-6)
    # Replay and eval agree per frame to float32 rounding (quaternions within 1.2e-7, about 1e-5°).
    assert metrics["median_orientation_error_deg"] == pytest.approx(evaluated["median_orientation_error_deg"],
                                                                    abs=1e-4)
    assert metrics["dropped"] == metrics["rejected"] == metrics["failed"] == 0
    assert "report" in capsys.readouterr().out
    print("replay:", metrics["median_position_error_m"], metrics["median_orientation_error_deg"],
          "eval:", evaluated["median_position_error_m"], evaluated["median_orientation_error_deg"])


def test_replay_outputs(trained):
    out = trained["root"] / "replay_mc"
    metrics = _replay(trained, trained["bag"], out)
    rows = _rows(out)
    assert len(rows) == metrics["frames"] == 48
    assert all(float(row["sigma_position_m"]) > 0 for row in rows)
    assert set(metrics["uncertainty"]) == {"position", "rotation", "pose"}
    assert metrics["loop_closure"]["in_map_frames"] + metrics["loop_closure"]["out_of_map_frames"] == 48
    assert metrics["latency_ms"]["p50"] > 0 and metrics["throughput_fps"] > 0
    with open_bag(out / "output_bag") as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/relocalization/status"] == counts["/relocalization/loop_closure"] == 48
    assert counts["/relocalized_pose"] == metrics["policy"]["frames_published"]
    assert counts["/relocalization/uncertainty"] == 48 and counts["/relocalization/map_poses"] == 1
    # The bag has a robot (make-bag's /tf_static and odometry): /relocalized_pose is the base's pose,
    # the camera's own on relocalization/camera_pose.
    published = _output_poses(out)
    assert len(published["/relocalized_pose"]) == len(published["/relocalization/camera_pose"]) \
        == metrics["policy"]["frames_published"] > 0
    for stamp, map_from_base in published["/relocalized_pose"].items():
        np.testing.assert_allclose(map_from_base @ BASE_FROM_CAMERA,
                                   published["/relocalization/camera_pose"][stamp], atol=1e-9)
    html = (out / "report" / "index.html").read_text()
    for name in ("trajectory.png", "error_over_time.png", "error_cdf.png", "uncertainty_vs_error.png",
                 "loop_closure.png"):
        assert name in html and (out / "report" / name).stat().st_size > 5000
    # The same answers from the /tf ground truth as from the PoseStamped topic.
    by_tf = _replay(trained, trained["bag"], trained["root"] / "replay_tf", "--gt-tf", "map",
                    "camera_ground_truth")
    assert by_tf["median_position_error_m"] == pytest.approx(metrics["median_position_error_m"], abs=1e-9)
    # Batched replay (7 frames per network call, Monte-Carlo masks seeded per frame): the same answers.
    batched = _replay(trained, trained["bag"], trained["root"] / "replay_batch", "--batch", "7")
    assert batched["frames"] == 48
    np.testing.assert_allclose(_poses(trained["root"] / "replay_batch"), _poses(out), atol=1e-5)
    sigmas = [[float(row["sigma_position_m"]) for row in _rows(folder)]
              for folder in (out, trained["root"] / "replay_batch")]
    np.testing.assert_allclose(*sigmas, rtol=1e-4)


@pytest.mark.parametrize("storage, compressed", [("sqlite3", []), ("mcap", ["--compressed-format", "png"]),
                                                 ("sqlite3", ["--compressed-format", "jpeg"])])


def test_storages_and_image_transports(trained, storage, compressed):
    bag = trained["root"] / f"bag_{storage}_{'_'.join(compressed) or 'raw'}"
    flags = ["--compressed", *compressed] if compressed else []
    assert main(["make-bag", "--quiet", str(trained["scene"]), str(bag), "--storage", storage, *flags]) == 0
    reference = trained["root"] / "replay_det"
    if not reference.exists():
        _replay(trained, trained["bag"], reference, "--mc-samples", "0")
    out = trained["root"] / f"replay_{bag.name}"
    metrics = _replay(trained, bag, out, "--mc-samples", "0")
    assert metrics["frames"] == 48
    if "jpeg" in compressed:  # lossy: close, not equal
        assert np.abs(_poses(out) - _poses(reference)).max() < 0.5
    else:
        np.testing.assert_allclose(_poses(out), _poses(reference), rtol=0, atol=1e-9)


def test_no_fix_policy_on_the_walk_out_of_the_map(trained, capsys):
    """The test loop and a walk out of the mapped area: the frames flagged unknown or over the σ limits
    (the checkpoint's calibrated ones) publish no pose; the report counts them and gives the error
    percentiles of the published and the withheld frames; publish_unknown publishes them all."""
    bag = trained["root"] / "bag_outside"
    assert main(["make-bag", "--quiet", str(trained["scene"]), str(bag), "--split", "test", "--split",
                 "outside"]) == 0
    out = trained["root"] / "replay_outside"
    metrics = _replay(trained, bag, out)
    printed = capsys.readouterr().out
    policy, rows = metrics["policy"], _rows(out)
    limits = calibration_report(trained["run"])["sigma_limits"]
    assert (policy["max_position_sigma_m"], policy["max_rotation_sigma_deg"]) == (
        limits["position_m"], limits["rotation_deg"])
    for row in rows:
        confident = (row["known_place"] == "1" and float(row["sigma_position_m"]) <= limits["position_m"]
                     and float(row["sigma_rotation_deg"]) <= limits["rotation_deg"])
        assert row["published"] == str(int(confident)) and (row["reason"] == "confident") == confident
    outside = [row for row in rows if row["in_map"] == "0"]
    assert len(outside) >= 20 and sum(row["published"] == "1" for row in outside) <= len(outside) // 10
    withheld = {reason: sum(row["reason"] == reason for row in rows) for reason in
                ("unknown_place", "position_sigma", "rotation_sigma")}
    assert policy["withheld"] == {reason: n for reason, n in withheld.items() if n}
    assert policy["frames_published"] + policy["frames_withheld"] == metrics["frames"] == len(rows) == 72
    published, kept_back = policy["published_error"], policy["withheld_error"]
    assert published["frames"] == policy["frames_published"]
    assert kept_back["frames"] == policy["frames_withheld"]
    assert published["position_m"]["p99"] < kept_back["position_m"]["p50"]  # the heavy tail is withheld
    assert f"poses published {policy['frames_published']}, withheld {policy['frames_withheld']}" in printed
    print("published p50/p90/p99:", published["position_m"], "withheld:", kept_back["position_m"])
    with open_bag(out / "output_bag") as reader:
        connections = [c for c in reader.connections if c.topic == "/relocalized_pose"]
        stamps = [stamp for _, stamp, _ in reader.messages(connections=connections)]
    assert stamps == [int(row["stamp_ns"]) for row in rows if row["published"] == "1"]
    everything = _replay(trained, bag, trained["root"] / "replay_outside_all",
                         "--param", "publish_unknown:=true")
    assert everything["policy"]["frames_withheld"] == 0 and everything["policy"]["frames_published"] == 72
    np.testing.assert_array_equal(_poses(trained["root"] / "replay_outside_all"), _poses(out))


def test_live_replay_equals_in_process(trained):
    domain = domain_id(7)
    node = Process(["node", "--model", str(trained["run"]), "--params", str(PARAMS)], domain)
    try:
        node.wait_for_line("node: ready")
        settings = load_settings(PARAMS, str(trained["run"]))
        live = replay(trained["bag"], trained["root"] / "replay_live", settings, live=True, domain_id=domain,
                      dds_config=loopback_config(), progress=False)
    finally:
        node.stop()
    in_process = replay(trained["bag"], trained["root"] / "replay_in_process", settings, progress=False)
    # Live, only the published poses leave the node; the withheld frames are counted from the status.
    published = [row for row in _rows(trained["root"] / "replay_in_process") if row["published"] == "1"]
    assert in_process["frames"] == 48 and live["frames"] == len(published) >= 24
    assert live["runtime"] == "live" and live["processed"] == 48 and live["dropped"] == 0
    for key in ("frames_published", "frames_withheld", "withheld"):
        assert live["policy"][key] == in_process["policy"][key]
    keys = ("x", "y", "z", "qw", "qx", "qy", "qz")
    np.testing.assert_allclose(_poses(trained["root"] / "replay_live"),
                               [[float(row[key]) for key in keys] for row in published], rtol=1e-6, atol=1e-9)
    rows = _rows(trained["root"] / "replay_live")
    assert [row["known_place"] for row in rows] == [row["known_place"] for row in published]
    assert [row["stamp_ns"] for row in rows] == [row["stamp_ns"] for row in published]
    assert live["policy"]["published_error"]["position_m"] == pytest.approx(
        in_process["policy"]["published_error"]["position_m"], abs=1e-9)


def test_a_bag_without_transforms_replays_the_camera_pose(trained, caplog):
    """A bag without the robot's TF (recorded with a hand-held camera, or before make-bag wrote a robot):
    replayed with base_frame '' and a warning; the same camera answers as with the robot's bag."""
    bag = trained["root"] / "bag_without_tf"
    with open_bag(trained["bag"]) as reader:
        messages = [(c.topic, c.msgtype, log_ns, reader.deserialize(raw, c.msgtype))
                    for c, log_ns, raw in reader.messages() if c.topic not in ("/tf", "/tf_static")]
    write_messages(bag, messages, storage="mcap")
    out = trained["root"] / "replay_without_tf"
    metrics = _replay(trained, bag, out, "--mc-samples", "0")
    assert metrics["frames"] == 48 and metrics["no_transform"] == 0
    assert "has no transform of base_frame 'base_link'" in caplog.text
    published = _output_poses(out)
    for stamp, map_from_camera in published["/relocalized_pose"].items():
        np.testing.assert_allclose(map_from_camera, published["/relocalization/camera_pose"][stamp],
                                   atol=1e-12)
    reference = trained["root"] / "replay_det"
    if not reference.exists():
        _replay(trained, trained["bag"], reference, "--mc-samples", "0")
    np.testing.assert_allclose(_poses(out), _poses(reference), rtol=0, atol=1e-9)


def test_interrupted_replay_still_writes_everything(trained, monkeypatch):
    from posenet_ros.runtime.relocalizer import Relocalizer

    original, calls = Relocalizer.process, []

    def process(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 11:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Relocalizer, "process", process)
    out = trained["root"] / "replay_interrupted"
    assert main(["replay", "--quiet", str(trained["bag"]), "--model", str(trained["run"]),
                 "--out", str(out)]) == 130
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interrupted"] and metrics["frames"] == 10 and len(_rows(out)) == 10
    assert (out / "report" / "index.html").is_file()


def test_bad_bags_name_the_problem(trained, capsys):
    run, out = str(trained["run"]), str(trained["root"] / "bad")

    def error(*args: str) -> str:
        assert main(["replay", "--quiet", *args, "--model", run, "--out", out]) == 2
        return capsys.readouterr().err

    bag = str(trained["bag"])
    message = error(bag, "--gt-topic", "/vicon/pose")
    assert "/vicon/pose" in message and "/ground_truth/pose [geometry_msgs/msg/PoseStamped]" in message
    assert "/camera/camera_info" in error(bag, "--image-topic", "/nope")
    assert "sensor_msgs/msg/CameraInfo; expected" in error(bag, "--image-topic", "/camera/camera_info")
    assert "transforms found: base_link -> camera, map -> camera_ground_truth, odom -> base_link" in error(
        bag, "--gt-tf", "map", "base_link")
    assert "does not exist" in error(str(trained["root"] / "missing"))
    # A truncated file: the bag's storage cut in half.
    broken = trained["root"] / "bag_truncated"
    shutil.copytree(trained["bag"], broken)
    storage = next(broken.glob("*.mcap"))
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    assert "bag_truncated" in error(str(broken))
    # Ground truth that never overlaps the images: the bag rewritten with its poses an hour later.
    shifted = trained["root"] / "bag_shifted"
    with open_bag(trained["bag"]) as reader:
        messages = []
        for connection, log_ns, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            if connection.topic == "/ground_truth/pose":
                msg.header.stamp.sec += 3600
                log_ns += 3600 * 10**9
            messages.append((connection.topic, connection.msgtype, log_ns, msg))
    write_messages(shifted, messages, storage="sqlite3")
    message = error(str(shifted))
    assert "overlaps the ground truth (/ground_truth/pose)" in message and "1700003600.000" in message
    assert "images 1700000000.000" in message


def _median_position_error(run, scene, out) -> float:
    assert main(["eval", "--quiet", "--model", str(run), "--data", str(scene), "--out", str(out),
                 "--mc-samples", "0"]) == 0
    return json.loads((out / "metrics.json").read_text())["overall"]["median_position_error_m"]


@pytest.mark.slow
def test_replay_feeds_depth_from_the_bag_as_eval_does(trained_scene, trained_rgbd):
    scene, root = trained_scene[0], trained_rgbd.parent
    assert main(["make-bag", "--quiet", str(scene), str(root / "bag"), "--split", "test"]) == 0
    assert main(["replay", "--quiet", str(root / "bag"), "--model", str(trained_rgbd), "--out",
                 str(root / "replay"), "--mc-samples", "0"]) == 0
    metrics = json.loads((root / "replay" / "metrics.json").read_text())
    assert metrics["depth_topic"] == "/camera/depth/image_raw"
    assert metrics["frames"] == len(load_frames(scene, "test"))
    evaluated = _median_position_error(trained_rgbd, scene, root / "eval_replay_reference")
    assert metrics["median_position_error_m"] == pytest.approx(evaluated, abs=1e-6)
    # eval on the bag reads the depth topic too, and agrees with eval on the folder.
    assert main(["eval", "--quiet", "--model", str(trained_rgbd), "--data", str(root / "bag"),
                 "--out", str(root / "eval_bag"), "--mc-samples", "0"]) == 0
    on_bag = json.loads((root / "eval_bag" / "metrics.json").read_text())["overall"]
    assert on_bag["median_position_error_m"] == pytest.approx(evaluated, abs=1e-6)


@pytest.mark.slow
def test_replay_smooths_as_eval_does(smoothed):
    run, scene = smoothed["run"], smoothed["scene"]
    bag = run.parent / "bag"
    assert main(["make-bag", "--quiet", str(scene), str(bag), "--split", "test"]) == 0
    for replay_mode, eval_mode in (("node", "causal"), ("offline", "offline"), ("off", "off")):
        out = run.parent / f"replay_{replay_mode}"
        assert main(["replay", "--quiet", str(bag), "--model", str(run), "--out", str(out),
                     "--mc-samples", "0", "--smooth", replay_mode]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["smoothing"] == eval_mode and metrics["frames"] == smoothed["off"]["frames"]
        for key in ("median_position_error_m", "median_jitter_position_m"):
            if key in metrics:
                assert metrics[key] == pytest.approx(smoothed[eval_mode][key], abs=1e-5)
