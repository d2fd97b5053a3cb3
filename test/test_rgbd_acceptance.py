"""RGB-D acceptance on the session's synthetic scene (conftest.py): the dual-stream model against
the RGB model trained with the same budget, depth holes, and replay feeding depth from a rosbag2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from posenet_ros.cli import main
from posenet_ros.data.dataset import hole_mask, read_frame_depth, read_frame_rgb
from posenet_ros.data.loading import load_frames
from posenet_ros.runtime.relocalizer import Relocalizer


def _median_position_error(run, scene, out) -> float:
    assert main(["eval", "--quiet", "--model", str(run), "--data", str(scene), "--out", str(out),
                 "--mc-samples", "0"]) == 0
    return json.loads((out / "metrics.json").read_text())["overall"]["median_position_error_m"]


def test_rgbd_against_rgb_with_the_same_budget(trained_scene, trained_rgbd):
    scene, rgb_run = trained_scene
    rgb = _median_position_error(rgb_run, scene, trained_rgbd.parent / "eval_rgb")
    rgbd = _median_position_error(trained_rgbd, scene, trained_rgbd.parent / "eval_rgbd")
    print(f"\nmedian position error on the test loops: RGB {rgb:.4f} m, RGB-D {rgbd:.4f} m")
    # 0.1966 -> 0.1715 m here (2 threads). On the first test loop alone the margin depended on the
    # run: 0.1600 -> 0.1422 m (2 threads), 0.1525 -> 0.1517 m (one thread), 0.150 -> 0.142 m (seed 1).
    assert rgbd < rgb


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
