"""When the node sends a pose to `initialpose` (geometry_msgs/PoseWithCovarianceStamped), the topic on
which Nav2's AMCL (and RViz's "2D Pose Estimate") set the robot's pose in the map.

A small state machine, fed one verdict per frame (`PosePolicy`: confident or not):

    idle  --request() / at start (at_start) / lost_frames consecutive unconfident frames-->  armed
    armed --the next confident frame: its pose goes to initialpose, exactly once-->           idle

"Lost" counts unconfident frames since the last confident one, and only after a confident frame has
been seen (a node that has never localized is not lost; `at_start` covers the start); it arms once per
loss (the count starts again with the next confident frame). `lost_frames` 0 turns it off.
`request()` is called from a callback thread (the trigger topic or service), `update()` from the
worker; both are thread-safe.
"""

from __future__ import annotations

import threading


class InitialPoseTrigger:
    """Arms on request, at start or after being lost; `update(confident)` says when to send."""

    def __init__(self, at_start: bool = False, lost_frames: int = 0) -> None:
        if lost_frames < 0:
            raise ValueError(f"lost_frames must be >= 0 (0: off), got {lost_frames}")
        self.lost_frames = lost_frames
        self._lock = threading.Lock()
        # why the next confident pose goes to initialpose ("start", "request", "lost"); None: it does not
        self._armed_by: str | None = "start" if at_start else None
        self._lost = 0  # unconfident frames since the last confident one
        self._localized = False  # a confident frame has been seen

    def request(self) -> bool:
        """Send the next confident pose; False if a request was already waiting (still one pose)."""
        with self._lock:
            waiting = self._armed_by is not None
            self._armed_by = self._armed_by or "request"
            return not waiting

    def update(self, confident: bool) -> str | None:
        """The verdict on the next frame; returns why its pose is to be sent to initialpose (a frame
        that is), else None."""
        with self._lock:
            if not confident:
                self._lost += 1
                if self._localized and self.lost_frames and self._lost == self.lost_frames:
                    self._armed_by = self._armed_by or "lost"
                return None
            self._lost, self._localized = 0, True
            armed_by, self._armed_by = self._armed_by, None
            return armed_by
