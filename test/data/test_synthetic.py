"""data/synthetic.py, the synthetic scene: determinism, sequence design, variations, and geometric
consistency of what `posenet-ros synth` writes, read back through the real 7-Scenes and Cambridge
loaders."""

import json

import cv2
import numpy as np
import pytest
from geometry_check import assert_consistent, reprojected_depth_error

from posenet_ros.cli import build_parser, main
from posenet_ros.core.camera import Intrinsics
from posenet_ros.data.cambridge import load_cambridge
from posenet_ros.data.frames import RenderedFrame
from posenet_ros.data.images import read_depth_mm
from posenet_ros.data.loading import load_frames
from posenet_ros.data.seven_scenes import load_seven_scenes
from posenet_ros.data.synthetic import (
    PARTITION_X,
    SINGLE_RECORDING_LAYOUTS,
    SYNTHETIC_LAYOUTS,
    SceneConfig,
    SyntheticScene,
    distorted_frames,
    distortion_maps,
)

SMALL = ["width=160", "height=120", "frames_per_sequence=30", "train_sequences=1", "outside_sequences=0",
         "val_sequences=0", "variations=[]"]
SMALL_CONFIG = SceneConfig(width=160, height=120, frames_per_sequence=30, train_sequences=1,
                           outside_sequences=0, val_sequences=0, variations=[])


@pytest.fixture(scope="module")
def small_scene() -> SyntheticScene:
    return SyntheticScene(SceneConfig(width=160, height=120, frames_per_sequence=24))


def test_rendering_is_deterministic_for_a_seed_and_differs_between_seeds():
    config = SceneConfig(width=64, height=48, frames_per_sequence=4, variations=[])
    a, b = SyntheticScene(config), SyntheticScene(config)
    other = SyntheticScene(SceneConfig(width=64, height=48, frames_per_sequence=4, variations=[], seed=1))
    pose = a.sequences[0].world_from_cam[1]
    frame_a, frame_b = a.render(pose), b.render(pose)
    np.testing.assert_array_equal(frame_a.rgb_HW3, frame_b.rgb_HW3)
    np.testing.assert_array_equal(frame_a.depth_HW, frame_b.depth_HW)
    assert np.abs(other.render(pose).rgb_HW3.astype(int) - frame_a.rgb_HW3).mean() > 10
    np.testing.assert_array_equal(a.sequences[2].world_from_cam[3], b.sequences[2].world_from_cam[3])



def test_adding_test_loops_changes_no_other_sequence():
    def plans(test_sequences: int) -> list:
        return SyntheticScene(SceneConfig(width=16, height=12, frames_per_sequence=8, train_sequences=3,
                                          test_sequences=test_sequences, variations=["blur"])).sequences
    one, three = plans(1), plans(3)
    assert [p.split for p in three] == [p.split for p in one] + ["test", "test"]
    for a, b in zip(one, three, strict=False):  # same poses, and same index (the frames' render seeds)
        np.testing.assert_array_equal(np.array(a.world_from_cam), np.array(b.world_from_cam))
    loops = [np.array(p.world_from_cam)[:, :2, 3] for p in three if p.split == "test"]
    radii = [np.linalg.norm(xy.std(axis=0)) for xy in loops]
    assert len(set(np.round(radii, 3))) == 3  # the extra loops are other loops, between the training ones


def test_images_are_textured_and_depth_is_inside_the_room(small_scene):
    frame = small_scene.render(small_scene.sequences[0].world_from_cam[0])
    assert frame.rgb_HW3.shape == (120, 160, 3) and frame.rgb_HW3.dtype == np.uint8
    assert frame.rgb_HW3.std() > 25  # photographs and patterns, not flat colour
    # The room is 12 x 6 x 3 m, so no depth exceeds its diagonal and every pixel hits something.
    assert frame.depth_HW.dtype == np.float32
    assert 0.05 < frame.depth_HW.min() and frame.depth_HW.max() < 13.8


