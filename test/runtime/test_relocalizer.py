"""runtime/relocalizer.py: the same frame gives the same estimate as `posenet-ros eval`'s path; bad
images are clear errors; the loop-closure flag follows the hysteresis; an RGB-D checkpoint gets the
depth image (and, trained, answers depth holes with a finite pose and a larger covariance: slow);
temporal smoothing on and off; a distorted query camera is undistorted, pose regression resamples
another query camera to the checkpoint's camera, and scene coordinates solve with the query's pinhole
K."""

import json

import numpy as np
import pytest
import torch
from geometry_check import distort
from node_support import depth_frame, make_checkpoint, random_temporal, rgb_frame, stamp

from posenet_ros.cli import main
from posenet_ros.core.camera import Intrinsics, crop_box, input_intrinsics
from posenet_ros.core.config import config_from_dict
from posenet_ros.core.undistortion import resample_rgb, resampling_maps, undistort_rgb
from posenet_ros.data.dataset import hole_mask
from posenet_ros.data.frames import RenderedFrame
from posenet_ros.data.images import read_frame_depth, read_frame_rgb, read_rgb
from posenet_ros.data.loading import load_frames
from posenet_ros.evaluation.predict import predict
from posenet_ros.inference.loop_closure import LoopClosureConfig
from posenet_ros.inference.temporal import TemporalCalibration
from posenet_ros.inference.uncertainty import UncertaintyConfig
from posenet_ros.models.posenet import ModelConfig, PoseNet
from posenet_ros.models.scene_coordinates import SceneCoordinateConfig, SceneCoordinateNet
from posenet_ros.runtime.checkpoint import load_model, save_checkpoint, store_calibration, store_temporal
from posenet_ros.runtime.methods import PoseRegression
from posenet_ros.runtime.relocalizer import Relocalizer
from posenet_ros.runtime.train_config import TrainConfig

