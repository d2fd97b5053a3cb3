"""node/rclpy_node.py, run without ROS. rclpy is not on PyPI, so the node is imported and run against
minimal stand-ins of rclpy, rcl_interfaces and tf2_ros that record what the node asks of them, with
the message classes of rosbags' ROS 2 Humble typestore in place of the message packages. What is
checked is what the node does: the parameters it declares and reads, the publishers, subscriptions,
timer and service it creates, what it publishes for a camera frame, how it refuses to start, how
`main` shuts down, and how it looks transforms up in tf2's buffer and broadcasts map -> odom. (A ROS 2
Humble build beside the repository, docs/design.md, checks it on real rclpy.)"""

from __future__ import annotations

import importlib
import itertools
import math
import os
import re
import signal
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from node_support import (
    BASE_FROM_CAMERA,
    TYPES,
    image,
    make_checkpoint,
    odom_from_base,
    odometry_msg,
    rgb_frame,
    stamp,
    store_fused_temporal,
    transform,
)
from rosbags.typesys import Stores, get_typestore

import posenet_ros.node
from posenet_ros.core.covariance_transport import transport_covariance
from posenet_ros.core.geometry import pose_from_position_quat
from posenet_ros.node.parameters import NODE_NAME, NODE_PARAMETERS, NodeSettings
from posenet_ros.node.pipeline import OUTPUTS, input_topics
from posenet_ros.ros.conversions import covariance_from_msg, pose_from_msg, stamp_to_ns, tf_message
from posenet_ros.ros.tf_buffer import TransformBuffer, TransformUnavailable
from posenet_ros.runtime.relocalizer import Relocalizer

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
MESSAGE_PACKAGES = ("builtin_interfaces", "std_msgs", "geometry_msgs", "sensor_msgs", "diagnostic_msgs",
                    "tf2_msgs", "nav_msgs")
TIMEOUT_S = 60.0


# --------------------------------------------------------------------------------------------------
# Stand-ins of the ROS 2 Python packages
# --------------------------------------------------------------------------------------------------


class ParameterException(Exception):
    """rclpy.exceptions.ParameterException."""


class ExternalShutdownException(Exception):
    """rclpy.executors.ExternalShutdownException."""


class TransformException(Exception):
    """tf2_ros.TransformException (the base of LookupException, ExtrapolationException, ...)."""


class Time:
    """rclpy.time.Time."""

    def __init__(self, *, nanoseconds: int = 0) -> None:
        self.nanoseconds = nanoseconds


class Duration:
    """rclpy.duration.Duration."""

    def __init__(self, *, nanoseconds: int = 0) -> None:
        self.nanoseconds = nanoseconds


class Tf2Buffer:
    """tf2_ros.Buffer's Python interface (set_transform, set_transform_static, lookup_transform) over
    the package's TransformBuffer for the tree; records every lookup (target, source, stamp ns,
    timeout ns). A lookup that cannot be answered raises at once (no waiting here)."""

    def __init__(self) -> None:
        self.tree = TransformBuffer()
        self.lookups: list[tuple[str, str, int, int]] = []

    def set_transform(self, transform: Any, authority: str) -> None:
        self.tree.add(transform)

    def set_transform_static(self, transform: Any, authority: str) -> None:
        self.tree.add(transform, static=True)

    def lookup_transform(self, target_frame: str, source_frame: str, time: Time, timeout: Duration) -> Any:
        self.lookups.append((target_frame, source_frame, time.nanoseconds, timeout.nanoseconds))
        try:
            target_from_source = self.tree.lookup(target_frame, source_frame, time.nanoseconds)
        except TransformUnavailable as error:
            raise TransformException(f"tf2 stand-in: {error}") from None
        return transform(target_frame, source_frame, time.nanoseconds, target_from_source)


class QoSProfile:
    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def __repr__(self) -> str:
        return f"QoSProfile({self.settings})"


class Logger:
    """A node's logger; once the context is shut down it fails as rclpy's does (the line does not
    reach /rosout), recorded as ("rosout", error)."""

    def __init__(self, state: RosState) -> None:
        self.state = state
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Any:
        if level not in ("debug", "info", "warning", "error", "fatal"):
            raise AttributeError(level)

        def log(message: str) -> None:
            if self.state.shut_down:
                self.lines.append(("rosout", "Failed to publish log message to rosout: publisher's "
                                             "context is invalid"))
            self.lines.append((level, str(message)))

        return log


