"""The query camera's calibration in the node: which `Intrinsics` the frames are relocalized with.

The node subscribes to the camera's sensor_msgs/CameraInfo (`camera_info_topic`: "auto" is the
`camera_info` topic beside `image_topic`, image_transport's rule, e.g. /camera/image_raw ->
/camera/camera_info; empty: none) with sensor-data QoS. A CameraInfo is paired with the frames by
arrival: each frame uses the latest CameraInfo received before the worker takes it (drivers publish
one per image, and it seldom changes), not the one of the same stamp. The Relocalizer then resamples
the frame to the checkpoint's camera for pose regression, or undistorts it for scene coordinates and
solves PnP with its K (runtime/relocalizer.py); the resampling maps are computed once per calibration.

A CameraInfo that cannot be used is dropped, counted (`camera_info_rejected` in /diagnostics) and
logged at most once per warning period, and the frames go on with the last calibration that was
used, or, before any, the checkpoint's camera: one whose K or D is invalid (ros/camera_info.py) when
it arrives, one whose size is not the image's when a frame needs it (counted once per calibration).
Without any CameraInfo the frames are taken as pinhole images of the checkpoint's camera scaled to
the image size, and the node says so once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from posenet_ros.core.camera import Intrinsics
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.ros.camera_info import camera_from_camera_info, camera_info_topic, describe

AUTO_TOPIC = "auto"
"""`camera_info_topic` value meaning the `camera_info` topic beside the image topic."""


def subscribed_camera_info_topic(settings: NodeSettings) -> str | None:
    """The CameraInfo topic the node subscribes to, or None when `camera_info_topic` is empty."""
    if settings.camera_info_topic == AUTO_TOPIC:
        return camera_info_topic(settings.image_topic)
    return settings.camera_info_topic or None


class QueryCamera:
    """The calibration the next frame uses (module docstring). `on_camera_info` is the subscription's
    callback (it never blocks: a conversion of a few numbers); `for_image` is called by the worker for
    each frame. `count(name)` adds to a diagnostics counter, `warn(key, message)` logs at a throttled
    rate, `log` logs once-only messages (`info`, `warning`)."""

    def __init__(self, topic: str | None, count: Callable[[str], None], warn: Callable[[str, str], Any],
                 log: Any) -> None:
        self.topic = topic
        self._count, self._warn, self._log = count, warn, log
        self._lock = threading.Lock()
        self._latest: Intrinsics | None = None  # the newest valid CameraInfo's camera
        self._used: Intrinsics | None = None  # the last one a frame was relocalized with
        self._refused: Intrinsics | None = None  # the last one refused for its size
        self._said_without = False

    def on_camera_info(self, msg: Any) -> None:
        """CameraInfo callback: keep its camera, or drop, count and report an invalid message."""
        try:
            camera = camera_from_camera_info(msg)
        except (AttributeError, TypeError, ValueError) as error:  # CameraInfoError, or not a CameraInfo
            self._count("camera_info_rejected")
            self._warn("camera_info-invalid", f"dropped a CameraInfo on {self.topic}: {error}")
            return
        with self._lock:
            self._latest = camera

    def for_image(self, width: int, height: int) -> Intrinsics | None:
        """The camera of a `width` x `height` px frame: the latest CameraInfo's when its size is the
        frame's, else the last one used when that fits, else None (the checkpoint's camera)."""
        with self._lock:
            latest = self._latest
        if latest is not None and latest != self._used:
            if (latest.width, latest.height) == (width, height):
                self._used = latest
                self._log.info(f"relocalizing with the camera calibration on {self.topic}: "
                               f"{describe(latest)}")
            elif latest != self._refused:
                self._refused = latest
                self._count("camera_info_rejected")
                self._warn("camera_info-size", f"dropped the CameraInfo on {self.topic}: it is for "
                           f"{latest.width}x{latest.height} px images, the image is {width}x{height} px")
        if self._used is not None and (self._used.width, self._used.height) == (width, height):
            return self._used
        if not self._said_without:
            self._said_without = True
            source = (f"no usable CameraInfo on {self.topic} yet" if self.topic
                      else "camera_info_topic is empty")
            self._log.warning(f"{source}: frames are taken as pinhole images of the checkpoint's camera "
                              "scaled to the image size")
        return None

    @property
    def source(self) -> str:
        """"camera_info" once a frame used a CameraInfo, else "checkpoint" (for /diagnostics)."""
        return "camera_info" if self._used is not None else "checkpoint"
