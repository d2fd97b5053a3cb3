"""core/progress.py: a live bar on a terminal, a few plain lines in a log."""

from __future__ import annotations

import io
import time

from posenet_ros.core.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_progress_is_a_few_plain_lines():
    log = io.StringIO()
    start = time.perf_counter()
    with progress_bar(total=3000, stream=log, desc="train", unit="batch", mininterval=0.1) as bar:
        for _ in range(3000):
            time.sleep(0.0001)
            bar.update()
            bar.set_postfix(loss="0.123", refresh=False)
    seconds = time.perf_counter() - start
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert 2 <= len(lines) <= seconds / 0.1 + 2  # at most one per interval, plus the first and the last
    assert all(line.startswith("train: ") for line in lines)
    assert lines[-1].startswith("train: 100% 3000/3000") and "loss=0.123" in lines[-1]


def test_without_a_terminal_the_default_interval_is_seconds():
    log = io.StringIO()
    with progress_bar(range(2000), stream=log, desc="fast") as items:
        for _ in items:
            pass
    assert len(log.getvalue().splitlines()) <= 2  # the first line and the last


def test_a_nested_bar_in_a_log_writes_plain_lines_too():
    log = io.StringIO()
    with progress_bar(total=2, stream=log, desc="outer") as outer:
        for _ in range(2):
            for _ in progress_bar(range(3), stream=log, desc="inner", leave=False):
                pass
            outer.update()
    text = log.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert all(line.startswith(("outer: ", "inner: ")) for line in text.splitlines())


def test_on_a_terminal_it_is_a_live_bar():
    terminal = Terminal()
    with progress_bar(total=50, stream=terminal, desc="bar", mininterval=0) as bar:
        for _ in range(50):
            bar.update()
    assert "\r" in terminal.getvalue()


def test_disabled_writes_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(10), stream=log, disable=True):
        pass
    assert log.getvalue() == ""