class Publisher:
    def __init__(self, msg_type: type, topic: str, qos: Any) -> None:
        self.msg_type, self.topic, self.qos = msg_type, topic, qos
        self.messages: list[Any] = []
        self.condition = threading.Condition()

    def publish(self, msg: Any) -> None:
        assert isinstance(msg, self.msg_type), f"{type(msg).__name__} published on {self.topic}"
        with self.condition:
            self.messages.append(msg)
            self.condition.notify_all()

    def wait_for(self, count: int) -> list[Any]:
        with self.condition:
            assert self.condition.wait_for(lambda: len(self.messages) >= count, TIMEOUT_S), self.topic
            return list(self.messages)


@dataclass
class Subscription:
    msg_type: type
    topic: str
    callback: Any
    qos: Any


@dataclass
class Service:
    srv_type: Any
    name: str
    callback: Any


@dataclass
class TriggerRequest:
    """std_srvs/srv/Trigger request (empty)."""


@dataclass
class TriggerResponse:
    """std_srvs/srv/Trigger response."""

    success: bool = False
    message: str = ""


class Trigger:
    """std_srvs.srv.Trigger: rclpy hands the callback a Request and a fresh Response to fill and return."""

    Request = TriggerRequest
    Response = TriggerResponse


def call(service: Service) -> TriggerResponse:
    """What rclpy's executor does with a request: callback(request, response) -> response."""
    return service.callback(service.srv_type.Request(), service.srv_type.Response())


@dataclass
class Timer:
    period_s: float
    callback: Any


@dataclass
class RosState:
    """What the stand-ins recorded, `-p NAME:=VALUE` overrides given to `rclpy.init`, and what the
    test makes happen at a call (`hooks`: a stand-in's name -> a function of the call's number)."""

    overrides: dict[str, Any] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    nodes: list[Any] = field(default_factory=list)
    signal_handler_options: Any = None
    shut_down: bool = False
    hooks: dict[str, Any] = field(default_factory=dict)

    def call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.hooks:
            self.hooks[name](self.calls.count(name))


