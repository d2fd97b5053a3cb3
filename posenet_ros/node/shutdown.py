"""How both node runtimes stop: SIGINT and SIGTERM, however many arrive, only request a stop; the
runtime's main loop sees the request and shuts down once, in order (worker, node, middleware).

Under `ros2 launch` one Ctrl-C reaches the node twice (the terminal signals the whole process group,
and launch forwards the signal), and launch follows up with SIGTERM when the node is slow to exit.
Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be, so
a second signal landed in the cleanup (a traceback, "process has died ... exit code -2"). The
handlers installed here never raise, and they stay installed until the process exits, so a signal
during the interpreter's exit changes nothing either.

The handler sets a plain attribute and takes no lock: a handler that called `threading.Event.set`
would deadlock when the signal arrived while the main thread held that event's lock (inside
`Event.wait`). The runtimes poll `requested` every `POLL_S` seconds.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_S = 0.1  # how often a main loop looks at `SignalStop.requested` (s): the longest wait after a signal


class SignalStop:
    """A stop requested by SIGINT or SIGTERM: `install()` (from the main thread) makes every such
    signal set `requested` (and the name of the first one, `signal_name`), nothing else."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def install(self) -> SignalStop:
        """Handle SIGINT and SIGTERM with this object from now until the process exits."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            self.signal_name = signal.Signals(signum).name
        self.requested = True
