"""data/nerf.py: NeRF captures (transforms.json of instant-ngp / nerfstudio, Blender-style split files)
written from the synthetic renderer and read back: poses (OpenGL camera axes), intrinsics (global,
per frame, from the field of view, with distortion), depth, geometric consistency, splits, and
one-line errors naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from dataset_support import make_frame
from geometry_check import COARSE_SCENE, as_sequences, consistent, rendered_frames

from posenet_ros.cli import main
from posenet_ros.core.camera import Intrinsics
from posenet_ros.data.frames import DatasetError, SequenceToWrite
from posenet_ros.data.loading import detect_layouts, load_frames
from posenet_ros.data.nerf import load_nerf, write_nerf


@pytest.fixture(scope="module")
def rendered():
    intrinsics, frames = rendered_frames(6, COARSE_SCENE)
    return frames, intrinsics


def loaded_depth(record) -> np.ndarray:
    raw = cv2.imread(str(record.depth_path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    return raw.astype(np.float64) * record.depth_unit_m


@pytest.mark.parametrize("per_frame_intrinsics", [False, True])
def test_capture_round_trips_poses_intrinsics_depth_and_geometry(tmp_path: Path, rendered,
                                                                 per_frame_intrinsics: bool):
    frames, intrinsics = rendered
    write_nerf(tmp_path, as_sequences(frames), intrinsics, depth=True,
               per_frame_intrinsics=per_frame_intrinsics)
    records = load_nerf(tmp_path, "all")
    assert len(records) == len(frames)
    for index, (record, frame) in enumerate(zip(records, frames, strict=True)):
        np.testing.assert_allclose(record.world_from_cam, frame.world_from_cam, atol=1e-12)
        assert record.intrinsics == intrinsics
        assert (record.sequence, record.frame_index, record.depth_unit_m, record.metric) == (
            "images/train-01", index, 1e-3, False)
        image = cv2.cvtColor(cv2.imread(str(record.image_path)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(image, frame.rgb_HW3)
        np.testing.assert_allclose(loaded_depth(record), frame.depth_HW, atol=5e-4)
    K = intrinsics.matrix()
    for a in range(len(frames) - 1):  # everything from disk: depth files, poses, K
        assert consistent(loaded_depth(records[a]), loaded_depth(records[a + 1]), K,
                          records[a].world_from_cam, records[a + 1].world_from_cam)


def test_reading_the_matrix_in_opencv_axes_fails_the_consistency_check(tmp_path: Path, rendered):
    frames, intrinsics = rendered
    write_nerf(tmp_path, as_sequences(frames), intrinsics, depth=True)
    document = json.loads((tmp_path / "transforms.json").read_text())
    records = load_nerf(tmp_path, "all")
    K = intrinsics.matrix()
    for a in range(len(frames) - 1):
        # the OpenGL-axes transform_matrix taken as world_from_cam in OpenCV axes, as it is in the file:
        wrong_a, wrong_b = (np.array(document["frames"][i]["transform_matrix"]) for i in (a, a + 1))
        assert not consistent(loaded_depth(records[a]), loaded_depth(records[a + 1]), K, wrong_a, wrong_b)
        assert consistent(loaded_depth(records[a]), loaded_depth(records[a + 1]), K,
                          records[a].world_from_cam, records[a + 1].world_from_cam)


def test_blender_style_split_files_field_of_view_and_paths_without_extension(tmp_path: Path, rendered):
    frames, intrinsics = rendered
    write_nerf(tmp_path, as_sequences(frames, ("train", "test")), intrinsics, split_files=True)
    assert detect_layouts(tmp_path) == ["nerf"]
    # Rewrite the train file as the Blender scenes have it: camera_angle_x only, no size, file paths
    # without extension and with unpadded numbers, listed out of order.
    train = json.loads((tmp_path / "transforms_train.json").read_text())
    for index, frame in enumerate(train["frames"]):
        old = tmp_path / frame["file_path"]
        old.rename(old.with_name(f"r_{index * 5}.png"))
        frame["file_path"] = f"./images/train-01/r_{index * 5}"
    blender = {"camera_angle_x": 2 * np.arctan(0.5 * intrinsics.width / intrinsics.fx),
               "frames": train["frames"][::-1]}
    (tmp_path / "transforms_train.json").write_text(json.dumps(blender, indent=4))
    records = load_frames(tmp_path, "train")
    assert [r.image_path.name for r in records] == ["r_0.png", "r_5.png", "r_10.png"]  # natural order
    assert [r.frame_index for r in records] == [0, 1, 2]
    for record, frame in zip(records, frames[:3], strict=True):
        np.testing.assert_allclose(record.world_from_cam, frame.world_from_cam, atol=1e-12)
        assert record.intrinsics.width == intrinsics.width and record.intrinsics.height == intrinsics.height
        np.testing.assert_allclose([record.intrinsics.fx, record.intrinsics.fy, record.intrinsics.cx,
                                    record.intrinsics.cy], [intrinsics.fx, intrinsics.fx,
                                                            (intrinsics.width - 1) / 2,
                                                            (intrinsics.height - 1) / 2], rtol=1e-12)
    test = load_frames(tmp_path, "test")
    assert [r.sequence for r in test] == ["images/test-02"] * 3 and test[0].depth_path is None
    with pytest.raises(DatasetError, match=r"transforms_val.json: no such NeRF transforms file"):
        load_frames(tmp_path, "val")


def test_one_transforms_file_is_split_by_time_blocks(tmp_path: Path):
    rng = np.random.default_rng(8)
    write_nerf(tmp_path, [SequenceToWrite("x", [make_frame(rng, 8, 6) for _ in range(110)])],
               Intrinsics(8, 6, 7.0, 7.0, 3.5, 2.5))
    test, train = load_nerf(tmp_path, "test"), load_nerf(tmp_path, "train")
    assert [r.frame_index for r in test] == list(range(75, 100))
    assert [r.frame_index for r in train] == [*range(75), *range(100, 110)]
    with pytest.raises(DatasetError, match="splits train, test"):
        load_nerf(tmp_path, "val")


def test_distortion_coefficients_and_the_pixel_convention(tmp_path: Path):
    rng = np.random.default_rng(9)
    intrinsics = Intrinsics(40, 30, 35.0, 36.0, 19.25, 14.75, (-0.12, 0.03, 0.001, -0.002, 0.01))
    write_nerf(tmp_path, [SequenceToWrite("train", [make_frame(rng, 40, 30)])], intrinsics)
    document = json.loads((tmp_path / "transforms.json").read_text())
    assert (document["cx"], document["cy"], document["k3"]) == (19.75, 15.25, 0.01)  # centre at (0.5, 0.5)
    (record,) = load_nerf(tmp_path, "all")
    assert record.intrinsics == intrinsics
    with pytest.raises(ValueError, match=r"k4\.\.k6"):
        write_nerf(tmp_path / "rational", [SequenceToWrite("train", [make_frame(rng, 40, 30)])],
                   Intrinsics(40, 30, 35.0, 36.0, 19.25, 14.75, (0, 0, 0, 0, 0, 0.1, 0, 0)))


def test_synth_writes_a_distorted_nerf_capture_with_depth(tmp_path: Path):
    out = tmp_path / "scene"
    assert main(["synth", "--quiet", "--layout", "nerf", "--distortion", "0.2,0.05,0,0,0.01", str(out),
                 "width=64", "height=48", "frames_per_sequence=4", "train_sequences=1",
                 "outside_sequences=0", "val_sequences=1", "variations=[]"]) == 0
    assert sorted(p.name for p in out.glob("transforms_*.json")) == [
        "transforms_test.json", "transforms_train.json", "transforms_val.json"]
    for split in ("train", "test", "val"):
        records = load_frames(out, split)
        assert len(records) == 4
        assert records[0].intrinsics.distortion == (0.2, 0.05, 0.0, 0.0, 0.01)
        assert all(r.depth_path.is_file() and not r.metric for r in records)


def _capture(tmp_path: Path) -> Path:
    rng = np.random.default_rng(10)
    write_nerf(tmp_path, [SequenceToWrite("train", [make_frame(rng, 8, 6) for _ in range(3)])],
               Intrinsics(8, 6, 7.0, 7.0, 3.5, 2.5))
    return tmp_path / "transforms.json"


def _edit(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document, indent=2))


def _frame_line(path: Path, index: int) -> int:
    """Line of the `index`-th '{' that opens a frame in an indent=2 dump."""
    lines = [n for n, line in enumerate(path.read_text().splitlines(), start=1) if line == "    {"]
    return lines[index]


def _bad_inputs() -> dict:
    def unparseable(path: Path) -> None:
        lines = path.read_text().splitlines()
        lines[4] = lines[4] + " oops"
        path.write_text("\n".join(lines))

    return {
        "missing_file": (lambda path: path.unlink(),
                         lambda path: r"transforms.json: no such NeRF transforms file"),
        "unparseable": (unparseable, lambda path: r"transforms.json:5: not valid JSON"),
        "unknown_model": (lambda path: _edit(path, lambda d: d.update(camera_model="FISHEYE_XYZ")),
                          lambda path: rf"transforms.json:{_frame_line(path, 0)} \(frames\[0\]\): unknown "
                          "camera model 'FISHEYE_XYZ'"),
        "fisheye": (lambda path: _edit(path, lambda d: d["frames"][1].update(camera_model="OPENCV_FISHEYE")),
                    lambda path: rf"transforms.json:{_frame_line(path, 1)} \(frames\[1\]\): camera model "
                    "OPENCV_FISHEYE is not supported"),
        "no_matrix": (lambda path: _edit(path, lambda d: d["frames"][2].pop("transform_matrix")),
                      lambda path: rf"transforms.json:{_frame_line(path, 2)} \(frames\[2\]\): no "
                      "'transform_matrix'"),
        "not_rigid": (lambda path: _edit(path, lambda d: d["frames"][1]["transform_matrix"][0].__setitem__(
            0, 2.0)), lambda path: rf"transforms.json:{_frame_line(path, 1)} \(frames\[1\]\): "
            "transform_matrix is not a rigid transform"),
        "no_focal": (lambda path: _edit(path, lambda d: d.pop("fl_x")),
                     lambda path: rf"transforms.json:{_frame_line(path, 0)} \(frames\[0\]\): no focal "
                     "length"),
        "k4": (lambda path: _edit(path, lambda d: d.update(k4=0.01)),
               lambda path: rf"transforms.json:{_frame_line(path, 0)} \(frames\[0\]\): k4 = 0.01"),
        "missing_image": (lambda path: (path.parent / "images/train-01/000001.png").unlink(),
                          lambda path: r"000001.png: no such image file .*\(listed at .*transforms.json:\d+ "
                          r"\(frames\[1\]\)\)"),
    }


@pytest.mark.parametrize("case", sorted(_bad_inputs()))
def test_bad_capture_gives_one_line_naming_file_and_line(tmp_path: Path, case: str):
    spoil, message = _bad_inputs()[case]
    path = _capture(tmp_path)
    spoil(path)
    expected = message(path)
    with pytest.raises(DatasetError, match=expected) as error:
        load_nerf(tmp_path, "all")
    assert "\n" not in str(error.value)