def ros_stand_ins(state: RosState) -> dict[str, types.ModuleType]:
    """rclpy (init, ok, try_shutdown, Node, qos, exceptions, executors, signals), rcl_interfaces.msg, tf2_ros,
    and the message packages (their classes: rosbags' ROS 2 Humble ones)."""

    class Node:
        def __init__(self, node_name: str, *, parameter_overrides: dict[str, Any] | None = None) -> None:
            self.node_name = node_name
            self.overrides = {**state.overrides, **(parameter_overrides or {})}
            self.declared: dict[str, tuple[Any, Any]] = {}
            self.values: dict[str, Any] = {}
            self.publishers: list[Publisher] = []
            self.subscriptions: list[Subscription] = []
            self.timers: list[Timer] = []
            self.services: list[Service] = []
            self.broadcasters: list[TransformBroadcaster] = []
            self.listeners: list[TransformListener] = []
            self.logger = Logger(state)
            self.destroyed = False
            state.nodes.append(self)

        def declare_parameter(self, name: str, value: Any, descriptor: Any = None) -> Any:
            if name in self.declared:
                raise ParameterException(f"parameter {name!r} declared twice")
            given = self.overrides.get(name, value)
            if type(given) is not type(value):  # as rclpy without dynamic typing
                raise ParameterException(f"parameter {name!r} of type {type(value).__name__} was "
                                         f"overridden by a value of type {type(given).__name__}")
            self.declared[name] = (value, descriptor)
            self.values[name] = given

        def get_parameter(self, name: str) -> Any:
            if name not in self.values:
                raise ParameterException(f"parameter {name!r} not declared")
            return types.SimpleNamespace(value=self.values[name])

        def create_publisher(self, msg_type: type, topic: str, qos: Any) -> Publisher:
            self.publishers.append(Publisher(msg_type, topic, qos))
            return self.publishers[-1]

        def create_subscription(self, msg_type: type, topic: str, callback: Any, qos: Any) -> Subscription:
            self.subscriptions.append(Subscription(msg_type, topic, callback, qos))
            return self.subscriptions[-1]

        def create_service(self, srv_type: Any, name: str, callback: Any) -> Service:
            self.services.append(Service(srv_type, name, callback))
            return self.services[-1]

        def create_timer(self, period_s: float, callback: Any) -> Timer:
            self.timers.append(Timer(period_s, callback))
            return self.timers[-1]

        def get_logger(self) -> Logger:
            return self.logger

        def destroy_node(self) -> None:
            state.call("destroy_node")
            self.destroyed = True

    class TransformBroadcaster:
        def __init__(self, node: Node) -> None:
            self.sent: list[list[Any]] = []
            node.broadcasters.append(self)

        def sendTransform(self, transforms: list[Any]) -> None:  # tf2_ros's name
            self.sent.append(list(transforms))

    class TransformListener:
        def __init__(self, buffer: Tf2Buffer, node: Node) -> None:
            self.buffer = buffer
            node.listeners.append(self)

    class ParameterDescriptor:
        def __init__(self, description: str = "", read_only: bool = False) -> None:
            self.description, self.read_only = description, read_only
            self.floating_point_range: list[Any] = []
            self.integer_range: list[Any] = []
            self.additional_constraints = ""

    def init(*, args: list[str] | None = None, signal_handler_options: Any = None) -> None:
        state.call("init")
        state.signal_handler_options = signal_handler_options
        words = list(args or [])
        for flag, value in itertools.pairwise(words):
            if flag == "-p":
                name, _, text = value.partition(":=")
                state.overrides[name] = yaml.safe_load(text)

    class SingleThreadedExecutor:
        def add_node(self, node: Node) -> None:
            self.node = node

        def spin_once(self, timeout_sec: float | None = None) -> None:
            state.call("spin_once")

    def ok() -> bool:
        return not state.shut_down

    def try_shutdown() -> None:
        state.shut_down = True
        state.call("try_shutdown")

    def module(name: str, **attributes: Any) -> types.ModuleType:
        made = types.ModuleType(name)
        made.__dict__.update(attributes)
        return made

    modules = {
        "rclpy": module("rclpy", init=init, ok=ok, try_shutdown=try_shutdown),
        "rclpy.node": module("rclpy.node", Node=Node),
        "rclpy.qos": module("rclpy.qos", QoSProfile=QoSProfile,
                            qos_profile_sensor_data=QoSProfile(name="sensor_data"),
                            DurabilityPolicy=types.SimpleNamespace(TRANSIENT_LOCAL="transient_local",
                                                                   VOLATILE="volatile"),
                            ReliabilityPolicy=types.SimpleNamespace(RELIABLE="reliable",
                                                                    BEST_EFFORT="best_effort")),
        "rclpy.exceptions": module("rclpy.exceptions", ParameterException=ParameterException),
        "rclpy.time": module("rclpy.time", Time=Time),
        "rclpy.duration": module("rclpy.duration", Duration=Duration),
        "rclpy.executors": module("rclpy.executors", ExternalShutdownException=ExternalShutdownException,
                                  SingleThreadedExecutor=SingleThreadedExecutor),
        "rclpy.signals": module("rclpy.signals",
                                SignalHandlerOptions=types.SimpleNamespace(ALL="all", NO="no")),
        "rcl_interfaces": module("rcl_interfaces"),
        "rcl_interfaces.msg": module(
            "rcl_interfaces.msg", ParameterDescriptor=ParameterDescriptor,
            FloatingPointRange=lambda **kw: types.SimpleNamespace(kind="float", **kw),
            IntegerRange=lambda **kw: types.SimpleNamespace(kind="int", **kw)),
        "tf2_ros": module("tf2_ros", TransformBroadcaster=TransformBroadcaster, Buffer=Tf2Buffer,
                          TransformListener=TransformListener, TransformException=TransformException),
        "std_srvs": module("std_srvs"),
        "std_srvs.srv": module("std_srvs.srv", Trigger=Trigger),
    }
    for package in MESSAGE_PACKAGES:
        messages = module(f"{package}.msg")
        messages.__getattr__ = lambda name, package=package: TYPESTORE.types[f"{package}/msg/{name}"]
        modules[f"{package}.msg"] = messages
    return modules


