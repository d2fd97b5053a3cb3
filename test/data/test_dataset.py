"""data/dataset.py: the torch PoseDataset (items, resize and crop with their intrinsics, seeded
augmentation, windows, workers, depth and depth holes, the RGB-D network input) and image reading.

Every test writes its own tiny dataset in tmp_path with the layout writers (data/conftest.py). The
layouts themselves are tested in test_seven_scenes.py and test_cambridge.py, layout detection in
test_loading.py."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
import transforms3d.quaternions as tq
from dataset_support import HEIGHT, INTRINSICS, WIDTH, make_frame, random_pose
from geometry_check import reprojected_depth_error
from node_support import depth_frame, rgb_frame

from posenet_ros.core.camera import FrameTransform, Intrinsics
from posenet_ros.data.cambridge import load_cambridge
from posenet_ros.data.dataset import PoseDataset, hole_mask, network_input
from posenet_ros.data.frames import DatasetError, FrameRecord, RenderedFrame, SequenceToWrite
from posenet_ros.data.images import read_depth_mm, read_rgb
from posenet_ros.data.seven_scenes import (
    load_seven_scenes,
    write_seven_scenes,
)


def test_seven_scenes_invalid_raw_depth_reads_as_zero(tmp_path):
    path = tmp_path / "d.png"
    cv2.imwrite(str(path), np.array([[0, 65535, 1500]], dtype=np.uint16))
    assert read_depth_mm(path).tolist() == [[0.0, 0.0, 1.5]]


def test_dataset_item_contents(seven):
    root, frames = seven
    records = load_seven_scenes(root)
    item = PoseDataset(records, FrameTransform(resize=None))[5]
    frame = frames[1][1]
    assert item["image"].shape == (3, HEIGHT, WIDTH) and item["image"].dtype == torch.float32
    np.testing.assert_allclose(item["image"].numpy().transpose(1, 2, 0) * 255, frame.rgb_HW3, atol=1e-3)
    assert item["depth"].shape == (1, HEIGHT, WIDTH)
    np.testing.assert_allclose(item["depth"][0].numpy(), frame.depth_HW, atol=0.5e-3 + 1e-6)
    np.testing.assert_allclose(item["world_from_cam"].numpy(), frame.world_from_cam, atol=1e-6)
    np.testing.assert_allclose(item["K"].numpy(), INTRINSICS.matrix(), atol=1e-6)
    pose = item["pose"].numpy().astype(np.float64)
    np.testing.assert_allclose(pose[:3], frame.world_from_cam[:3, 3], atol=1e-6)
    assert pose[3] >= 0 and abs(np.linalg.norm(pose[3:]) - 1) < 1e-6
    np.testing.assert_allclose(tq.quat2mat(pose[3:]), frame.world_from_cam[:3, :3], atol=1e-6)
    assert (item["sequence"], item["frame_index"]) == ("seq-02", 1)


def test_roll_and_zoom_give_the_frame_of_the_rolled_and_zoomed_camera(seven):
    """The augmented item's depth, back-projected with its K and pose, lands where the plain item's depth
    agrees (geometry_check); the same warp with the pose left unchanged (or rolled the other way) does
    not. Depth is random per pixel here, so a pixel off is metres off."""
    root, _ = seven
    records = load_seven_scenes(root)
    plain = PoseDataset(records, FrameTransform(resize=None))
    rolled = PoseDataset(records, FrameTransform(resize=None, rotation_deg=40.0, zoom=0.5))
    angles, zooms = [], []
    for index in range(len(records)):
        a, b = rolled[index], plain[index]
        depth_a, K_a, world_from_a = (a["depth"][0].numpy(), a["K"].numpy().astype(np.float64),
                                      a["world_from_cam"].numpy().astype(np.float64))
        depth_b, K_b, world_from_b = (b["depth"][0].numpy(), b["K"].numpy().astype(np.float64),
                                      b["world_from_cam"].numpy().astype(np.float64))
        errors = reprojected_depth_error(depth_a, depth_b, K_a, world_from_a, world_from_b, K_b)
        assert len(errors) > 0.3 * (depth_b > 0).sum() and np.median(errors) < 1e-3
        assert np.quantile(errors, 0.9) < 1e-3  # all but the pixels rounded to a neighbour
        cam_b_from_a = np.linalg.inv(world_from_b) @ world_from_a
        angles.append(np.degrees(np.arctan2(cam_b_from_a[1, 0], cam_b_from_a[0, 0])))
        zooms.append(K_a[0, 0] / K_b[0, 0])
        np.testing.assert_allclose(cam_b_from_a[:3, 3], 0.0, atol=1e-5)  # the camera only rotates
        np.testing.assert_allclose(cam_b_from_a[2, :3], [0.0, 0.0, 1.0], atol=1e-5)  # about its z axis
        wrong = world_from_b @ np.linalg.inv(cam_b_from_a)  # rolled the other way
        assert np.median(reprojected_depth_error(depth_a, depth_b, K_a, wrong, world_from_b, K_b)) > 0.2
        pose = a["pose"].numpy().astype(np.float64)
        np.testing.assert_allclose(tq.quat2mat(pose[3:]), world_from_a[:3, :3], atol=1e-5)
    assert max(np.abs(angles)) <= 40.0 and np.std(angles) > 5.0
    assert 1 / 1.5 - 1e-6 <= min(zooms) and max(zooms) <= 1.5 + 1e-6 and np.std(np.log(zooms)) > 0.05
    np.testing.assert_array_equal(rolled[3]["image"], rolled[3]["image"])  # (seed, epoch, index) decide


def test_dataset_without_depth_or_intrinsics(cambridge):
    root, _ = cambridge
    (root / "camera.json").unlink()
    item = PoseDataset(load_cambridge(root), FrameTransform(resize=12, crop=10))[0]
    assert "depth" not in item and "K" not in item
    assert item["image"].shape == (3, 10, 10)
    assert (item["sequence"], item["frame_index"]) == ("seq1", 1)


def _blob_frame(width: int, height: int, x0: int, y0: int, size: int) -> RenderedFrame:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[y0:y0 + size, x0:x0 + size] = 255
    return RenderedFrame(rgb_HW3=rgb, depth_HW=np.ones((height, width), np.float32), world_from_cam=np.eye(4))


def _centroid(image_3HW: torch.Tensor) -> np.ndarray:
    weights = image_3HW[0].numpy().astype(np.float64)
    ys, xs = np.mgrid[: weights.shape[0], : weights.shape[1]]
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


@pytest.mark.parametrize("random_crop", [False, True])
def test_intrinsics_follow_resize_and_crop(tmp_path, random_crop):
    # A white 8x8 block centred at pixel (31.5, 19.5) of a 64x48 image (inside every possible crop).
    # The 3D point on the ray of that pixel must project, with the transformed K, onto the block's
    # centroid in the output image.
    intrinsics = Intrinsics(64, 48, 50.0, 55.0, 31.3, 22.9)
    frame = _blob_frame(64, 48, 28, 16, 8)
    write_seven_scenes(tmp_path, [SequenceToWrite("train", [frame])], intrinsics)
    records = load_seven_scenes(tmp_path)
    u, v = 31.5, 19.5
    point_cam = np.array([(u - 31.3) / 50.0, (v - 22.9) / 55.0, 1.0]) * 2.0
    full = intrinsics.matrix() @ point_cam
    np.testing.assert_allclose(full[:2] / full[2], [u, v])
    dataset = PoseDataset(records, FrameTransform(resize=24, crop=(18, 20), random_crop=random_crop))
    corners = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        item = dataset[0]
        assert item["image"].shape == (3, 18, 20)
        k = item["K"].numpy().astype(np.float64)
        projected = k @ point_cam
        projected = projected[:2] / projected[2]
        # Resize by 1/2 maps pixel x to (x + 0.5) / 2 - 0.5; the crop shifts by its corner.
        x0 = (u + 0.5) / 2 - 0.5 - projected[0]
        y0 = (v + 0.5) / 2 - 0.5 - projected[1]
        assert x0 == pytest.approx(round(x0), abs=1e-5) and y0 == pytest.approx(round(y0), abs=1e-5)
        assert 0 <= round(x0) <= 32 - 20 and 0 <= round(y0) <= 24 - 18
        corners.add((round(x0), round(y0)))
        np.testing.assert_allclose(_centroid(item["image"]), projected, atol=1e-4)
        np.testing.assert_allclose(k[[0, 1], [0, 1]], [25.0, 27.5], atol=1e-5)
    if random_crop:
        assert len(corners) > 1
    else:
        assert corners == {(6, 3)}


def test_random_crop_is_deterministic_per_seed_epoch_index(seven):
    records = load_seven_scenes(seven[0])
    transform = FrameTransform(resize=None, crop=12, random_crop=True, brightness=0.4, contrast=0.4,
                               saturation=0.4, hue=0.1)
    first = PoseDataset(records, transform, seed=7)
    second = PoseDataset(records, transform, seed=7)
    first.set_epoch(3)
    second.set_epoch(3)
    for index in (0, 5):
        a, b = first[index], second[index]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["K"], b["K"])
        assert torch.equal(a["depth"], b["depth"])
    corners = set()
    for epoch in range(6):
        first.set_epoch(epoch)
        corners.add(tuple(first[0]["K"][:2, 2].tolist()))
    assert len(corners) > 1  # the crop moves between epochs
    other_seed = PoseDataset(records, transform, seed=8)
    other_seed.set_epoch(3)
    first.set_epoch(3)
    assert not torch.equal(other_seed[0]["image"], first[0]["image"])


def test_centre_crop_is_the_same_every_epoch(seven):
    records = load_seven_scenes(seven[0])
    dataset = PoseDataset(records, FrameTransform(resize=None, crop=(10, 12), random_crop=False))
    items = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        items.append(dataset[2])
    assert all(torch.equal(items[0]["image"], item["image"]) for item in items)
    # centre crop of 32x24 to 12x10 starts at (10, 7)
    np.testing.assert_allclose(items[0]["K"][:2, 2].numpy(), [15.7 - 10, 11.2 - 7], atol=1e-5)
    full = read_rgb(records[2].image_path)[7:17, 10:22].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(items[0]["image"].numpy(), full, atol=1e-6)


def test_dataloader_workers_give_the_same_items(seven):
    records = load_seven_scenes(seven[0])
    dataset = PoseDataset(records, FrameTransform(resize=20, crop=16, random_crop=True, brightness=0.3))
    dataset.set_epoch(2)
    serial = list(torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=0))
    parallel = list(torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["K"], b["K"])
        assert a["sequence"] == b["sequence"]


def test_colour_jitter_changes_colours_within_range(seven):
    records = load_seven_scenes(seven[0])
    plain = PoseDataset(records, FrameTransform(resize=None))[0]["image"]
    for name in ("brightness", "contrast", "saturation", "hue"):
        amount = 0.2 if name == "hue" else 0.5
        jittered = PoseDataset(records, FrameTransform(resize=None, **{name: amount}))[0]["image"]
        assert jittered.min() >= 0 and jittered.max() <= 1
        assert (jittered - plain).abs().max() > 0.01, name


def test_windows_stay_in_sequences(seven):
    root, frames = seven
    records = load_seven_scenes(root)
    dataset = PoseDataset(records, FrameTransform(resize=None, window=3))
    assert len(dataset) == 4  # two windows in each 4-frame training sequence
    seen = []
    for item in dataset:
        assert item["image"].shape == (3, 3, HEIGHT, WIDTH)
        assert item["depth"].shape == (3, 1, HEIGHT, WIDTH)
        assert item["world_from_cam"].shape == (3, 4, 4) and item["pose"].shape == (3, 7)
        assert item["K"].shape == (3, 3, 3)
        indices = item["frame_index"].tolist()
        assert indices == list(range(indices[0], indices[0] + 3))
        sequence = int(item["sequence"][-1]) - 1
        for t, index in enumerate(indices):
            expected = frames[sequence][index]
            np.testing.assert_allclose(item["image"][t].numpy().transpose(1, 2, 0) * 255,
                                       expected.rgb_HW3, atol=1e-3)
            np.testing.assert_allclose(item["world_from_cam"][t].numpy(), expected.world_from_cam, atol=1e-6)
        seen.append((item["sequence"], indices[0]))
    assert seen == [("seq-01", 0), ("seq-01", 1), ("seq-02", 0), ("seq-02", 1)]
    strided = PoseDataset(records, FrameTransform(resize=None, window=2, window_stride=3))
    assert [item["frame_index"].tolist() for item in strided] == [[0, 3], [0, 3]]
    with pytest.raises(ValueError, match="window"):
        PoseDataset(records, FrameTransform(window=5))


def test_window_shares_crop_and_jitter(tmp_path):
    rng = np.random.default_rng(3)
    frame = make_frame(rng)
    poses = [random_pose(rng) for _ in range(3)]
    sequence = [RenderedFrame(frame.rgb_HW3, frame.depth_HW, pose) for pose in poses]
    write_seven_scenes(tmp_path, [SequenceToWrite("train", sequence)], INTRINSICS)
    transform = FrameTransform(resize=None, crop=10, random_crop=True, brightness=0.5, contrast=0.5,
                               saturation=0.5, hue=0.2, window=3)
    dataset = PoseDataset(load_seven_scenes(tmp_path), transform)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        item = dataset[0]
        assert torch.equal(item["image"][0], item["image"][1])
        assert torch.equal(item["image"][0], item["image"][2])
        assert torch.equal(item["K"][0], item["K"][2])
        assert torch.equal(item["depth"][0], item["depth"][2])


def test_depth_nearest_neighbour_resize_keeps_zeros(tmp_path):
    rng = np.random.default_rng(4)
    levels = np.array([0.0, 0.5, 1.25, 3.0], dtype=np.float32)
    depth = levels[rng.integers(0, 4, size=(HEIGHT, WIDTH))]
    frame = RenderedFrame(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), depth, np.eye(4))
    write_seven_scenes(tmp_path, [SequenceToWrite("train", [frame])], INTRINSICS)
    item = PoseDataset(load_seven_scenes(tmp_path), FrameTransform(resize=17))[0]
    out = item["depth"][0].numpy()
    assert out.shape == (17, 23) and item["image"].shape == (3, 17, 23)
    assert set(np.unique(out).tolist()) <= set(levels.tolist())
    assert (out == 0).mean() == pytest.approx((depth == 0).mean(), abs=0.1)
    # Exact nearest neighbour: output pixel centre x maps to source (x + 0.5) * 32 / 23 - 0.5; the
    # nearest source pixel is floor((x + 0.5) * 32 / 23) (columns exactly between two pixels skipped).
    y_source = (np.arange(17) + 0.5) * HEIGHT / 17
    x_source = (np.arange(23) + 0.5) * WIDTH / 23
    rows, cols = y_source % 1 != 0, x_source % 1 != 0
    assert rows.sum() >= 16 and cols.sum() >= 22
    expected = depth[np.ix_(np.floor(y_source).astype(int), np.floor(x_source).astype(int))]
    np.testing.assert_array_equal(out[np.ix_(rows, cols)], expected[np.ix_(rows, cols)])


def test_hole_mask_covers_the_share_in_blobs():
    rng = np.random.default_rng(0)
    for share in (0.0, 0.1, 0.3, 0.6):
        mask = hole_mask(48, 64, share, rng)
        assert mask.shape == (48, 64) and mask.dtype == bool
        assert abs(mask.mean() - share) < 0.01
    mask = hole_mask(48, 64, 0.3, rng)
    # Blobs, not salt and pepper: most holes have a hole as right-hand neighbour.
    assert (mask[:, 1:] & mask[:, :-1]).sum() / mask[:, :-1].sum() > 0.8


def _records(tmp_path, with_depth: bool) -> list[FrameRecord]:
    import cv2

    records = []
    for i in range(4):
        image_path = tmp_path / f"frame-{i}.color.png"
        cv2.imwrite(str(image_path), rgb_frame(i, 32, 24)[..., ::-1])
        depth_path = None
        if with_depth:
            depth_path = tmp_path / f"frame-{i}.depth.png"
            cv2.imwrite(str(depth_path), np.round(depth_frame(i, 32, 24) * 1000).astype(np.uint16))
        records.append(FrameRecord(image_path=image_path, depth_path=depth_path, world_from_cam=np.eye(4),
                                   intrinsics=None, sequence="seq", frame_index=i))
    return records


def test_dataset_depth_holes_and_network_input(tmp_path):
    records = _records(tmp_path, with_depth=True)
    plain = PoseDataset(records, FrameTransform(resize=None))[0]
    holed = PoseDataset(records, FrameTransform(resize=None, depth_holes=0.5), seed=3)
    shares = [float((holed[i]["depth"] == 0).float().mean()) for i in range(4)]
    assert all(0.0 <= s <= 0.51 for s in shares) and max(shares) > 0.05
    assert (plain["depth"] > 0).all()
    item = holed[1]
    assert torch.equal(holed[1]["depth"], item["depth"])  # a function of (seed, epoch, index)
    stacked = network_input(item, 4)
    assert stacked.shape == (4, 24, 32) and torch.equal(stacked[3:], item["depth"])
    assert torch.equal(network_input(item, 3), item["image"])
    # An RGB model's dataset need not read the depth; an RGB-D model's data must have it.
    assert "depth" not in PoseDataset(records, FrameTransform(resize=None), with_depth=False)[0]
    rgb_only = [dataclasses.replace(record, depth_path=None) for record in records]
    with pytest.raises(DatasetError, match=r"depth images are needed .* has none"):
        PoseDataset(rgb_only, FrameTransform(resize=None), with_depth=True)
    with pytest.raises(DatasetError, match="reads depth, but these frames have no depth"):
        network_input(PoseDataset(rgb_only, FrameTransform(resize=None))[0], 4)