def test_sequences_cover_the_map_revisit_it_and_one_leaves_it(small_scene):
    by_split = {}
    for plan in small_scene.sequences:
        by_split.setdefault(plan.split, []).append(plan)
    assert sorted(by_split) == ["blur", "lighting", "occlusion", "outside", "test", "train", "val"]
    train = np.array([p[:3, 3] for plan in by_split["train"] for p in plan.world_from_cam])
    test = np.array([p[:3, 3] for p in by_split["test"][0].world_from_cam])
    assert all(all(plan.in_map) for plan in by_split["train"] + by_split["test"])
    # Test cameras revisit the training places (within 0.6 m) but not the same poses (> 5 cm).
    nearest = np.linalg.norm(test[:, None] - train[None], axis=2).min(axis=1)
    assert nearest.max() < 0.6 and np.median(nearest) > 0.05
    outside = by_split["outside"][0]
    assert outside.in_map[0] and not outside.in_map[-1]
    x = np.array([p[0, 3] for p in outside.world_from_cam])
    assert x[0] < PARTITION_X < x[-1]
    assert np.array_equal(np.array(outside.in_map), x < PARTITION_X)
    # Trajectories are smooth: consecutive cameras at most 0.6 m apart for 24 frames per loop.
    steps = np.linalg.norm(np.diff(train[:24], axis=0), axis=1)
    assert steps.max() < 0.6


def test_photometric_variations_change_the_image_not_the_geometry(small_scene):
    plans = {plan.split: plan for plan in small_scene.sequences}
    pose = plans["test"].world_from_cam[5]
    clean = small_scene.render(pose, None, frame_seed=5)
    for variation in ("lighting", "blur"):
        changed = small_scene.render(pose, variation, frame_seed=5)
        np.testing.assert_array_equal(changed.depth_HW, clean.depth_HW)
        assert np.abs(changed.rgb_HW3.astype(int) - clean.rgb_HW3).mean() > 3, variation
    occluded = small_scene.render(pose, "occlusion", frame_seed=5)
    near = occluded.depth_HW < 0.8
    assert 0.1 < near.mean() < 0.6  # an object in front of the camera hides part of the view
    assert (clean.depth_HW[near] > 0.8).all()


def test_7scenes_layout_is_geometrically_consistent(tmp_path):
    out = tmp_path / "scene"
    assert main(["synth", "--quiet", "--layout", "7scenes", str(out), *SMALL]) == 0
    summary = json.loads((out / "synthetic.json").read_text())
    assert summary["frames"] == 2 * 30 and summary["render_seconds_per_frame"] > 0
    assert [s["split"] for s in summary["sequences"]] == ["train", "test"]
    records = load_seven_scenes(out, "train")
    assert len(records) == 30 and records[0].depth_path is not None
    K = records[0].intrinsics.matrix()
    errors = []
    for a, b in [(0, 1), (10, 11), (20, 21)]:
        depth_a, depth_b = read_depth_mm(records[a].depth_path), read_depth_mm(records[b].depth_path)
        error = reprojected_depth_error(depth_a, depth_b, K, records[a].world_from_cam,
                                        records[b].world_from_cam)
        assert len(error) > 0.3 * depth_a.size  # the frames overlap
        errors.append(np.median(error))
    assert max(errors) < 0.01, errors


def test_cambridge_layout_poses_are_geometrically_consistent(tmp_path):
    out = tmp_path / "scene"
    assert main(["synth", "--quiet", "--layout", "cambridge", str(out), *SMALL]) == 0
    records = load_cambridge(out, "train")
    assert len(records) == 30 and records[0].depth_path is None
    # Cambridge has no depth: render the known scene points with the renderer's exact geometry and
    # check them with the poses as the Cambridge loader reads them from dataset_train.txt.
    scene = SyntheticScene(SMALL_CONFIG)
    K = records[0].intrinsics.matrix()
    for a, b in [(0, 1), (15, 16)]:
        depth_a = scene.render(scene.sequences[0].world_from_cam[a]).depth_HW
        depth_b = scene.render(scene.sequences[0].world_from_cam[b]).depth_HW
        error = reprojected_depth_error(depth_a, depth_b, K, records[a].world_from_cam,
                                        records[b].world_from_cam)
        assert len(error) > 0.3 * depth_a.size
        assert np.median(error) < 0.01
    # The quaternion in the file is the world-to-camera rotation: reading it as camera-to-world
    # (the other convention) breaks the geometry.
    wrong = records[1].world_from_cam.copy()
    wrong[:3, :3] = wrong[:3, :3].T
    depth_a = scene.render(scene.sequences[0].world_from_cam[0]).depth_HW
    depth_b = scene.render(scene.sequences[0].world_from_cam[1]).depth_HW
    error = reprojected_depth_error(depth_a, depth_b, K, records[0].world_from_cam, wrong)
    assert len(error) == 0 or np.median(error) > 0.1


