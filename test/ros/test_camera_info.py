"""ros/camera_info.py on real rosbags CameraInfo messages (through CDR): the camera make-bag writes
reads back with its K and distortion; a ROI and binning give the K of the image they make (checked
by projecting points); every kind of bad message is a CameraInfoError naming the problem; the topic
beside an image topic is image_transport's."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from posenet_ros.core.camera import Intrinsics
from posenet_ros.ros.camera_info import CameraInfoError, camera_from_camera_info, camera_info_topic
from posenet_ros.ros.conversions import RosbagsTypes, camera_info_msg

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
TYPES = RosbagsTypes(TYPESTORE)
CAMERA = Intrinsics(80, 60, 52.0, 53.0, 39.0, 30.5, (-0.25, 0.05, 0.001, -0.002, 0.01))


def message(camera: Intrinsics = CAMERA, **fields: object) -> object:
    """A CameraInfo of `camera` through CDR, with `fields` replaced (before serialising)."""
    msg = camera_info_msg(TYPES, 1_700_000_000_000_000_000, "camera", camera.width, camera.height,
                          camera.matrix(), camera.distortion)
    msg = dataclasses.replace(msg, **fields)
    name = type(msg).__msgtype__
    return TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(msg, name), name)


def roi(x: int, y: int, width: int, height: int) -> object:
    return TYPES.get("sensor_msgs/msg/RegionOfInterest")(x_offset=x, y_offset=y, width=width, height=height,
                                                          do_rectify=False)


@pytest.mark.parametrize("distortion", [(), (-0.25, 0.05, 0.001, -0.002, 0.01),
                                        (-0.25, 0.05, 0.001, -0.002, 0.01, 0.02, -0.01, 0.003)])
def test_the_written_camera_reads_back(distortion):
    camera = dataclasses.replace(CAMERA, distortion=distortion)
    msg = message(camera)
    assert msg.distortion_model == ("rational_polynomial" if len(distortion) == 8 else "plumb_bob")
    assert camera_from_camera_info(msg) == camera
    # A D of zeros, and an empty model with an empty D, are a pinhole camera.
    assert camera_from_camera_info(message(camera.pinhole())) == camera.pinhole()
    assert camera_from_camera_info(message(distortion_model="", d=np.zeros(0))) == CAMERA.pinhole()
    # Thin-prism and tilt terms that are zero (a 14-coefficient D) are accepted.
    long_d = np.concatenate([CAMERA.distortion, np.zeros(3), np.zeros(6)])
    read = camera_from_camera_info(message(distortion_model="rational_polynomial", d=long_d))
    assert read.distortion == (*CAMERA.distortion, 0.0, 0.0, 0.0)


def _project(camera: Intrinsics, points_N3: np.ndarray) -> np.ndarray:
    uv, _ = cv2.projectPoints(points_N3, np.zeros(3), np.zeros(3), camera.matrix(),
                              np.asarray(camera.distortion, np.float64))
    return uv.reshape(-1, 2)


def test_roi_and_binning_give_the_camera_of_the_image_they_make():
    points = np.random.default_rng(0).uniform([-0.4, -0.3, 1.0], [0.4, 0.3, 3.0], (50, 3))
    full = _project(CAMERA, points)
    # The ROI 40x30 at (16, 12): a pixel of the full image is the ROI pixel shifted by the offset.
    cropped = camera_from_camera_info(message(roi=roi(16, 12, 40, 30)))
    assert (cropped.width, cropped.height) == (40, 30)
    np.testing.assert_allclose(_project(cropped, points), full - [16, 12], atol=1e-9)
    # Binning 2x2 after the ROI: binned pixel i covers full pixels 2i and 2i+1, centre 2i + 0.5.
    binned = camera_from_camera_info(message(roi=roi(16, 12, 40, 30), binning_x=2, binning_y=2))
    assert (binned.width, binned.height) == (20, 15)
    np.testing.assert_allclose(2 * _project(binned, points) + 0.5, full - [16, 12], atol=1e-9)
    # The whole image as a ROI, and binning 1, change nothing.
    assert camera_from_camera_info(message(roi=roi(0, 0, 80, 60), binning_x=1, binning_y=1)) == CAMERA


@pytest.mark.parametrize(("fields", "problem"), [
    ({"k": np.zeros(9)}, "not a pinhole matrix"),
    ({"k": np.array([52.0, 0, 39, 0, np.nan, 30.5, 0, 0, 1])}, "9 finite values"),
    ({"k": np.array([-52.0, 0, 39, 0, 53, 30.5, 0, 0, 1])}, "not a pinhole matrix"),
    ({"k": np.array([52.0, 0.5, 39, 0, 53, 30.5, 0, 0, 1])}, "not a pinhole matrix"),
    ({"d": np.array([-0.25, 0.05, 0.0])}, "plumb_bob D has 4 or 5 coefficients, got 3"),
    ({"d": np.array([-0.25, np.inf, 0, 0, 0])}, "not finite"),
    ({"distortion_model": "rational_polynomial"}, "rational_polynomial D has 8 coefficients, got 5"),
    ({"distortion_model": "equidistant", "d": np.array([0.1, 0.01, 0.0, 0.0])}, "equidistant"),
    ({"distortion_model": "fov"}, "unknown distortion model 'fov'"),
    ({"width": 0}, "size 0x60"),
    ({"roi": roi(60, 0, 40, 30)}, "not inside"),
    ({"binning_x": 100}, "leaves nothing"),
])
def test_unusable_messages_are_errors_naming_the_problem(fields, problem):
    with pytest.raises(CameraInfoError, match=problem):
        camera_from_camera_info(message(**fields))


def test_the_topic_beside_an_image_topic():
    assert camera_info_topic("/camera/image_raw") == "/camera/camera_info"
    assert camera_info_topic("/camera/image_raw/compressed") == "/camera/camera_info"
    assert camera_info_topic("/robot1/front/image_rect") == "/robot1/front/camera_info"
    assert camera_info_topic("image") == "camera_info"  # relative: in the node's namespace
    assert camera_info_topic("/image") == "/camera_info"
