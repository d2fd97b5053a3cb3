"""Scene coordinate regression (the accurate mode): the RANSAC pose solver and its covariance, the
training targets, the network, and a small model through the train, calibrate, eval, replay and
Relocalizer paths. The accuracy run is bench/scr_accuracy.py (too long for the suite)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from posenet_ros.cli import main
from posenet_ros.core.camera import FrameTransform
from posenet_ros.core.geometry import quat_conjugate, quat_log, quat_multiply, quat_to_matrix
from posenet_ros.data.dataset import PoseDataset
from posenet_ros.data.loading import load_frames
from posenet_ros.inference.pose_solving import PoseSolveError, RansacConfig, solve_pose
from posenet_ros.inference.scene_coordinates import depth_targets
from posenet_ros.models.scene_coordinates import SceneCoordinateConfig, SceneCoordinateNet, cell_pixels
from posenet_ros.runtime.relocalizer import Relocalizer
from posenet_ros.runtime.train_config import ScrLossConfig
from posenet_ros.training.scene_coordinate_losses import depth_loss, reprojection_loss

K = np.array([[80.0, 0.0, 79.5], [0.0, 80.0, 59.5], [0.0, 0.0, 1.0]])


def _scene_view(rng: np.random.Generator, noise_px: float, outliers: float):
    """A random camera seeing points at 1-4 m through the cells of a 160x120 image: (map points, their
    noisy pixels, camera position, quaternion, outlier mask, exact camera-frame points)."""
    quat = rng.normal(size=4)
    quat = quat / np.linalg.norm(quat) * np.sign(quat[0])
    position = rng.normal(size=3)
    pixels = cell_pixels(120, 160).reshape(-1, 2).numpy().astype(np.float64)
    depth = rng.uniform(1.0, 4.0, len(pixels))
    points_cam = np.column_stack([(pixels[:, 0] - K[0, 2]) / K[0, 0] * depth,
                                  (pixels[:, 1] - K[1, 2]) / K[1, 1] * depth, depth])
    points = points_cam @ quat_to_matrix(quat).T + position
    wrong = rng.random(len(points)) < outliers
    points[wrong] += rng.normal(scale=1.0, size=(wrong.sum(), 3))
    return points, pixels + rng.normal(scale=noise_px, size=pixels.shape), position, quat, wrong, points_cam


def test_ransac_pose_is_accurate_and_its_covariance_is_calibrated():
    rng = np.random.default_rng(0)
    nees = []
    for trial in range(100):
        points, pixels, position, quat, wrong, _ = _scene_view(rng, noise_px=0.5, outliers=0.3)
        pose = solve_pose(points, pixels, K, RansacConfig(), seed=trial)
        error = np.concatenate([position - pose.position_3,
                                quat_log(quat_multiply(quat, quat_conjugate(pose.quat_wxyz_4)))])
        assert np.linalg.norm(error[:3]) < 0.03 and np.degrees(np.linalg.norm(error[3:])) < 1.0
        assert pose.inliers_N[~wrong].mean() > 0.9 and pose.inliers_N[wrong].mean() < 0.1
        nees.append(error @ np.linalg.solve(pose.covariance_66, error))
    # Gaussian pixel noise: the refinement's covariance gives NEES of mean 6 (its dimension).
    assert 4.5 < np.mean(nees) < 7.5
    again = solve_pose(points, pixels, K, RansacConfig(), seed=99)
    np.testing.assert_array_equal(again.position_3, pose.position_3)


def test_rgbd_ransac_pose_is_accurate_and_its_covariance_is_calibrated():
    """With depth: Kabsch hypotheses on 3D-3D correspondences, least-squares refit on the inliers."""
    rng = np.random.default_rng(2)
    config = RansacConfig(use_depth=True, threshold_m=0.1)
    nees = []
    for trial in range(100):
        points, pixels, position, quat, wrong, points_cam = _scene_view(rng, noise_px=0.0, outliers=0.3)
        noisy_cam = points_cam + rng.normal(scale=0.01, size=points_cam.shape)  # 1 cm per axis
        pose = solve_pose(points, pixels, K, config, seed=trial, points_cam_N3=noisy_cam)
        error = np.concatenate([position - pose.position_3,
                                quat_log(quat_multiply(quat, quat_conjugate(pose.quat_wxyz_4)))])
        # 200 inliers average the 1 cm noise: a few millimetres (PnP with 0.5 px noise: centimetres).
        assert np.linalg.norm(error[:3]) < 0.006 and np.degrees(np.linalg.norm(error[3:])) < 0.3
        assert pose.inliers_N[~wrong].mean() > 0.99 and pose.inliers_N[wrong].mean() < 0.1
        nees.append(error @ np.linalg.solve(pose.covariance_66, error))
    # Gaussian 3D noise: the refit's covariance gives NEES of mean 6 (its dimension).
    assert 5.0 < np.mean(nees) < 7.0
    # Cells without valid depth (NaN, z <= 0) are left out; with fewer than min_inliers left, PnP.
    holes = noisy_cam.copy()
    holes[::2] = np.nan
    holes[1::4, 2] = 0.0
    assert not solve_pose(points, pixels, K, config, seed=1, points_cam_N3=holes).inliers_N[::2].any()
    holes[5:] = np.nan
    pnp = solve_pose(points, pixels, K, config, seed=1)
    without = solve_pose(points, pixels, K, config, seed=1, points_cam_N3=holes)
    np.testing.assert_array_equal(without.position_3, pnp.position_3)
    strict = RansacConfig(use_depth=True, threshold_m=0.001)
    with pytest.raises(PoseSolveError, match=r"no pose hypothesis has 6 inliers within 0\.001 m"):
        solve_pose(points, pixels, K, strict, points_cam_N3=noisy_cam)


def test_ransac_refuses_without_enough_correspondences():
    rng = np.random.default_rng(1)
    points, pixels, *_ = _scene_view(rng, 0.0, 0.0)
    points[6:] = np.nan
    with pytest.raises(PoseSolveError, match="6 finite correspondences, fewer than the 8"):
        solve_pose(points, pixels, K, RansacConfig(min_inliers=8))
    scattered = rng.normal(scale=5.0, size=(300, 3))
    with pytest.raises(PoseSolveError, match="no pose hypothesis has 6 inliers"):
        solve_pose(scattered, pixels, K, RansacConfig(threshold_px=0.01))


def test_depth_targets_are_the_back_projected_depth_and_reproject_onto_their_cells(tmp_path):
    assert main(["synth", "--quiet", str(tmp_path / "scene"), "width=80", "height=60",
                 "frames_per_sequence=4", "train_sequences=1", "test_sequences=1", "val_sequences=0",
                 "outside_sequences=0", "variations=[]"]) == 0
    item = PoseDataset(load_frames(tmp_path / "scene", "train"), FrameTransform(resize=None))[0]
    batch = {key: value[None] for key, value in item.items() if torch.is_tensor(value)}
    targets, valid = depth_targets(batch["depth"], batch["K"], batch["world_from_cam"])
    assert targets.shape == (1, 3, 8, 10) and bool(valid.all())
    # The target of cell (2, 3) is pixel (28, 20) back-projected.
    K_ = item["K"].double().numpy()
    depth = float(item["depth"][0, 20, 28])
    point_cam = np.array([(28 - K_[0, 2]) / K_[0, 0] * depth, (20 - K_[1, 2]) / K_[1, 1] * depth, depth])
    world = item["world_from_cam"].double().numpy()
    np.testing.assert_allclose(targets[0, :, 2, 3].numpy(), world[:3, :3] @ point_cam + world[:3, 3],
                               atol=1e-5)
    assert float(depth_loss(targets, targets, valid)) == 0.0
    config = ScrLossConfig()
    loss, valid_share = reprojection_loss(targets, batch["K"], batch["world_from_cam"], 60, 80, config)
    assert float(loss) < 1e-3 and float(valid_share) == 1.0
    shifted, _ = reprojection_loss(targets + 0.2, batch["K"], batch["world_from_cam"], 60, 80, config)
    assert float(shifted) > 1.0


def test_network_grid_matches_the_cell_pixels():
    for backbone in ("resnet_tiny", "resnet18"):
        model = SceneCoordinateNet(SceneCoordinateConfig(backbone=backbone)).eval()
        with torch.no_grad():
            coords = model(torch.rand(1, 3, 60, 84))
        assert coords.shape == (1, 3, 8, 11) and cell_pixels(60, 84).shape == (8, 11, 2)
    assert cell_pixels(60, 84)[-1, -1].tolist() == [83.0, 59.0]  # clamped into the image
    with pytest.raises(ValueError, match="needs a ResNet backbone"):
        SceneCoordinateConfig(backbone="mobilenet_v2")


@pytest.fixture(scope="module")
def scr_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("scr")
    assert main(["synth", "--quiet", str(root / "scene"), "width=96", "height=72", "hfov_deg=70",
                 "frames_per_sequence=24", "train_sequences=2", "val_sequences=1", "outside_sequences=0",
                 "variations=[]"]) == 0
    args = ["device=cpu", "method=scr", "scr.backbone=resnet_tiny", "scr.head_channels=32",
            "data.resize=72", "data.crop=null", "data.val_split=val", "batch_size=8", "lr=1e-3"]
    assert main(["train", "--quiet", "--data", str(root / "scene"), "--out", str(root / "run"), "epochs=2",
                 *args]) == 0
    # Interrupted after one epoch and resumed: the same weights as the uninterrupted run.
    assert main(["train", "--quiet", "--data", str(root / "scene"), "--out", str(root / "resumed"),
                 "--stop-after-epoch", "1", "epochs=2", *args]) == 0
    assert main(["train", "--quiet", "--out", str(root / "resumed"), "--resume"]) == 0
    assert main(["calibrate", "--quiet", "--model", str(root / "run"), "--data", str(root / "scene")]) == 0
    return root


def test_scr_checkpoint_trains_resumes_and_runs_through_eval_replay_and_the_relocalizer(scr_run):
    from safetensors.torch import load_file

    first, second = load_file(str(scr_run / "run" / "model.safetensors")), \
        load_file(str(scr_run / "resumed" / "model.safetensors"))
    assert all(torch.equal(first[key], second[key]) for key in first)
    history = json.loads((scr_run / "run" / "metrics.json").read_text())
    assert history[-1]["loss_kind"] == "scr_auto"
    assert history[-1]["scr_distance_m"] < history[0]["scr_distance_m"]
    assert main(["eval", "--quiet", "--model", str(scr_run / "run"), "--data", str(scr_run / "scene"),
                 "--out", str(scr_run / "eval")]) == 0
    metrics = json.loads((scr_run / "eval" / "metrics.json").read_text())["overall"]
    assert metrics["frames"] == 24 and "uncertainty" in metrics
    relocalizer = Relocalizer(scr_run / "run", device="cpu")
    record = load_frames(scr_run / "scene", "test")[0]
    from posenet_ros.data.dataset import read_frame_rgb

    rgb = read_frame_rgb(record.image_path)
    try:
        estimate = relocalizer.process(rgb, stamp_ns=1)
    except ValueError as error:  # an untrained model may find no pose: a clear message
        assert "no pose: RANSAC found none" in str(error)
    else:
        points = estimate.scene_points_N3
        assert points is not None and points.shape[1] == 3 and len(points) >= 6
        assert 0.0 <= estimate.score <= 1.0 and np.isfinite(estimate.covariance_66).all()
    assert main(["make-bag", "--quiet", str(scr_run / "scene"), str(scr_run / "bag"), "--split", "test"]) == 0
    assert main(["replay", "--quiet", str(scr_run / "bag"), "--model", str(scr_run / "run"), "--out",
                 str(scr_run / "replay")]) == 0
    replayed = json.loads((scr_run / "replay" / "metrics.json").read_text())
    assert replayed["received"] == 24 and replayed["processed"] + replayed["failed"] == 24


def test_rgbd_scene_coordinates_use_each_frames_depth_through_eval_replay_and_the_relocalizer(tmp_path):
    """train --use-depth with method=scr: the same network, poses from 3D-3D correspondences."""
    from posenet_ros.core.camera import eval_transform
    from posenet_ros.data.dataset import read_frame_depth, read_frame_rgb
    from posenet_ros.evaluation.predict import predict
    from posenet_ros.runtime.checkpoint import load_model

    scene, model = tmp_path / "scene", tmp_path / "rgbd"
    assert main(["synth", "--quiet", str(scene), "width=96", "height=72", "hfov_deg=70",
                 "frames_per_sequence=48", "train_sequences=4", "val_sequences=1", "outside_sequences=0",
                 "variations=[]"]) == 0
    assert main(["train", "--quiet", "--use-depth", "--data", str(scene), "--out", str(model), "device=cpu",
                 "method=scr", "scr.backbone=resnet_tiny", "scr.head_channels=32", "data.resize=72",
                 "data.crop=null", "data.val_split=''", "batch_size=8", "lr=3e-3", "weight_decay=0.01",
                 "epochs=40", "batchnorm_frozen_after=25", "scr_refit.iterations=1500"]) == 0
    loaded = load_model(model)
    assert loaded.ransac.use_depth and loaded.needs_depth and not loaded.model.config.needs_depth
    test = load_frames(scene, "test")
    rgbd = predict(loaded.model, test, eval_transform(loaded.config), ransac=loaded.ransac)
    rgb = predict(loaded.model, test, eval_transform(loaded.config), ransac=RansacConfig(use_depth=False))
    # The same coordinates (a small model, 0.33 m off on its training cells): with depth the pose is
    # more than twice as close (0.24 against 0.6 m, median).
    assert np.median(rgbd.position_error_N) < 0.3
    assert np.median(rgb.position_error_N) > 2 * np.median(rgbd.position_error_N)
    assert main(["calibrate", "--quiet", "--model", str(model), "--data", str(scene)]) == 0
    assert main(["eval", "--quiet", "--model", str(model), "--data", str(scene), "--out",
                 str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["overall"]
    assert metrics["median_position_error_m"] == pytest.approx(np.median(rgbd.position_error_N))
    relocalizer = Relocalizer(model, device="cpu")
    colour, depth = read_frame_rgb(test[0].image_path), read_frame_depth(test[0].depth_path)
    with pytest.raises(ValueError, match="needs a depth image with every frame"):
        relocalizer.process(colour, stamp_ns=1)
    with pytest.raises(ValueError, match=r"depth image of shape \(36, 96\) does not match"):
        relocalizer.process(colour, depth[::2], stamp_ns=1)
    estimate = relocalizer.process(colour, depth, stamp_ns=0)  # RANSAC seed 0, as frame 0's in predict
    np.testing.assert_allclose(estimate.position_3, rgbd.position_pred_N3[0], atol=1e-3)
    # The bag has depth (make-bag writes it): replay feeds it to the model as the node would.
    assert main(["make-bag", "--quiet", str(scene), str(tmp_path / "bag"), "--split", "test"]) == 0
    assert main(["replay", "--quiet", str(tmp_path / "bag"), "--model", str(model), "--out",
                 str(tmp_path / "replay")]) == 0
    replayed = json.loads((tmp_path / "replay" / "metrics.json").read_text())
    assert replayed["depth_topic"] == "/camera/depth/image_raw"
    # Without the depth every frame would fail; this small model finds no pose for 1 of the 48.
    assert replayed["processed"] + replayed["failed"] == 48 and replayed["processed"] >= 44


def test_rgbd_scene_coordinates_refuse_training_data_without_depth(tmp_path, capsys):
    assert main(["synth", "--quiet", "--layout", "cambridge", str(tmp_path / "scene"), "width=48",
                 "height=36", "frames_per_sequence=4", "train_sequences=1", "test_sequences=1",
                 "val_sequences=0", "outside_sequences=0", "variations=[]"]) == 0
    assert main(["train", "--quiet", "--use-depth", "--data", str(tmp_path / "scene"), "--out",
                 str(tmp_path / "run"), "device=cpu", "method=scr", "scr.backbone=resnet_tiny", "epochs=1",
                 "data.resize=36", "data.crop=null", "data.val_split=''"]) == 2
    assert "ransac.use_depth (train --use-depth) solves poses with depth images, and the training frames " \
        "have none" in capsys.readouterr().err


def test_pose_regression_only_commands_refuse_a_scene_coordinate_model(scr_run, capsys):
    model, scene = str(scr_run / "run"), str(scr_run / "scene")
    assert main(["train-temporal", "--quiet", "--model", model, "--data", scene, "device=cpu"]) == 2
    assert "temporal smoothing refines pose regression (PoseNet) models, not method 'scr'" in \
        capsys.readouterr().err
    assert main(["saliency", "--model", model, "--data", scene, "--out", str(scr_run / "saliency")]) == 2
    assert "saliency maps are drawn for pose regression models" in capsys.readouterr().err


def test_head_refit_on_shuffled_cells_retrains_only_the_head_and_lowers_the_error(scr_run):
    """scr_refit (ACE-style): after the last epoch the head's 1x1 convolutions are retrained on
    buffered encoder features of cells shuffled across images; the encoder and the head's first
    convolution stay as trained."""
    from safetensors.torch import load_file

    args = ["device=cpu", "method=scr", "scr.backbone=resnet_tiny", "scr.head_channels=32", "data.resize=72",
            "data.crop=null", "data.val_split=''", "batch_size=8", "lr=1e-3", "epochs=1"]
    runs = {}
    refit = ["scr_refit.iterations=150", "scr_refit.batch_cells=512"]
    for name, extra in (("plain", []), ("refit", refit), ("refit_bf16", [*refit, "cpu_amp=true"])):
        assert main(["train", "--quiet", "--data", str(scr_run / "scene"), "--out", str(scr_run / name),
                     *args, *extra]) == 0
        runs[name] = load_file(str(scr_run / name / "model.safetensors"))
    for name in ("refit", "refit_bf16"):  # cpu_amp: the epoch and the refit in bfloat16 autocast
        history = json.loads((scr_run / name / "metrics.json").read_text())
        assert history[-1]["refit_seconds"] > 0
        assert history[-1]["refit_distance_m"] < 0.8 * history[-1]["scr_distance_m"]
    assert not torch.equal(runs["refit"]["head.2.weight"], runs["refit_bf16"]["head.2.weight"])
    refitted = {key for key in runs["plain"] if not torch.equal(runs["plain"][key], runs["refit"][key])}
    # Only the head's layers after its first convolution (and ReLU) changed.
    assert refitted and all(key.startswith("head.") and int(key.split(".")[1]) >= 2 for key in refitted)


def test_coordinates_keep_float32_precision_under_bfloat16_autocast():
    torch.manual_seed(0)
    model = SceneCoordinateNet(SceneCoordinateConfig(backbone="resnet_tiny", head_channels=32)).eval()
    model.set_scene_statistics(torch.tensor([3.0, 2.0, 1.0]), 3.0)
    with torch.no_grad():
        model.head[-1].bias.fill_(0.7)  # outputs where the bfloat16 grid is 2^-8 (1.2 cm at scale 3 m)
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = model(images)
    # A bfloat16 output layer is off by 7 mm (median); in float32 the hidden layers' rounding is left.
    assert float((reduced - exact).norm(dim=1).median()) < 1e-3


def test_batchnorm_frozen_after_keeps_the_running_statistics_of_that_epoch(scr_run):
    from safetensors.torch import load_file

    args = ["device=cpu", "method=scr", "scr.backbone=resnet_tiny", "scr.head_channels=32", "data.resize=72",
            "data.crop=null", "data.val_split=''", "batch_size=8", "lr=1e-3", "epochs=2",
            "batchnorm_frozen_after=1"]
    for name, extra in (("frozen_1", ["--stop-after-epoch", "1"]), ("frozen_2", [])):
        assert main(["train", "--quiet", "--data", str(scr_run / "scene"), "--out", str(scr_run / name),
                     *extra, *args]) == 0
    after_1, after_2 = (load_file(str(scr_run / name / "model.safetensors"))
                        for name in ("frozen_1", "frozen_2"))
    statistics = [key for key in after_1 if key.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(after_1[key], after_2[key]) for key in statistics)
    assert not torch.equal(after_1["encoder.conv1.weight"], after_2["encoder.conv1.weight"])
    # The unfrozen run's second epoch moves them.
    unfrozen = load_file(str(scr_run / "run" / "model.safetensors"))
    assert not all(torch.equal(after_1[key], unfrozen[key]) for key in statistics)