@pytest.fixture
def ros(monkeypatch) -> types.SimpleNamespace:
    """`node` (posenet_ros.node.rclpy_node imported against the stand-ins) and `state` (what they
    recorded); the real modules are back after the test."""
    state = RosState()
    for name, stand_in in ros_stand_ins(state).items():
        monkeypatch.setitem(sys.modules, name, stand_in)
    monkeypatch.delitem(sys.modules, "posenet_ros.node.rclpy_node", raising=False)
    node_module = importlib.import_module("posenet_ros.node.rclpy_node")
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield types.SimpleNamespace(node=node_module, state=state)
    for signum, handler in handlers.items():  # main() leaves its handlers installed, as for the process
        signal.signal(signum, handler)
    sys.modules.pop("posenet_ros.node.rclpy_node", None)
    if hasattr(posenet_ros.node, "rclpy_node"):
        delattr(posenet_ros.node, "rclpy_node")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("rclpy_node") / "model.safetensors")


def start(ros, **overrides: Any) -> Any:
    """RelocalizeNode with these parameter overrides (as `-p NAME:=VALUE`), base_frame "" (the camera's
    pose, no TF) unless they set it; stop it with destroy_node."""
    return ros.node.RelocalizeNode(parameter_overrides={"base_frame": "", **overrides})


