"""data/colmap.py: COLMAP sparse models (text and binary) written from the synthetic renderer and read
back: poses, cameras (every supported model, distortion), geometric consistency, the block split,
the search order, and one-line errors naming the file and line (or record)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from dataset_support import make_frame
from geometry_check import COARSE_SCENE, as_sequences, consistent, rendered_frames

from posenet_ros.cli import main
from posenet_ros.core.camera import Intrinsics
from posenet_ros.data.colmap import CAMERA_MODELS, load_colmap, write_colmap
from posenet_ros.data.frames import DatasetError, SequenceToWrite
from posenet_ros.data.loading import detect_layouts, load_frames
from posenet_ros.data.synthetic import SceneConfig, SyntheticScene, distortion_maps


@pytest.fixture(scope="module")
def rendered():
    intrinsics, frames = rendered_frames(6, COARSE_SCENE)
    return frames, intrinsics


def padded(distortion: tuple[float, ...], count: int) -> tuple[float, ...]:
    return tuple(distortion) + (0.0,) * (count - len(distortion))


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("per_image_cameras", [False, True])
def test_model_round_trips_poses_cameras_and_geometry(tmp_path: Path, rendered, binary: bool,
                                                      per_image_cameras: bool):
    frames, intrinsics = rendered
    write_colmap(tmp_path, as_sequences(frames), intrinsics, binary=binary,
                 per_image_cameras=per_image_cameras)
    assert (tmp_path / "sparse/0" / ("images.bin" if binary else "images.txt")).is_file()
    records = load_colmap(tmp_path, "all")
    assert len(records) == len(frames)
    for index, (record, frame) in enumerate(zip(records, frames, strict=True)):
        np.testing.assert_allclose(record.world_from_cam, frame.world_from_cam, atol=1e-12)
        assert record.intrinsics == intrinsics
        assert (record.sequence, record.frame_index, record.depth_path, record.metric) == (
            "train-01", index, None, False)
        image = cv2.cvtColor(cv2.imread(str(record.image_path)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(image, frame.rgb_HW3)
    K = records[0].intrinsics.matrix()
    for a in range(len(frames) - 1):  # the rendered depth of a frame, moved by the loaded poses
        assert consistent(frames[a].depth_HW, frames[a + 1].depth_HW, K, records[a].world_from_cam,
                          records[a + 1].world_from_cam)


def test_reading_colmap_poses_as_camera_to_world_fails_the_consistency_check(tmp_path: Path, rendered):
    frames, intrinsics = rendered
    write_colmap(tmp_path, as_sequences(frames), intrinsics)
    records = load_colmap(tmp_path, "all")
    K = intrinsics.matrix()
    for a in range(len(frames) - 1):
        # cam_from_world, which images.txt stores, taken for world_from_cam:
        wrong_a, wrong_b = (np.linalg.inv(r.world_from_cam) for r in (records[a], records[a + 1]))
        assert not consistent(frames[a].depth_HW, frames[a + 1].depth_HW, K, wrong_a, wrong_b)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize(("model", "distortion", "same_focal"), [
    ("SIMPLE_PINHOLE", (), True),
    ("PINHOLE", (), False),
    ("SIMPLE_RADIAL", (-0.12, 0.0, 0.0, 0.0), True),
    ("RADIAL", (-0.12, 0.03, 0.0, 0.0), True),
    ("OPENCV", (-0.12, 0.03, 0.001, -0.002), False),
    ("FULL_OPENCV", (-0.12, 0.03, 0.001, -0.002, 0.01, 0.002, -0.001, 0.0005), False),
])
def test_each_camera_model_maps_to_opencv_intrinsics(tmp_path: Path, binary: bool, model: str,
                                                     distortion: tuple, same_focal: bool):
    intrinsics = Intrinsics(40, 30, 35.0, 35.0 if same_focal else 36.5, 19.25, 14.75, distortion)
    rng = np.random.default_rng(3)
    write_colmap(tmp_path, [SequenceToWrite("train", [make_frame(rng, 40, 30)])], intrinsics,
                 binary=binary, model=model)
    (record,) = load_colmap(tmp_path, "all")
    count = 0 if not distortion else 8 if model == "FULL_OPENCV" else 4
    assert record.intrinsics == Intrinsics(40, 30, 35.0, 35.0 if same_focal else 36.5, 19.25, 14.75,
                                           padded(distortion, count))
    if not binary:  # COLMAP's pixel convention: the top-left pixel's centre at (0.5, 0.5)
        fields = (tmp_path / "sparse/0/cameras.txt").read_text().splitlines()[-1].split()
        params = dict(zip(CAMERA_MODELS[model].params, map(float, fields[4:]), strict=True))
        assert fields[1] == model and (params["cx"], params["cy"]) == (19.75, 15.25)


def test_writer_picks_the_simplest_model_and_refuses_what_a_model_cannot_hold(tmp_path: Path):
    rng = np.random.default_rng(4)
    frame = make_frame(rng, 40, 30)
    cases = {(35.0, ()): "SIMPLE_PINHOLE", (36.0, ()): "PINHOLE", (35.0, (0.1, 0, 0, 0)): "SIMPLE_RADIAL",
             (35.0, (0.1, 0.02, 0, 0)): "RADIAL", (35.0, (0.1, 0.02, 0.001, 0)): "OPENCV"}
    for number, ((fy, distortion), model) in enumerate(cases.items()):
        root = tmp_path / str(number)
        write_colmap(root, [SequenceToWrite("train", [frame])], Intrinsics(40, 30, 35.0, fy, 19.5, 14.5,
                                                                            distortion))
        assert (root / "sparse/0/cameras.txt").read_text().splitlines()[-1].split()[1] == model
    with pytest.raises(ValueError, match="PINHOLE cannot hold"):
        write_colmap(tmp_path / "bad", [SequenceToWrite("train", [frame])],
                     Intrinsics(40, 30, 35.0, 35.0, 19.5, 14.5, (0.1, 0, 0, 0)), model="PINHOLE")


def test_block_split_per_image_folder_in_natural_name_order(tmp_path: Path):
    rng = np.random.default_rng(5)
    sequences = [SequenceToWrite("a", [make_frame(rng, 8, 6) for _ in range(100)]),
                 SequenceToWrite("b", [make_frame(rng, 8, 6) for _ in range(60)])]
    write_colmap(tmp_path, sequences, Intrinsics(8, 6, 7.0, 7.0, 3.5, 2.5), binary=True)
    test = load_colmap(tmp_path, "test")
    train = load_colmap(tmp_path, "train")
    assert [(r.sequence, r.frame_index) for r in test] == [("a-01", i) for i in range(75, 100)]
    assert len(train) == 75 + 60 and {r.sequence for r in train} == {"a-01", "b-02"}
    assert [r.image_path.name for r in train if r.sequence == "b-02"] == [f"{i:06d}.png" for i in range(60)]
    with pytest.raises(DatasetError, match="splits train, test, all"):
        load_colmap(tmp_path, "val")


def test_model_is_found_in_sparse_0_then_sparse_then_the_root(tmp_path: Path, rendered):
    frames, intrinsics = rendered
    write_colmap(tmp_path / "a", as_sequences(frames[:2]), intrinsics)
    expected = [r.world_from_cam for r in load_colmap(tmp_path / "a", "all")]
    shutil.move(tmp_path / "a/sparse/0", tmp_path / "model")
    for place in ("sparse", "."):
        target = tmp_path / "a" / place
        for file in (tmp_path / "model").iterdir():
            shutil.copy(file, target / file.name)
        loaded = load_colmap(tmp_path / "a", "all")
        np.testing.assert_array_equal([r.world_from_cam for r in loaded], expected)
    assert detect_layouts(tmp_path / "a") == ["colmap"]
    # sparse/0 comes first: an empty-listing model there wins over the one at the root
    (tmp_path / "a/sparse/0").mkdir()
    (tmp_path / "a/sparse/0/cameras.txt").write_text((tmp_path / "model/cameras.txt").read_text())
    (tmp_path / "a/sparse/0/images.txt").write_text("# no images\n")
    with pytest.raises(DatasetError, match=r"sparse/0/images.txt: the split has no frames"):
        load_colmap(tmp_path / "a", "all")


def test_synth_writes_a_distorted_colmap_capture_that_loads_through_load_frames(tmp_path: Path):
    out = tmp_path / "scene"
    distortion = (0.25, 0.1, 0.003, -0.002)
    assert main(["synth", "--quiet", "--layout", "colmap", "--distortion", ",".join(map(str, distortion)),
                 str(out), "width=64", "height=48", "frames_per_sequence=4", "train_sequences=1",
                 "outside_sequences=0", "val_sequences=0", "variations=[]"]) == 0
    records = load_frames(out, "all")
    assert [r.sequence for r in records] == ["test-02"] * 4 + ["train-01"] * 4  # sequences by name
    scene = SyntheticScene(SceneConfig(width=64, height=48, frames_per_sequence=4,
                                                  train_sequences=1, outside_sequences=0,
                                                  val_sequences=0, variations=[]))
    assert records[0].intrinsics == Intrinsics(64, 48, scene.intrinsics.fx, scene.intrinsics.fy,
                                               scene.intrinsics.cx, scene.intrinsics.cy, distortion)
    assert records[0].intrinsics.distorted and not records[0].metric
    maps = distortion_maps(records[0].intrinsics)
    for record, pose in zip(records[:4], scene.sequences[1].world_from_cam, strict=True):
        np.testing.assert_allclose(record.world_from_cam, pose, atol=1e-12)
        expected = cv2.remap(scene.render(pose).rgb_HW3, *maps, cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        image = cv2.cvtColor(cv2.imread(str(record.image_path)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(image, expected)


def _text_model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(6)
    write_colmap(tmp_path, [SequenceToWrite("train", [make_frame(rng, 8, 6) for _ in range(3)])],
                 Intrinsics(8, 6, 7.0, 7.0, 3.5, 2.5))
    return tmp_path / "sparse/0"


def _replace_line(path: Path, number: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = new
    path.write_text("\n".join(lines) + "\n")


def _bad_inputs() -> dict:
    def missing_cameras(model: Path) -> None:
        (model / "cameras.txt").unlink()

    def unparseable_image_line(model: Path) -> None:
        _replace_line(model / "images.txt", 6, "2 abc 0 0 0 0 0 0 1 train-01/000001.png")

    def unknown_model(model: Path) -> None:
        _replace_line(model / "cameras.txt", 3, "1 OPENCV_FISHEYE 8 6 7 7 4 3 0 0 0 0")

    def unknown_camera(model: Path) -> None:
        line = (model / "images.txt").read_text().splitlines()[5].split()
        _replace_line(model / "images.txt", 6, " ".join([*line[:8], "9", line[9]]))

    def missing_points_line(model: Path) -> None:
        lines = (model / "images.txt").read_text().splitlines()
        (model / "images.txt").write_text("\n".join(line for line in lines if line) + "\n")

    def missing_image(model: Path) -> None:
        (model.parent.parent / "images/train-01/000002.png").unlink()

    return {
        "missing_cameras": (missing_cameras, r"sparse/0/cameras.txt: no such COLMAP model file"),
        "unparseable_line": (unparseable_image_line, r"sparse/0/images.txt:6: not a number"),
        "unknown_model": (unknown_model, r"sparse/0/cameras.txt:3: unknown or unsupported camera model "
                                         "OPENCV_FISHEYE"),
        "unknown_camera": (unknown_camera, r"sparse/0/images.txt:6: camera 9 is not in cameras.txt"),
        "one_line_per_image": (missing_points_line, r"sparse/0/images.txt:5: expected the POINTS2D line"),
        "missing_image": (missing_image, r"000002.png: no such image file .*\(listed at .*images.txt:8\)"),
    }


@pytest.mark.parametrize("case", sorted(_bad_inputs()))
def test_bad_text_model_gives_one_line_naming_file_and_line(tmp_path: Path, case: str):
    spoil, message = _bad_inputs()[case]
    spoil(_text_model(tmp_path))
    with pytest.raises(DatasetError, match=message) as error:
        load_frames(tmp_path, "all")
    assert "\n" not in str(error.value)


def test_bad_binary_model_gives_one_line_naming_file_and_record(tmp_path: Path):
    rng = np.random.default_rng(7)
    write_colmap(tmp_path, [SequenceToWrite("train", [make_frame(rng, 8, 6) for _ in range(3)])],
                 Intrinsics(8, 6, 7.0, 7.0, 3.5, 2.5), binary=True)
    cameras = tmp_path / "sparse/0/cameras.bin"
    data = bytearray(cameras.read_bytes())
    data[12:16] = struct.pack("<i", 5)  # the first camera's model id: OPENCV_FISHEYE
    cameras.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"cameras.bin: camera record 0 \(byte 8\): unknown or "
                                           r"unsupported camera model OPENCV_FISHEYE"):
        load_colmap(tmp_path, "all")
    data[12:16] = struct.pack("<i", 1)  # PINHOLE: 4 params, of which the file holds 3
    cameras.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"cameras.bin: truncated at byte 32 \(file has 56 bytes\)"):
        load_colmap(tmp_path, "all")
    images = tmp_path / "sparse/0/images.bin"
    write_colmap(tmp_path / "ok", [SequenceToWrite("train", [make_frame(rng, 8, 6)])],
                 Intrinsics(8, 6, 7.0, 7.0, 3.5, 2.5), binary=True)
    shutil.copy(tmp_path / "ok/sparse/0/cameras.bin", cameras)
    images.write_bytes(images.read_bytes()[:-30])
    with pytest.raises(DatasetError, match=r"images.bin: truncated at byte \d+") as error:
        load_colmap(tmp_path, "all")
    assert "\n" not in str(error.value)


def test_pycolmap_reads_what_the_writer_writes_and_the_reader_reads_what_pycolmap_writes(tmp_path: Path,
                                                                                         rendered):
    """Cross-check against COLMAP's own reader where pycolmap is installed (not a dependency)."""
    pycolmap = pytest.importorskip("pycolmap")
    frames, intrinsics = rendered
    intrinsics = Intrinsics(64, 48, intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy,
                            (0.1, -0.02, 0.001, 0.002))
    for binary in (False, True):
        root = tmp_path / f"ours-{binary}"
        write_colmap(root, as_sequences(frames), intrinsics, binary=binary, per_image_cameras=True)
        reconstruction = pycolmap.Reconstruction(str(root / "sparse/0"))
        ours = load_colmap(root, "all")
        for image_id, image in reconstruction.images.items():
            cam_from_world = np.vstack([image.cam_from_world().matrix(), [0, 0, 0, 1]])
            np.testing.assert_allclose(np.linalg.inv(cam_from_world), ours[image_id - 1].world_from_cam,
                                       atol=1e-12)
            camera = reconstruction.cameras[image.camera_id]
            assert camera.model.name == "OPENCV"
            np.testing.assert_allclose(camera.params[2:4], [intrinsics.cx + 0.5, intrinsics.cy + 0.5])
        theirs = tmp_path / f"theirs-{binary}"
        (theirs / "sparse").mkdir(parents=True)
        (theirs / "images").symlink_to(root / "images")
        (reconstruction.write_text if binary else reconstruction.write_binary)(str(theirs / "sparse"))
        for a, b in zip(load_colmap(theirs, "all"), ours, strict=True):
            np.testing.assert_allclose(a.world_from_cam, b.world_from_cam, atol=1e-12)
            assert a.intrinsics == b.intrinsics


def test_image_names_may_hold_spaces(tmp_path: Path):
    model = _text_model(tmp_path)
    line = (model / "images.txt").read_text().splitlines()[5].split()
    _replace_line(model / "images.txt", 6, " ".join([*line[:9], "train-01/frame one.png"]))
    (tmp_path / "images/train-01/000001.png").rename(tmp_path / "images/train-01/frame one.png")
    names = [r.image_path.name for r in load_colmap(tmp_path, "all")]
    assert names == ["000000.png", "000002.png", "frame one.png"]