CONFIG = {"model": {"backbone": "resnet_tiny", "feature_dim": 64, "aleatoric": "per_axis"},
          "data": {"resize": 24, "crop": [20, 28]}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("relocalizer")
    assert main(["synth", "--quiet", str(root / "scene"), "width=40", "height=30", "frames_per_sequence=6",
                 "train_sequences=1", "outside_sequences=0", "val_sequences=0", "variations=[]"]) == 0
    torch.manual_seed(0)
    model = PoseNet(ModelConfig(**CONFIG["model"]))
    with torch.no_grad():
        model.feature_covariance.copy_(torch.eye(model.head_dim))
    path = save_checkpoint(root / "model.safetensors", model, CONFIG, np.zeros((1, 7)))
    store_calibration(path, UncertaintyConfig(mc_samples=8, position_scale=2.0),
                      LoopClosureConfig(enter_score=1e9, leave_score=1e9, min_frames=2))
    return path, load_frames(root / "scene", "test")


def test_estimate_equals_the_evaluation_path(setup):
    path, records = setup
    relocalizer = Relocalizer(path, device="cpu")
    estimate = relocalizer.process(read_rgb(records[0].image_path), stamp_ns=0)
    reference = predict(PoseRegression(relocalizer.model, relocalizer.uncertainty), records[:1],
                        config_from_dict(TrainConfig, CONFIG).eval_transform())
    # One inference path (runtime/methods.py) with the same key (stamp 0, index 0): equal.
    np.testing.assert_allclose(estimate.position_3, reference.position_pred_N3[0], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(estimate.quat_wxyz_4, reference.quat_pred_N4[0], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(estimate.covariance_66, reference.covariance_N66[0], rtol=1e-5, atol=1e-9)
    assert np.all(np.linalg.eigvalsh(estimate.covariance_66) > 0)
    assert estimate.uncertainty_m == pytest.approx(np.sqrt(np.trace(estimate.covariance_66[:3, :3])))
    assert set(estimate.timings_ms) == {"preprocess", "forward", "summary"}
    # The same frame and stamp give the same estimate again; another stamp other dropout masks.
    again = relocalizer.process(read_rgb(records[0].image_path), stamp_ns=0)
    np.testing.assert_array_equal(again.covariance_66, estimate.covariance_66)
    other = relocalizer.process(read_rgb(records[0].image_path), stamp_ns=17)
    assert not np.array_equal(other.covariance_66, estimate.covariance_66)


def test_known_place_flag_needs_consecutive_frames_and_resets(setup):
    path, records = setup
    relocalizer = Relocalizer(path, device="cpu")
    rgb = read_rgb(records[1].image_path)
    flags = [relocalizer.process(rgb, stamp_ns=i).known_place for i in range(3)]
    assert flags == [False, True, True]
    relocalizer.reset()
    assert not relocalizer.process(rgb, stamp_ns=5).known_place


@pytest.mark.parametrize("image, message", [
    (np.zeros((0, 0, 3), np.uint8), "too small"),
    (np.zeros((1, 30, 3), np.uint8), "too small"),
    (np.zeros((30, 40, 3), np.float32), "uint8"),
    (np.zeros((30, 40), np.uint8), "uint8"),
])


def test_bad_images_are_clear_errors(setup, image, message):
    relocalizer = Relocalizer(setup[0], device="cpu")
    with pytest.raises(ValueError, match=message):
        relocalizer.process(image)


def test_half_precision_needs_cuda(setup):
    with pytest.raises(ValueError, match="CUDA"):
        Relocalizer(setup[0], device="cpu", precision="fp16")


def test_relocalizer_feeds_depth_to_an_rgbd_checkpoint(tmp_path):
    path = make_checkpoint(tmp_path / "model.safetensors", depth="early_fusion")
    assert load_model(path).model.config.depth == "early_fusion"
    relocalizer = Relocalizer(path, device="cpu")
    assert relocalizer.needs_depth
    rgb, depth = rgb_frame(0), depth_frame(0)
    with pytest.raises(ValueError, match="RGB-D model: it needs a depth image with every frame"):
        relocalizer.process(rgb, stamp_ns=stamp(0))
    with pytest.raises(ValueError, match="does not match the 40x30 px colour image"):
        relocalizer.process(rgb, depth[:20], stamp_ns=stamp(0))
    first = relocalizer.process(rgb, depth, stamp_ns=stamp(0))
    again = relocalizer.process(rgb, depth.astype(np.float64), stamp_ns=stamp(0))
    np.testing.assert_array_equal(first.position_3, again.position_3)
    holed = depth.copy()
    holed[hole_mask(30, 40, 0.3, np.random.default_rng(1))] = np.nan
    estimate = relocalizer.process(rgb, holed, stamp_ns=stamp(0))
    assert np.isfinite(estimate.position_3).all() and np.isfinite(estimate.covariance_66).all()
    # An RGB checkpoint ignores a depth image.
    rgb_model = Relocalizer(make_checkpoint(tmp_path / "rgb.safetensors"), device="cpu")
    assert not rgb_model.needs_depth
    np.testing.assert_array_equal(rgb_model.process(rgb, depth, stamp_ns=stamp(0)).position_3,
                                  rgb_model.process(rgb, stamp_ns=stamp(0)).position_3)


@pytest.mark.slow
def test_depth_holes_give_a_finite_pose_with_a_larger_uncertainty(trained_scene, trained_rgbd):
    relocalizer = Relocalizer(trained_rgbd, device="cpu")
    rng = np.random.default_rng(0)
    ratios = []
    for index, record in enumerate(load_frames(trained_scene[0], "test")):
        rgb, depth = read_frame_rgb(record.image_path), read_frame_depth(record.depth_path)
        holed = np.where(hole_mask(*depth.shape, 0.3, rng), 0.0, depth)
        relocalizer.reset()
        full = relocalizer.process(rgb, depth, stamp_ns=index)
        relocalizer.reset()
        with_holes = relocalizer.process(rgb, holed, stamp_ns=index)
        assert np.isfinite(with_holes.position_3).all() and np.isfinite(with_holes.covariance_66).all()
        ratios.append(np.trace(with_holes.covariance_66) / np.trace(full.covariance_66))
    ratios = np.array(ratios)
    print(f"\n30% holes: covariance trace x{np.median(ratios):.2f} (median), larger on "
          f"{100 * np.mean(ratios > 1):.0f}% of {len(ratios)} frames")
    assert np.median(ratios) > 1.05 and np.mean(ratios > 1) >= 0.7


def test_smoothing_off_gives_the_per_frame_pose_and_the_smoothed_covariance_is_diagonal(tmp_path):
    path = make_checkpoint(tmp_path / "model.safetensors")
    model = load_model(path).model
    store_temporal(path, random_temporal(0, model.head_dim), {
        "config": {"hidden": 16, "feature_dim": 0}, "calibration": vars(TemporalCalibration())})
    # smoothing off: the per-frame pose; the smoothed covariance is the temporal model's diagonal.
    plain = Relocalizer(path, smoothing=False).process(rgb_frame(40), stamp_ns=stamp(40))
    smoothed = Relocalizer(path).process(rgb_frame(40), stamp_ns=stamp(40))
    assert np.abs(plain.position_3 - smoothed.position_3).max() > 1e-6
    assert np.count_nonzero(smoothed.covariance_66 - np.diag(np.diag(smoothed.covariance_66))) == 0


def test_a_distorted_query_is_undistorted_to_its_pinhole_camera(setup):
    path, records = setup
    relocalizer = Relocalizer(path, device="cpu")
    pinhole_rgb = read_rgb(records[0].image_path)  # a pinhole rendering, 40x30
    camera = Intrinsics(80, 60, 70.0, 70.0, 39.5, 29.5, (-0.3, 0.08, 0.0, 0.0))  # for 2x the size
    distorted = distort(RenderedFrame(pinhole_rgb, None, np.eye(4)), camera.resized(40, 30)).rgb_HW3
    # The frame goes through the network as its undistorted image does
    with_camera = relocalizer.process(distorted, stamp_ns=0, camera=camera)
    undistorted = undistort_rgb(distorted, camera.resized(40, 30))
    without = relocalizer.process(undistorted, stamp_ns=0)
    np.testing.assert_array_equal(with_camera.position_3, without.position_3)
    # ... (data/test_images.py checks that this is the pinhole image again), not as the raw frame.
    assert not torch.equal(relocalizer.prepare(distorted, camera=camera).images_BCHW,
                           relocalizer.prepare(distorted).images_BCHW)
    with pytest.raises(ValueError, match="another aspect ratio"):
        relocalizer.process(distorted, camera=Intrinsics(40, 40, 30.0, 30.0, 19.5, 19.5))


def test_scene_coordinates_solve_with_the_query_cameras_pinhole_k(tmp_path):
    torch.manual_seed(0)
    model = SceneCoordinateNet(SceneCoordinateConfig(backbone="resnet_tiny", head_channels=32))
    training_camera = Intrinsics(40, 30, 36.0, 36.0, 19.5, 14.5)
    config = {"method": "scr", "scr": {"backbone": "resnet_tiny", "head_channels": 32},
              "data": {"resize": 24, "crop": None}}
    path = save_checkpoint(tmp_path / "scr.safetensors", model, config, np.zeros((1, 7)),
                           {"camera": json.dumps(training_camera.to_dict())})
    relocalizer = Relocalizer(path, device="cpu")
    rgb = rgb_frame(0)  # 40x30
    box = crop_box(40, 30, relocalizer.transform)
    np.testing.assert_allclose(relocalizer.prepare(rgb).K_B33[0], input_intrinsics(training_camera, box))
    query = Intrinsics(80, 60, 50.0, 52.0, 41.0, 28.0, (0.1, -0.02, 0.0, 0.0))
    K = relocalizer.prepare(rgb, camera=query).K_B33[0]
    np.testing.assert_allclose(K, input_intrinsics(query.pinhole(), box))
    assert K[0, 0] == pytest.approx(50.0 * 24 / 60)  # shorter side 60 px -> 24 px


def test_pose_regression_resamples_another_query_camera_to_the_checkpoints_camera(tmp_path):
    """A query camera with other K and D is resampled to the training camera at its size before the
    network; the training camera itself, at another resolution, only goes through the usual resize."""
    training_camera = Intrinsics(40, 30, 20.0, 20.0, 19.5, 14.5)
    path = save_checkpoint(tmp_path / "model.safetensors", PoseNet(ModelConfig(**CONFIG["model"])), CONFIG,
                           np.zeros((1, 7)), {"camera": json.dumps(training_camera.to_dict())})
    relocalizer = Relocalizer(path, device="cpu")
    query = Intrinsics(80, 60, 33.5, 33.5, 40.0, 29.0, (-0.25, 0.05, 0.0, 0.0))
    rgb = rgb_frame(3, 80, 60)
    misses = resampling_maps.cache_info().misses
    resampled = resample_rgb(rgb, query, training_camera)
    assert resampled.shape == (30, 40, 3)
    torch.testing.assert_close(relocalizer.prepare(rgb, camera=query).images_BCHW,
                               relocalizer.prepare(resampled).images_BCHW, rtol=0, atol=0)
    assert relocalizer.network_camera(query) == training_camera
    relocalizer.process(rgb_frame(4, 80, 60), stamp_ns=1, camera=query)
    assert resampling_maps.cache_info().misses == misses + 1  # the maps are computed once per camera
    # The training camera at twice the resolution: no resampling, the frame is prepared as it is.
    double = training_camera.resized(80, 60)
    assert relocalizer.network_camera(double) == double
    torch.testing.assert_close(relocalizer.prepare(rgb, camera=double).images_BCHW,
                               relocalizer.prepare(rgb).images_BCHW, rtol=0, atol=0)