def wait_until(condition: Any, timeout_s: float = TIMEOUT_S) -> bool:
    """Poll `condition()` until it is true (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _same(a: Any, b: Any) -> bool:
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == b


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


def test_the_node_declares_every_parameter_read_only_with_its_default_and_range(ros, model_path):
    node = start(ros, model=str(model_path), device="cpu")
    try:
        assert node.node_name == NODE_NAME
        assert list(node.declared) == [spec.name for spec in NODE_PARAMETERS]  # no parameter of its own
        for spec in NODE_PARAMETERS:
            default, descriptor = node.declared[spec.name]
            assert type(default) is type(spec.default) and _same(default, spec.default), spec.name
            assert descriptor.description == spec.description and descriptor.read_only, spec.name
            ranges = descriptor.floating_point_range + descriptor.integer_range
            if spec.minimum is None:
                assert ranges == [], spec.name
            else:
                (limits,) = ranges
                assert limits.kind == ("float" if isinstance(spec.default, float) else "int"), spec.name
                assert (limits.from_value, limits.to_value) == (spec.minimum, spec.maximum), spec.name
            assert descriptor.additional_constraints == (
                f"one of: {', '.join(spec.choices)}" if spec.choices else ""), spec.name
    finally:
        node.destroy_node()


def test_parameter_values_are_what_the_pipeline_runs_with(ros, model_path):
    values = {"model": str(model_path), "device": "cpu", "map_frame": "world", "mc_samples": 4,
              "image_topic": "/cam/image_raw/compressed", "diagnostics_period": 0.5, "reset_gap": 2.5}
    node = start(ros, **values)
    try:
        assert node.pipeline.settings == NodeSettings.from_values({**values, "base_frame": ""})
        assert node.pipeline.relocalizer.uncertainty.mc_samples == 4
        (timer,) = node.timers
        assert timer.period_s == 0.5 and timer.callback == node.pipeline.publish_diagnostics
    finally:
        node.destroy_node()
    assert node.pipeline is None and node.destroyed  # the worker stopped, then the node


def test_publishers_and_subscriptions_are_the_pipelines_topics_with_their_qos(ros, model_path):
    node = start(ros, model=str(model_path), device="cpu", use_depth=True)
    try:
        qos = ros.node.QOS
        settings = node.pipeline.settings
        # Every QoS profile name the pipeline's topics use has its rclpy profile.
        names = {topic.qos for topic in [*OUTPUTS.values(), *input_topics(settings).values()]}
        assert names <= set(qos)
        assert qos["sensor_data"].settings == {"name": "sensor_data"}  # rclpy's qos_profile_sensor_data
        assert qos["default"].settings == {"depth": 10}
        assert qos["transient_local"].settings == {"depth": 1, "durability": "transient_local",
                                                   "reliability": "reliable"}
        # One publisher per output (tf goes through tf2_ros), of its type and QoS.
        assert {p.topic: (p.msg_type, p.qos) for p in node.publishers} == {
            topic.name: (TYPESTORE.types[topic.type_name], qos[topic.qos])
            for name, topic in OUTPUTS.items() if name != "tf"}
        handlers = {"image": node.pipeline.on_image, "camera_info": node.pipeline.on_camera_info,
                    "depth": node.pipeline.on_depth, "reset": node.pipeline.on_reset,
                    "relocalize": node.pipeline.on_relocalize}
        assert {s.topic: (s.msg_type, s.qos, s.callback) for s in node.subscriptions} == {
            topic.name: (TYPESTORE.types[topic.type_name], qos[topic.qos], handlers[name])
            for name, topic in input_topics(settings).items()}
        assert set(input_topics(settings)) == {"image", "camera_info", "depth", "reset", "relocalize"}
        assert input_topics(settings)["camera_info"].name == "/camera/camera_info"
        assert node.broadcasters == [] and node.tf_broadcaster is None  # publish_tf is off
        assert node.listeners == [] and node.tf_buffer is None  # base_frame "": no TF needed
    finally:
        node.destroy_node()


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def test_a_camera_frame_is_answered_on_every_output(ros, model_path):
    node = start(ros, model=str(model_path), device="cpu", publish_tf=True, tf_mode="map_camera",
                 map_frame="world", publish_unknown=True)  # the first frame is not yet a known place
    by_topic = {publisher.topic: publisher for publisher in node.publishers}
    try:
        (map_poses,) = by_topic["relocalization/map_poses"].wait_for(1)  # once, at start
        assert len(map_poses.poses) == 5 and map_poses.header.frame_id == "world"
        (on_image,) = [s.callback for s in node.subscriptions if s.topic == "/camera/image_raw"]
        on_image(image(0))  # what rclpy hands the callback
        (pose,) = by_topic["relocalized_pose"].wait_for(1)
        (known,) = by_topic["relocalization/loop_closure"].wait_for(1)
        (uncertainty,) = by_topic["relocalization/uncertainty"].wait_for(1)
        # The worker counts the frame once it has published all of it; then the timer reports it.
        assert wait_until(lambda: node.pipeline.diagnostics.counts["processed"] == 1)
        (diagnostics_timer,) = node.timers
        diagnostics_timer.callback()
        (diagnostics,) = by_topic["/diagnostics"].wait_for(1)
    finally:
        node.destroy_node()
    expected = Relocalizer(model_path, device="cpu").process(rgb_frame(0), stamp_ns=stamp(0))
    assert stamp_to_ns(pose.header.stamp) == stamp(0) and pose.header.frame_id == "world"
    position, quat = pose_from_msg(pose)
    np.testing.assert_allclose(position, expected.position_3, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(quat, expected.quat_wxyz_4, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(covariance_from_msg(pose), expected.covariance_66, rtol=1e-6, atol=1e-12)
    assert known.data == expected.known_place
    assert uncertainty.data == pytest.approx(expected.uncertainty_m)
    # The transform goes through tf2_ros's broadcaster, not a /tf publisher.
    (broadcaster,) = node.broadcasters
    ((transform,),) = broadcaster.sent
    assert (transform.header.frame_id, transform.child_frame_id) == ("world", "camera_optical")
    assert stamp_to_ns(transform.header.stamp) == stamp(0)
    values = {kv.key: kv.value for kv in diagnostics.status[0].values}
    assert values["received"] == values["processed"] == "1" and values["device"] == "cpu"


def test_the_relocalize_service_sends_the_next_confident_pose_to_initialpose(ros, model_path):
    node = start(ros, model=str(model_path), device="cpu")
    by_topic = {publisher.topic: publisher for publisher in node.publishers}
    try:
        (service,) = node.services
        assert (service.srv_type, service.name) == (Trigger, "relocalize")
        response = call(service)  # accepted at once; the pose follows
        assert response.success and "next confident pose goes to initialpose" in response.message
        (on_image,) = [s.callback for s in node.subscriptions if s.topic == "/camera/image_raw"]
        for i in range(3):  # frame 0 is not yet a known place (min_frames 2): withheld
            on_image(image(i))
            by_topic["relocalization/status"].wait_for(i + 1)
        assert wait_until(lambda: node.pipeline.diagnostics.counts["processed"] == 3)
    finally:
        node.destroy_node()
    (initial,) = by_topic["initialpose"].messages
    poses = by_topic["relocalized_pose"].messages
    assert [stamp_to_ns(p.header.stamp) for p in poses] == [stamp(1), stamp(2)]
    assert initial is poses[0]  # the same message, once
    response = call(service)  # after destroy_node: refused
    assert not response.success and response.message == "the node is shutting down"


@pytest.mark.parametrize(("overrides", "message"), [
    ({}, "invalid parameters: parameter 'model' is required"),
    ({"model": "m", "mc_samples": 5000}, "invalid parameters: parameter 'mc_samples' must lie in [-1, 1024]"),
    ({"model": "m", "use_depth": "yes"}, "invalid parameters: parameter 'use_depth' of type bool"),
    ({"model": "/nowhere/run"}, "cannot use model '/nowhere/run': no such checkpoint"),
])


def test_invalid_parameters_or_model_stop_the_node_with_a_fatal_message(ros, overrides, message):
    with pytest.raises(ros.node.StartupError, match=f"^{re.escape(message)}"):
        start(ros, **overrides)
    (node,) = ros.state.nodes
    assert node.logger.lines[-1][0] == "fatal" and node.logger.lines[-1][1].startswith(message)
    assert node.publishers == node.subscriptions == node.timers == node.services == []


def test_an_rgbd_model_needs_use_depth(ros, tmp_path):
    path = make_checkpoint(tmp_path / "model.safetensors", depth="dual_stream")
    with pytest.raises(ros.node.StartupError, match="needs a depth image with every frame: set use_depth"):
        start(ros, model=str(path), device="cpu")
    node = start(ros, model=str(path), device="cpu", use_depth=True)
    try:
        assert "/camera/depth/image_raw" in {s.topic for s in node.subscriptions}
    finally:
        node.destroy_node()


def send(*signums: int) -> Any:
    """A hook that sends these signals to this process (as a terminal and `ros2 launch` do)."""
    return lambda number: [os.kill(os.getpid(), signum) for signum in signums]


def test_main_stops_once_in_order_however_many_signals_arrive(ros, model_path):
    """Ctrl-C under ros2 launch: SIGINT twice (terminal and launch) while spinning, SIGINT and
    SIGTERM during the cleanup, SIGINT after it: main returns 0, logs "shutting down" while the context
    is valid, stops the worker and the node once, then shuts down; no KeyboardInterrupt anywhere."""
    ros.state.hooks = {"spin_once": lambda n: n == 3 and send(signal.SIGINT, signal.SIGINT)(n),
                       "destroy_node": send(signal.SIGINT, signal.SIGTERM),
                       "try_shutdown": send(signal.SIGINT)}
    args = ["--ros-args", "-p", f"model:={model_path}", "-p", "device:=cpu"]
    assert ros.node.main(args) == 0
    assert ros.state.signal_handler_options == "no"  # rclpy's handlers would shut the context down
    assert ros.state.calls == ["init", "spin_once", "spin_once", "spin_once", "destroy_node", "try_shutdown"]
    (node,) = ros.state.nodes
    assert node.destroyed and node.pipeline is None
    assert node.logger.lines[-1] == ("info", "shutting down (SIGINT)")
    assert "rosout" not in {level for level, _ in node.logger.lines}


def test_main_after_an_external_shutdown_logs_nothing_through_the_dead_context(ros, model_path):
    def shut_down_elsewhere(number: int) -> None:
        ros.state.shut_down = True
        raise ExternalShutdownException()

    ros.state.hooks = {"spin_once": shut_down_elsewhere}
    assert ros.node.main(["--ros-args", "-p", f"model:={model_path}", "-p", "device:=cpu"]) == 0
    assert ros.state.calls == ["init", "spin_once", "destroy_node", "try_shutdown"]
    (node,) = ros.state.nodes
    assert node.destroyed and node.pipeline is None
    assert "rosout" not in {level for level, _ in node.logger.lines}
    assert not any("shutting down" in line for _, line in node.logger.lines)


def test_main_exits_1_when_the_node_cannot_start(ros):
    assert ros.node.main(["--ros-args", "-p", "device:=cpu"]) == 1  # no model
    assert ros.state.calls == ["init", "try_shutdown"]
    (node,) = ros.state.nodes
    assert node.logger.lines[-1] == ("fatal", "invalid parameters: parameter 'model' is required: the path "
                                              "of a training run or its model.safetensors")


def test_the_base_pose_comes_from_tf2s_buffer_and_map_to_odom_goes_to_its_broadcaster(ros, model_path):
    node = start(ros, model=str(model_path), device="cpu", base_frame="base_link", publish_tf=True,
                 transform_timeout=0.5, publish_unknown=True)
    by_topic = {publisher.topic: publisher for publisher in node.publishers}
    try:
        (listener,) = node.listeners
        assert listener.buffer is node.tf_buffer
        assert {s.topic for s in node.subscriptions} == {"/camera/image_raw", "/camera/camera_info",
                                                         "relocalization/reset", "relocalization/relocalize"}
        # What tf2's listener does with /tf_static and /tf.
        extrinsic = transform("base_link", "camera_optical", 0, BASE_FROM_CAMERA)
        node.tf_buffer.set_transform_static(extrinsic, "test")
        node.tf_buffer.set_transform(transform("odom", "base_link", stamp(0), odom_from_base(0)), "test")
        (on_image,) = [s.callback for s in node.subscriptions if s.topic == "/camera/image_raw"]
        on_image(image(0))
        (pose,) = by_topic["relocalized_pose"].wait_for(1)
        (camera_pose,) = by_topic["relocalization/camera_pose"].wait_for(1)
        on_image(image(1))  # no odometry at stamp(1): answered without its map -> odom
        assert wait_until(lambda: node.pipeline.diagnostics.counts["no_map_odom"] == 1)
        assert len(by_topic["relocalized_pose"].wait_for(2)) == 2
        assert node.pipeline.diagnostics.counts["no_transform"] == 0
    finally:
        node.destroy_node()
    # The pipeline asked tf2 at the image stamps, with transform_timeout.
    assert node.tf_buffer.lookups[:2] == [("base_link", "camera_optical", stamp(0), 500_000_000),
                                          ("odom", "base_link", stamp(0), 500_000_000)]
    map_from_camera = pose_from_position_quat(*pose_from_msg(camera_pose))
    map_from_base = pose_from_position_quat(*pose_from_msg(pose))
    np.testing.assert_allclose(map_from_base @ BASE_FROM_CAMERA, map_from_camera, atol=1e-9)
    np.testing.assert_allclose(covariance_from_msg(pose), transport_covariance(
        covariance_from_msg(camera_pose), map_from_camera, np.linalg.inv(BASE_FROM_CAMERA)), atol=1e-12)
    (broadcaster,) = node.broadcasters
    ((sent,),) = broadcaster.sent
    assert (sent.header.frame_id, sent.child_frame_id) == ("map", "odom")
    assert stamp_to_ns(sent.header.stamp) == stamp(0) + 1_000_000_000  # transform_tolerance 1 s
    map_from_odom = pose_from_position_quat(*pose_from_msg(sent))
    np.testing.assert_allclose(map_from_odom @ odom_from_base(0) @ BASE_FROM_CAMERA, map_from_camera,
                               atol=1e-9)
    (warning,) = [line for level, line in node.logger.lines if level == "warning" and "no transform" in line]
    assert "no map -> odom for frame" in warning and "no transform odom -> base_link" in warning
    assert "stale" in warning


@pytest.mark.parametrize("odometry", ["tf", "/odom"])
def test_the_odometry_is_subscribed_into_the_pipelines_own_buffer(ros, tmp_path, odometry):
    """odometry tf: /tf and /tf_static also go to the pipeline (its odometry buffer refuses gaps, which
    tf2's cannot); a topic: nav_msgs/Odometry into the pipeline."""
    model = store_fused_temporal(make_checkpoint(tmp_path / "model.safetensors", mc_samples=0))
    node = start(ros, model=str(model), device="cpu", base_frame="base_link", odometry=odometry)
    try:
        topics = {s.topic: s for s in node.subscriptions}
        assert node.pipeline.odometry is not None and node.pipeline.odometry_buffer is not None
        if odometry == "tf":
            assert {"/tf", "/tf_static"} <= set(topics) and node.pipeline.takes_tf
            topics["/tf"].callback(tf_message(TYPES, [transform("odom", "base_link", stamp(0),
                                                                odom_from_base(0))]))
        else:
            assert "/tf" not in topics and topics["/odom"].msg_type.__msgtype__ == "nav_msgs/msg/Odometry"
            topics["/odom"].callback(odometry_msg(stamp(0), odom_from_base(0)))
        np.testing.assert_allclose(node.pipeline.odometry_buffer.lookup("odom", "base_link", stamp(0)),
                                   odom_from_base(0), atol=1e-12)
    finally:
        node.destroy_node()
