"""data/cache.py: frames decoded once into memory-mapped files give the same items as frames decoded
from their files, are reused while the sources are unchanged, rebuilt when one changes, never trusted
half-written, and read the same from DataLoader workers."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
from dataset_support import truncate
from torch.utils.data import DataLoader

from posenet_ros.core.camera import FrameTransform
from posenet_ros.data.cache import INDEX_FILE, DecodeCache
from posenet_ros.data.dataset import PoseDataset, decode_frame
from posenet_ros.data.frames import DatasetError
from posenet_ros.data.seven_scenes import load_seven_scenes

JITTERED = dict(random_crop=True, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05)


def assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


class CountingDecoder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, record, with_depth):
        self.calls.append((record.image_path.name, with_depth))
        return decode_frame(record, with_depth)


@pytest.mark.parametrize("resize, crop, with_depth, holes", [
    (16, (12, 14), True, 0.3),   # shrinking (area resampling), random crop, depth with holes
    (30, (28, 36), True, 0.0),   # enlarging (linear)
    (24, None, False, 0.0),      # the source size, RGB only
])
def test_cached_items_equal_decoded_items(seven, tmp_path, resize, crop, with_depth, holes):
    root, _ = seven
    records = load_seven_scenes(root, "train")
    transform = FrameTransform(resize=resize, crop=crop, depth_holes=holes, **JITTERED)
    direct = PoseDataset(records, transform, seed=3, with_depth=with_depth)
    cached = PoseDataset(records, transform, seed=3, with_depth=with_depth, cache_dir=tmp_path / "cache")
    assert cached.cache is not None and direct.cache is None
    for epoch in (0, 1):
        direct.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(len(direct)):
            assert_items_equal(direct[index], cached[index])
    item = cached[0]
    assert ("depth" in item) == with_depth
    assert item["image"].dtype == torch.float32 and item["K"].dtype == torch.float32


def test_cache_is_reused_then_rebuilt_when_a_source_changes(seven, tmp_path):
    root, _ = seven
    records = load_seven_scenes(root, "train")
    first, second = CountingDecoder(), CountingDecoder()
    cache = DecodeCache(records, 16, tmp_path, with_depth=True)
    assert cache.build(first, progress=False) is True
    assert len(first.calls) == len(records) and all(with_depth for _, with_depth in first.calls)
    assert DecodeCache(records, 16, tmp_path, with_depth=True).build(second, progress=False) is False
    assert second.calls == []
    # another resize or no depth is another cache
    assert DecodeCache(records, 12, tmp_path, with_depth=True).key != cache.key
    assert DecodeCache(records, 16, tmp_path, with_depth=False).key != cache.key

    # rewrite one colour image with other pixels (and a later modification time)
    path = records[1].image_path
    bgr = cv2.imread(str(path))
    cv2.imwrite(str(path), 255 - bgr)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = DecodeCache(records, 16, tmp_path, with_depth=True)
    assert changed.key != cache.key
    third = CountingDecoder()
    assert changed.build(third, progress=False) is True and len(third.calls) == len(records)
    direct = PoseDataset(records, FrameTransform(resize=16), with_depth=True)
    fresh = PoseDataset(records, FrameTransform(resize=16), with_depth=True, cache_dir=tmp_path)
    assert_items_equal(direct[1], fresh[1])


def test_rgb_only_cache_never_decodes_depth(seven, tmp_path):
    root, _ = seven
    records = load_seven_scenes(root, "train")
    decoder = CountingDecoder()
    cache = DecodeCache(records, 16, tmp_path, with_depth=False)
    cache.build(decoder, progress=False)
    assert {with_depth for _, with_depth in decoder.calls} == {False}
    assert sorted(p.name for p in cache.path.iterdir()) == [INDEX_FILE, "rgb.u8"]
    with pytest.raises(RuntimeError, match="no depth"):
        cache.depth(0)


def test_interrupted_build_is_not_trusted(seven, tmp_path):
    root, _ = seven
    records = load_seven_scenes(root, "train")

    class Interrupted(Exception):
        pass

    def failing(record, with_depth):
        if record is records[-1]:
            raise Interrupted
        return decode_frame(record, with_depth)

    cache = DecodeCache(records, 16, tmp_path, with_depth=True)
    with pytest.raises(Interrupted):
        cache.build(failing, progress=False)
    assert list(cache.path.iterdir()) == []  # no index, no data file, no temporary file
    assert not cache.is_built()
    # a data file without its index (a crash between the renames) is rebuilt too
    (cache.path / "rgb.u8").write_bytes(b"\0" * 10)
    decoder = CountingDecoder()
    assert DecodeCache(records, 16, tmp_path, with_depth=True).build(decoder, progress=False) is True
    assert len(decoder.calls) == len(records)


def test_bad_image_fails_the_build_naming_it(seven, tmp_path):
    root, _ = seven
    records = load_seven_scenes(root, "train")
    truncate(records[2].image_path)
    with pytest.raises(DatasetError, match=records[2].image_path.name):
        PoseDataset(records, FrameTransform(resize=16), cache_dir=tmp_path)


def test_dataloader_workers_read_the_cache(seven, tmp_path):
    root, _ = seven
    records = load_seven_scenes(root, "train")
    dataset = PoseDataset(records, FrameTransform(resize=16, crop=12, **JITTERED), seed=1, with_depth=True,
                          cache_dir=tmp_path)
    dataset.set_epoch(2)

    def batches(workers: int) -> list[dict]:
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, shuffle=False)
        return list(loader)

    for in_process, from_workers in zip(batches(0), batches(2), strict=True):
        for key in ("image", "depth", "K", "pose"):
            assert torch.equal(in_process[key], from_workers[key])
    assert np.isfinite(batches(0)[0]["depth"].numpy()).all()
