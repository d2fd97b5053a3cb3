import numpy as np
import pytest

from posenet_ros.data.frames import FrameRecord
from posenet_ros.data.splits import TEST_BLOCKS, BlockSplit


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
