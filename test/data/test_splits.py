import numpy as np
import pytest

from posenet_ros.data.frames import FrameRecord
from posenet_ros.data.splits import (
    MIN_VALIDATION_FRAMES,
    TEST_BLOCKS,
    VALIDATION_BLOCKS,
    BlockSplit,
    validation_blocks,
    validation_split,
)


def _records(sequence: str, count: int) -> list[FrameRecord]:
    return [FrameRecord(image_path=f"{sequence}/{i}.png", depth_path=None, world_from_cam=np.eye(4),
                        intrinsics=None, sequence=sequence, frame_index=i) for i in range(count)]


def test_every_fourth_block_of_25_is_held_out_per_sequence():
    records = _records("a", 100) + _records("b", 60)[::-1]  # order within a sequence need not be sorted
    kept, held = TEST_BLOCKS.split(records)
    assert sorted(r.frame_index for r in held if r.sequence == "a") == list(range(75, 100))
    assert [r.frame_index for r in held if r.sequence == "b"] == []  # b has blocks 0, 1, 2 only
    assert len(kept) + len(held) == len(records)
    assert not {id(r) for r in kept} & {id(r) for r in held}


def test_blocks_are_contiguous_and_disjoint():
    kept, held = BlockSplit(block=3, every=2, offset=0).split(_records("s", 10))
    assert [r.frame_index for r in held] == [0, 1, 2, 6, 7, 8]
    assert [r.frame_index for r in kept] == [3, 4, 5, 9]


@pytest.mark.parametrize("values", [dict(block=0), dict(every=1), dict(every=4, offset=4)])
def test_invalid_block_split_is_refused(values):
    with pytest.raises(ValueError, match="block split"):
        BlockSplit(**values)


def test_validation_blocks_are_held_out_of_the_training_sequences():
    records = _records("a", 400) + _records("b", 200)
    kept, held = validation_split(records)
    assert validation_blocks(records) == VALIDATION_BLOCKS
    # the sixth block of every eight of 25 frames: 125-149 and 325-349 of a, 125-149 of b
    assert sorted(r.frame_index for r in held if r.sequence == "a") == [*range(125, 150), *range(325, 350)]
    assert sorted(r.frame_index for r in held if r.sequence == "b") == list(range(125, 150))
    assert len(kept) + len(held) == len(records)
    assert not {id(r) for r in kept} & {id(r) for r in held}


@pytest.mark.parametrize("frames, block, held_frames", [(96, 12, 12), (80, 10, 10), (40, 5, 5), (7, 1, 1)])
def test_short_captures_hold_out_shorter_blocks(frames, block, held_frames):
    records = _records("a", frames)
    split = validation_blocks(records)
    assert split == BlockSplit(block=block, every=8, offset=5)
    _, held = validation_split(records)
    assert len(held) == held_frames
    assert [r.frame_index for r in held] == list(range(5 * block, 5 * block + held_frames))
    assert (len(held) >= MIN_VALIDATION_FRAMES) == (frames >= 80)  # what calibrate needs from 80 frames on
