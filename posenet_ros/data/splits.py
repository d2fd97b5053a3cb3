"""Splits that cannot leak: whole time blocks of a sequence held out from the rest.

Neighbouring frames of one recording are nearly identical, so a frame-by-frame random split tests on
frames the model has in effect seen. A block split cuts each sequence (its frames in frame-index
order) into consecutive blocks of `block` frames and holds out every `every`-th block (blocks
`offset`, `offset + every`, ...): what a held-out test or validation set of one recording should be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from posenet_ros.data.frames import FrameRecord


@dataclass(frozen=True)
class BlockSplit:
    """Blocks of `block` consecutive frames per sequence; every `every`-th block, from block `offset`
    (0-based) on, is held out."""

    block: int = 25
    every: int = 4
    offset: int = 3

    def __post_init__(self) -> None:
        if self.block < 1 or self.every < 2 or not 0 <= self.offset < self.every:
            raise ValueError(f"a block split needs block >= 1, every >= 2 and 0 <= offset < every, got "
                             f"block={self.block} every={self.every} offset={self.offset}")

    def held_out(self, position: int) -> bool:
        """Whether the frame at `position` (0-based, in frame order within its sequence) is held out."""
        return (position // self.block) % self.every == self.offset

    def split(self, records: Sequence[FrameRecord]) -> tuple[list[FrameRecord], list[FrameRecord]]:
        """(kept, held_out) records, each in the order of `records`."""
        by_sequence: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            by_sequence.setdefault(record.sequence, []).append(index)
        held = set()
        for members in by_sequence.values():
            members.sort(key=lambda i: records[i].frame_index)
            held.update(i for position, i in enumerate(members) if self.held_out(position))
        kept = [record for i, record in enumerate(records) if i not in held]
        return kept, [record for i, record in enumerate(records) if i in held]


TEST_BLOCKS = BlockSplit(block=25, every=4, offset=3)
"""The test split of a recording without split files (7-Scenes folder without *Split.txt, TUM, COLMAP,
a single NeRF transforms.json): every fourth block of 25 frames."""

VALIDATION_BLOCKS = BlockSplit(block=25, every=8, offset=5)
"""The default validation frames held out of the training split's sequences (one block in eight)."""

MIN_VALIDATION_FRAMES = 10
"""The fewest validation frames `validation_split` aims for (what `calibrate` needs)."""


def validation_blocks(records: Sequence[FrameRecord]) -> BlockSplit:
    """The block split of the default validation frames of `records` (a training split):
    `VALIDATION_BLOCKS`, or, for a capture too short for it to hold out `MIN_VALIDATION_FRAMES`, the
    same pattern (one block in eight, the sixth) with blocks of an eighth of the longest sequence."""
    _, held = VALIDATION_BLOCKS.split(records)
    if len(held) >= MIN_VALIDATION_FRAMES:
        return VALIDATION_BLOCKS
    counts: dict[str, int] = {}
    for record in records:
        counts[record.sequence] = counts.get(record.sequence, 0) + 1
    longest = max(counts.values(), default=0)
    block = max(1, min(VALIDATION_BLOCKS.block, longest // VALIDATION_BLOCKS.every))
    return BlockSplit(block=block, every=VALIDATION_BLOCKS.every, offset=VALIDATION_BLOCKS.offset)


def validation_split(records: Sequence[FrameRecord]) -> tuple[list[FrameRecord], list[FrameRecord]]:
    """(kept, held_out): the training frames and the validation frames of a training split, whole time
    blocks of its own sequences (`validation_blocks`), so validation never sees the test split and
    never a frame next to a training frame's block."""
    return validation_blocks(records).split(records)
