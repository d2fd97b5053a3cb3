"""Progress bars that suit both a terminal and a log file.

On a terminal (stderr is a TTY) `progress_bar` is an ordinary tqdm bar. Otherwise (a pipe, a file, a
job scheduler's log) it is the same tqdm object writing one plain line at most every
`LOG_INTERVAL_S` seconds (and a last one when it closes), without carriage returns, so a log gets a
handful of readable lines instead of a line per batch.
"""

from __future__ import annotations

import re
import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 5.0
"""Seconds between two progress lines when stderr is not a terminal."""


_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LineWriter:
    """A file for tqdm that turns each status update (`\\r` + text + padding, and for a bar nested
    under another the cursor moves of its position) into plain lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for part in re.split(r"[\r\n]", _CURSOR_MOVES.sub("", text)):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Any = None, *, stream: TextIO | None = None, disable: bool = False,
                 **kwargs: Any) -> tqdm:
    """A tqdm bar over `iterable` (or with `total=`) on `stream` (default: stderr): a live bar on a
    terminal, else one line every `LOG_INTERVAL_S` seconds. `kwargs` go to tqdm (desc, unit, leave)."""
    stream = sys.stderr if stream is None else stream
    if disable or stream.isatty():
        return tqdm(iterable, file=stream, disable=disable, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.setdefault("bar_format", "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                      "{rate_fmt}{postfix}]")
    kwargs.update(file=LineWriter(stream), dynamic_ncols=False)
    # miniters=1 with a time interval: the line is written when LOG_INTERVAL_S has passed, checked on
    # every update (tqdm's adaptive miniters would otherwise skip updates after a fast start).
    return tqdm(iterable, miniters=1, maxinterval=float("inf"), **kwargs)
