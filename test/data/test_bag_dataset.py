"""Training and evaluation frames read straight from a rosbag2 (`data/bag_dataset.py`): a synthetic scene
written with `make-bag` (train and test splits) reads back as the folder's frames (pixels bit for bit,
poses, CameraInfo intrinsics, sequences, time-range splits) from mcap and sqlite3, raw and png; a model
trained from the bag equals one trained from the folder; and bag problems are errors naming them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from posenet_ros.cli import main
from posenet_ros.core.camera import FrameTransform
from posenet_ros.data.bag_dataset import load_bag_frames
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.frames import BagMessage, DatasetError
from posenet_ros.data.images import read_depth_mm, read_frame_depth, read_frame_rgb, read_rgb
from posenet_ros.data.loading import detect_layouts, load_frames
from posenet_ros.evaluation.evaluate import unknown_place_records
from posenet_ros.ros.bag_writing import write_messages
from posenet_ros.ros.conversions import RosbagsTypes, image_msg, pose_stamped
from posenet_ros.runtime.train_config import BagDataConfig

SCENE = ["width=64", "height=48", "hfov_deg=90", "frames_per_sequence=24", "train_sequences=3",
         "val_sequences=0", "test_sequences=2", "outside_sequences=0", "variations=[]"]
TRAIN = ["device=cpu", "model.backbone=resnet_tiny", "data.resize=48", "data.crop=[44,60]", "batch_size=16",
         "lr=1e-3", "epochs=8", "data.val_split=''"]
# make-bag stamps frames at 30 Hz with 5 s between sequences: the three train sequences span 0..12.3 s
# of the bag, the two test sequences 17.3..18.1 s and 23.1..23.8 s.
SPLIT_TIMES = "train=0:15,test=15:"
BAG_SPAN = "0..23.833 s"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bag_dataset")
    paths = {"root": root, "scene": root / "scene", "mcap": root / "bag_mcap",
             "sqlite3": root / "bag_sqlite3"}
    assert main(["synth", "--quiet", str(paths["scene"]), *SCENE]) == 0
    assert main(["make-bag", "--quiet", str(paths["scene"]), str(paths["mcap"]), "--split", "train",
                 "--split", "test"]) == 0
    assert main(["make-bag", "--quiet", str(paths["scene"]), str(paths["sqlite3"]), "--split", "train",
                 "--split", "test", "--storage", "sqlite3", "--compressed", "--compressed-format", "png",
                 "--no-depth"]) == 0
    return paths


@pytest.mark.parametrize("bag", ["mcap", "sqlite3"])
def test_bag_frames_equal_the_folder_frames(data, bag):
    assert detect_layouts(data[bag]) == ["rosbag2"]
    options = BagDataConfig(split_times=SPLIT_TIMES, use_depth=bag == "mcap")
    for split, sequences in (("train", ["seg-000", "seg-001", "seg-002"]), ("test", ["seg-003", "seg-004"])):
        folder = load_frames(data["scene"], split)
        records = load_frames(data[bag], split, bag=options)
        assert len(records) == len(folder) == 24 * len(sequences)
        expected = [(sequence, i) for sequence in sequences for i in range(24)]
        assert [(r.sequence, r.frame_index) for r in records] == expected
        for record, reference in zip(records, folder, strict=True):
            assert isinstance(record.image_path, BagMessage)
            # png (lossless) or rgb8: the pixels of the dataset's image file, bit for bit.
            np.testing.assert_array_equal(read_frame_rgb(record.image_path), read_rgb(reference.image_path))
            np.testing.assert_allclose(record.world_from_cam, reference.world_from_cam, rtol=0, atol=1e-12)
            assert record.intrinsics == reference.intrinsics  # from the bag's CameraInfo
            if options.use_depth:
                np.testing.assert_array_equal(read_frame_depth(record.depth_path),
                                              read_depth_mm(reference.depth_path))
            else:
                assert record.depth_path is None


def test_split_times_select_by_stamp(data):
    def select(spec: str, split: str) -> list[tuple[str, int]]:
        return [(r.sequence, r.frame_index) for r in load_bag_frames(data["mcap"], split,
                                                                       BagDataConfig(split_times=spec))]

    everything = select("", "any name")
    assert len(everything) == 120 and everything == select("", "test")  # no ranges: the whole bag
    assert select("a=0.5:1", "a") == [("seg-000", i) for i in range(15, 24)]  # frame 15 is at 0.5 s exactly
    # A split named twice gets both ranges; START is inclusive, END exclusive (seg-001 starts at 5.7667 s).
    assert select("b=0:0.1,b=5.7:5.8,c=1:2", "b") == [("seg-000", 0), ("seg-000", 1), ("seg-000", 2),
                                                      ("seg-001", 0)]
    assert select("c=20:", "c") == [("seg-004", i) for i in range(24)]  # open end
    with pytest.raises(DatasetError, match=rf"split 'val' \(30:40 s\) holds no frame.*{BAG_SPAN}"):
        load_bag_frames(data["mcap"], "val", BagDataConfig(split_times=f"{SPLIT_TIMES},val=30:40"))
    with pytest.raises(DatasetError, match=r"no time range for split 'outside' .*it has test, train"):
        load_bag_frames(data["mcap"], "outside", BagDataConfig(split_times=SPLIT_TIMES))
    for bad in ("train=5", "train=a:b", "train=10:5", "=0:1"):
        with pytest.raises(ValueError, match="split_times"):
            BagDataConfig(split_times=bad)


def test_unknown_place_splits_of_a_bag_need_their_own_time_range(data):
    # Without a range of its own, 'outside' would be the whole bag, i.e. mapped places.
    assert unknown_place_records(data["mcap"], None, bag=BagDataConfig()) == {}
    with_outside = BagDataConfig(split_times=f"{SPLIT_TIMES},outside=20:")
    found = unknown_place_records(data["mcap"], None, bag=with_outside)
    assert list(found) == ["outside"] and {r.sequence for r in found["outside"]} == {"seg-004"}


def test_pose_dataset_reads_bag_frames_in_worker_processes(data):
    transform = FrameTransform(resize=48, crop=(44, 60))
    bag_records = load_frames(data["mcap"], "test", bag=BagDataConfig(split_times=SPLIT_TIMES))
    folder = next(iter(DataLoader(PoseDataset(load_frames(data["scene"], "test"), transform), batch_size=48)))
    for workers in (0, 2):  # each worker opens its own reader after the fork
        loader = DataLoader(PoseDataset(bag_records, transform), batch_size=12, num_workers=workers)
        batches = list(loader)
        assert torch.equal(torch.cat([b["image"] for b in batches]), folder["image"])
        assert torch.equal(torch.cat([b["K"] for b in batches]), folder["K"])
        torch.testing.assert_close(torch.cat([b["pose"] for b in batches]), folder["pose"], rtol=0, atol=1e-6)


def test_bag_frames_are_decoded_once_into_the_cache(data, tmp_path):
    transform = FrameTransform(resize=40, crop=(36, 48), random_crop=True, brightness=0.2)
    options = BagDataConfig(split_times=SPLIT_TIMES, use_depth=True)
    bag_records = load_frames(data["mcap"], "test", bag=options)
    direct = PoseDataset(bag_records, transform, seed=2, with_depth=True)
    cached = PoseDataset(bag_records, transform, seed=2, with_depth=True, cache_dir=tmp_path)
    for index in (0, 7, len(direct) - 1):
        for key in ("image", "depth", "K", "pose"):
            assert torch.equal(direct[index][key], cached[index][key]), key
    [built] = tmp_path.iterdir()  # its key covers the bag's files, the topic and the message times
    assert built.name == cached.cache.key
    assert (built / "depth.f32").is_file()


def test_ground_truth_options_and_errors(data):
    by_tf = load_bag_frames(data["mcap"], "test", BagDataConfig(split_times=SPLIT_TIMES,
                                                                         gt_tf="map camera_ground_truth"))
    by_topic = load_bag_frames(data["mcap"], "test", BagDataConfig(split_times=SPLIT_TIMES))
    np.testing.assert_allclose([r.world_from_cam for r in by_tf], [r.world_from_cam for r in by_topic],
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"no ground-truth topic /mocap/pose; it has: .*/camera/image_raw "
                                         r"\[sensor_msgs/msg/Image\].*/ground_truth/pose"):
        load_bag_frames(data["mcap"], "test", BagDataConfig(gt_topic="/mocap/pose"))
    with pytest.raises(ValueError,
                       match=r"no transform world -> body .*transforms found: .*map -> camera_ground_truth"):
        load_bag_frames(data["mcap"], "test", BagDataConfig(gt_tf="world body"))
    with pytest.raises(ValueError, match=r"no image topic /cam; it has: "):
        load_bag_frames(data["mcap"], "test", BagDataConfig(image_topic="/cam"))
    with pytest.raises(ValueError, match="gt_tf must be 'PARENT CHILD'"):
        BagDataConfig(gt_tf="map")


def _small_bag(path: Path, storage: str, image_s: list[float], truth_s: list[float]) -> Path:
    """Images of 8x6 px (value = index) at `image_s` and ground-truth poses at `truth_s` (x = time)."""
    types, start = RosbagsTypes(), 1_700_000_000 * 10**9
    messages = []
    for i, t in enumerate(image_s):
        stamp = start + round(t * 1e9)
        pixels = np.full((6, 8, 3), i, np.uint8)
        messages.append(("/camera/image_raw", "sensor_msgs/msg/Image", stamp,
                         image_msg(types, pixels, stamp, "camera", "rgb8")))
    for t in truth_s:
        stamp = start + round(t * 1e9)
        messages.append(("/ground_truth/pose", "geometry_msgs/msg/PoseStamped", stamp,
                         pose_stamped(types, stamp, "map", [t, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])))
    messages.sort(key=lambda message: message[2])
    write_messages(path, messages, storage=storage)
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_frames_without_ground_truth_are_dropped_and_sequences_cut_at_gaps(tmp_path, storage, caplog):
    # Ground truth every 0.05 s up to 2.1 s: the image at 2.2 s has none; 0.2 -> 2.0 s is a new sequence.
    bag = _small_bag(tmp_path / "bag", storage, [0.0, 0.1, 0.2, 2.0, 2.1, 2.2],
                     [k * 0.05 for k in range(43)])
    with caplog.at_level(logging.WARNING, logger="posenet_ros.data.bag_dataset"):
        records = load_frames(bag, "train")
        load_frames(bag, "test")  # the same index: warned once
    assert [(r.sequence, r.frame_index) for r in records] == [("seg-000", 0), ("seg-000", 1), ("seg-000", 2),
                                                              ("seg-001", 0), ("seg-001", 1)]
    assert [read_frame_rgb(r.image_path)[0, 0, 0] for r in records] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([r.world_from_cam[0, 3] for r in records], [0.0, 0.1, 0.2, 2.0, 2.1],
                               atol=1e-9)
    assert records[0].intrinsics is None  # no CameraInfo in this bag
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 1 of 6 images" in warnings[0]
    far = _small_bag(tmp_path / "far", storage, [0.0, 0.1], [100.0, 100.1])
    with pytest.raises(ValueError, match=r"no image of /camera/image_raw .* overlaps the ground truth"):
        load_frames(far, "train")


def _eval(model: Path, data: Path, out: Path, *flags: str) -> dict:
    assert main(["eval", "--quiet", "--model", str(model), "--data", str(data), "--out", str(out),
                 "--mc-samples", "0", *flags]) == 0
    return json.loads((out / "metrics.json").read_text())["overall"]


@pytest.mark.slow
def test_trained_from_the_bag_equals_trained_from_the_folder(data, capsys):
    root = data["root"]
    assert main(["train", "--quiet", "--data", str(data["scene"]), "--out", str(root / "run_folder"),
                 *TRAIN]) == 0
    assert main(["train", "--quiet", "--data", str(data["mcap"]), "--out", str(root / "run_bag"), *TRAIN,
                 "--split-times", SPLIT_TIMES]) == 0
    stored = json.loads((root / "run_bag" / "config.json").read_text())["data"]["bag"]
    assert stored["split_times"] == SPLIT_TIMES and stored["gt_topic"] == ""
    from_folder = _eval(root / "run_folder", data["scene"], root / "eval_folder")
    from_bag = _eval(root / "run_bag", data["scene"], root / "eval_bag_model")
    # The checkpoint's bag options choose the test frames of the bag: the folder's test split.
    on_bag = _eval(root / "run_bag", data["mcap"], root / "eval_on_bag")
    on_png = _eval(root / "run_folder", data["sqlite3"], root / "eval_on_png", "--split-times", SPLIT_TIMES)
    for name, values in (("folder-trained", from_folder), ("bag-trained", from_bag),
                         ("bag-trained, eval --data BAG", on_bag), ("folder-trained, png bag", on_png)):
        print(f"{name}: median {values['median_position_error_m']!r} m, "
              f"{values['median_orientation_error_deg']!r} deg")  # shown if an assertion below fails
    assert from_folder["frames"] == from_bag["frames"] == on_bag["frames"] == on_png["frames"] == 48
    for key in ("median_position_error_m", "median_orientation_error_deg", "mean_position_error_m"):
        assert from_bag[key] == pytest.approx(from_folder[key], rel=1e-5, abs=1e-7)
        assert on_bag[key] == pytest.approx(from_bag[key], rel=1e-9, abs=1e-12)
        assert on_png[key] == pytest.approx(from_folder[key], rel=1e-9, abs=1e-12)
    # Calibration reads the bag too; the stored split_times have no 'val', so it says which exist.
    assert main(["calibrate", "--quiet", "--model", str(root / "run_bag"), "--data", str(data["mcap"]),
                 "--split", "val"]) == 2
    assert "no time range for split 'val'" in capsys.readouterr().err
    assert main(["calibrate", "--quiet", "--model", str(root / "run_bag"), "--data", str(data["mcap"]),
                 "--split", "test", "--mc-samples", "4"]) == 0
    assert "calibrated on 48 frames of 'test' and 72 of 'train'" in capsys.readouterr().out