def test_synth_refuses_a_non_empty_folder_and_bad_config(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("keep me")
    assert main(["synth", "--quiet", str(tmp_path), *SMALL]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "old.txt").read_text() == "keep me"
    assert main(["synth", "--quiet", str(tmp_path / "new"), "widht=10"]) == 2
    assert "unknown config key(s): widht" in capsys.readouterr().err
    assert main(["synth", "--quiet", str(tmp_path / "new"), "variations=[rain]"]) == 2
    assert "unknown variation" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["7scenes-jpg", "7scenes-rgb", "7scenes-flat", "tum"])
def test_user_layouts_read_back_geometrically_consistent(tmp_path, layout):
    out = tmp_path / layout
    assert main(["synth", "--quiet", "--layout", layout, str(out), "width=64", "height=48",
                 "frames_per_sequence=50", "train_sequences=1", "test_sequences=1", "outside_sequences=0",
                 "val_sequences=0", "variations=[]"]) == 0
    summary = json.loads((out / "synthetic.json").read_text())
    train, test = load_frames(out, "train"), load_frames(out, "test")
    scene = SyntheticScene(SceneConfig(**summary["config"]))
    poses = np.concatenate([plan.world_from_cam for plan in scene.sequences])
    if layout in SINGLE_RECORDING_LAYOUTS:  # one recording of 100 frames, split by time blocks
        assert [s["first_frame"] for s in summary["sequences"]] == [0, 50]
        assert (len(train), len(test)) == (75, 25) and test[0].frame_index == 75
    else:
        assert (len(train), len(test)) == (50, 50)
        poses = poses[:50]
    for record in train[:50]:
        np.testing.assert_allclose(record.world_from_cam, poses[record.frame_index], rtol=0, atol=1e-9)
    pairs = [(0, 2), (20, 23)]
    if layout == "7scenes-rgb":
        assert train[0].depth_path is None
        assert_consistent(train, pairs, depths=[scene.render(r.world_from_cam).depth_HW for r in train])
    else:
        assert_consistent(train, pairs)


def test_cli_offers_every_synthetic_layout():
    parser = build_parser()
    for layout in SYNTHETIC_LAYOUTS:
        assert parser.parse_args(["synth", "--layout", layout, "out"]).layout == layout
def test_distortion_maps_send_each_distorted_pixel_to_the_pinhole_pixel_the_lens_distorts_onto_it():
    intrinsics = Intrinsics(96, 72, 80.0, 82.0, 47.5, 35.5, (0.25, 0.1, 0.003, -0.002, 0.01))
    map_x, map_y = distortion_maps(intrinsics)
    pinhole_uv = np.stack([map_x, map_y], axis=-1).reshape(-1, 2).astype(np.float64)
    K = intrinsics.matrix()
    rays = np.linalg.solve(K, np.concatenate([pinhole_uv, np.ones((len(pinhole_uv), 1))], axis=1).T).T
    distorted, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), K, np.asarray(intrinsics.distortion))
    u, v = np.meshgrid(np.arange(96), np.arange(72))
    np.testing.assert_allclose(distorted.reshape(72, 96, 2), np.stack([u, v], axis=-1), atol=2e-3)
    assert np.abs(map_x - u).max() > 5  # the lens moves the corners by several pixels
    # A smooth image distorted with the maps and undistorted by OpenCV comes back.
    waves = np.sin(u / 5.0)[..., None] * np.cos(v[..., None] / 7.0 + np.arange(3))
    pattern = (127 + 100 * waves).astype(np.uint8)
    frame = RenderedFrame(rgb_HW3=pattern, depth_HW=np.ones((72, 96), np.float32), world_from_cam=np.eye(4))
    (seen,) = distorted_frames(iter([frame]), (map_x, map_y))
    recovered = cv2.undistort(seen.rgb_HW3, K, np.asarray(intrinsics.distortion))
    inner = (slice(12, -12), slice(12, -12))
    assert np.abs(seen.rgb_HW3[inner].astype(int) - pattern[inner]).mean() > 4  # measured 5.9
    assert np.abs(recovered[inner].astype(int) - pattern[inner]).mean() < 1  # measured 0.29


@pytest.mark.parametrize("world_axes, up_world", [("y_down", [0.0, -1.0, 0.0]), ("y_up", [0.0, 1.0, 0.0]),
                                                  ("z_up", [0.0, 0.0, 1.0])])
def test_world_axes_and_room_scale_rewrite_poses_and_depth_but_not_images(world_axes, up_world):
    base_config = SceneConfig(width=64, height=48, frames_per_sequence=24, variations=[], outside_sequences=0)
    base = SyntheticScene(base_config)
    changed = SyntheticScene(SceneConfig(width=64, height=48, frames_per_sequence=24, variations=[],
                                         outside_sequences=0, world_axes=world_axes, room_scale=2.5))
    for plan_base, plan in zip(base.sequences, changed.sequences, strict=True):
        for pose_base, pose in zip(plan_base.world_from_cam, plan.world_from_cam, strict=True):
            rotation = pose[:3, :3]
            np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
            assert np.linalg.det(rotation) == pytest.approx(1.0)
            # The camera height (render z) is now along the world's up axis, scaled.
            assert pose[:3, 3] @ up_world == pytest.approx(2.5 * pose_base[2, 3])
            # The camera's down axis (y) points as far downwards in both worlds.
            assert rotation[:, 1] @ up_world == pytest.approx(pose_base[2, 1])
    pose_base, pose = base.sequences[0].world_from_cam[2], changed.sequences[0].world_from_cam[2]
    frame_base, frame = base.render(pose_base), changed.render(pose)
    np.testing.assert_array_equal(frame.rgb_HW3, frame_base.rgb_HW3)
    np.testing.assert_allclose(frame.depth_HW, 2.5 * frame_base.depth_HW, rtol=1e-5)
    # Depth is consistent with the written poses between two frames of the changed scene.
    other = changed.sequences[0].world_from_cam[3]
    error = reprojected_depth_error(frame.depth_HW, changed.render(other).depth_HW,
                                    changed.intrinsics.matrix(), pose, other)
    assert np.median(error) < 0.02 * 2.5


def test_heading_range_keeps_every_loop_camera_heading_inside_it():
    scene = SyntheticScene(SceneConfig(width=16, height=12, frames_per_sequence=40, variations=[],
                                       outside_sequences=0, heading_deg=[90.0, 180.0]))
    for plan in scene.sequences:
        forward = np.array(plan.world_from_cam)[:, :3, 2]
        heading = np.degrees(np.arctan2(forward[:, 1], forward[:, 0]))
        assert heading.min() >= 90.0 - 1e-6 and heading.max() <= 180.0 + 1e-6
        assert heading.max() - heading.min() > 60.0  # the range is swept, not one direction
    default = SyntheticScene(SceneConfig(width=16, height=12, frames_per_sequence=40, variations=[],
                                         outside_sequences=0))
    forward = np.array(default.sequences[0].world_from_cam)[:, :3, 2]
    assert np.ptp(np.unwrap(np.arctan2(forward[:, 1], forward[:, 0]))) > np.radians(300)  # all around
    with pytest.raises(ValueError, match="heading_deg"):
        SceneConfig(heading_deg=[180.0, 90.0])
    with pytest.raises(ValueError, match="world_axes"):
        SceneConfig(world_axes="x_up")
