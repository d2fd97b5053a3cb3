"""The relocalization node on rclpy (ROS 2 Humble, Jazzy): `ros2 run posenet_ros relocalize_node`.

Run it with the launch file (parameters from `config/relocalize.yaml`, topic remappings):

    ros2 launch posenet_ros relocalize.launch.py model:=/path/to/run image_topic:=/my/camera/image_raw

or directly, with a parameters file and overrides:

    ros2 run posenet_ros relocalize_node --ros-args \\
        --params-file config/relocalize.yaml -p model:=/path/to/run -p image_topic:=/my/camera/image_raw

Topics (`pipeline.OUTPUTS`, `pipeline.input_topics`; relative names resolve in the node's namespace):

    subscribes  image_topic (sensor_msgs/Image, or CompressedImage when the name ends in /compressed)
                camera_info_topic (sensor_msgs/CameraInfo; auto: beside image_topic; empty: none)
                depth_topic (sensor_msgs/Image, only with use_depth)            all sensor-data QoS
                relocalization/reset           std_msgs/Bool
                relocalization/relocalize      std_msgs/Empty (as the relocalize service)
                /tf, /tf_static                through tf2_ros's TransformListener (when frames need them);
                                               with odometry tf also into the pipeline's odometry buffer
                odometry (a topic name)        nav_msgs/Odometry (sensor-data QoS), with odometry naming it
    publishes   relocalized_pose               geometry_msgs/PoseWithCovarianceStamped (base; if confident)
                relocalization/camera_pose     geometry_msgs/PoseWithCovarianceStamped (camera; if confident)
                relocalization/status          diagnostic_msgs/DiagnosticArray (every frame: why)
                initialpose                    geometry_msgs/PoseWithCovarianceStamped (on request)
                relocalization/loop_closure    std_msgs/Bool
                relocalization/uncertainty     std_msgs/Float64
                relocalization/map_poses       geometry_msgs/PoseArray (once, transient local)
                relocalization/scene_points    sensor_msgs/PointCloud2 (scene coordinate regression only)
                /tf                            map_frame -> odom_frame or -> camera (with publish_tf, tf_mode)
                /diagnostics                   diagnostic_msgs/DiagnosticArray (every diagnostics_period)
    serves      relocalize                     std_srvs/Trigger: the next confident pose goes to initialpose

Parameters: every entry of `parameters.NODE_PARAMETERS` (read-only, with its description and range;
`ros2 param describe /relocalize_node <name>`), validated by `NodeSettings.from_values`.

This module is wiring only: the decisions (settings, topics, QoS profile names, what is published
when) are made by `parameters.py` and `pipeline.py`, which the Cyclone DDS runtime
(`posenet-ros node`) shares. It is the only module that imports rclpy. The messages are built by
`conversions.py` with `RclpyTypes` (rclpy's message classes; point clouds by sensor_msgs_py's
`create_cloud_xyz32`). Transforms (base <- camera, odom <- base at each image's stamp) come from a
tf2_ros Buffer filled by a TransformListener, through `Tf2Lookup`, the interface the DDS runtime's
`TransformBuffer` also offers. The odometry for the smoothing (parameter `odometry` tf) is looked up in
the pipeline's own `TransformBuffer`, which this node feeds from its own /tf and /tf_static
subscriptions: it refuses stamps in gaps of the odometry (node/odometry.py), which tf2 cannot say.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from std_srvs.srv import Trigger
from tf2_ros import Buffer, TransformBroadcaster, TransformException, TransformListener

from posenet_ros.core.geometry import pose_from_position_quat
from posenet_ros.node.parameters import NODE_NAME, NODE_PARAMETERS, NodeSettings, ParameterSpec
from posenet_ros.node.pipeline import OUTPUTS, RelocalizationPipeline, build_relocalizer, input_topics
from posenet_ros.node.robot_frames import needs_transforms
from posenet_ros.node.shutdown import POLL_S, SignalStop
from posenet_ros.ros.conversions import RclpyTypes, pose_from_msg
from posenet_ros.ros.tf_buffer import TransformUnavailable

# The rclpy profile of each QoS profile name that `pipeline.Topic.qos` uses.
QOS: dict[str, QoSProfile] = {
    "sensor_data": qos_profile_sensor_data,
    "default": QoSProfile(depth=10),  # reliable, volatile
    "transient_local": QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                  reliability=ReliabilityPolicy.RELIABLE),
}


class Tf2Lookup:
    """`robot_frames.TransformLookup` over a tf2_ros Buffer: target_from_source (4x4, metres) at a stamp;
    tf2's lookup, connectivity and extrapolation errors become TransformUnavailable (their message
    names the frames)."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int,
               timeout_s: float = 0.0) -> np.ndarray:
        try:
            transform = self.buffer.lookup_transform(target_frame, source_frame, Time(nanoseconds=stamp_ns),
                                                     timeout=Duration(nanoseconds=round(timeout_s * 1e9)))
        except TransformException as error:
            raise TransformUnavailable(f"no transform {target_frame} -> {source_frame}: {error}") from None
        return pose_from_position_quat(*pose_from_msg(transform))


class StartupError(RuntimeError):
    """The node cannot start (invalid parameters, a checkpoint that cannot be used); already logged."""


def parameter_descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """The read-only descriptor of one parameter: description, range, allowed values."""
    descriptor = ParameterDescriptor(description=spec.description, read_only=True)
    if spec.minimum is not None and spec.maximum is not None:
        if isinstance(spec.default, float):
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(spec.minimum), to_value=float(spec.maximum), step=0.0)]
        else:
            descriptor.integer_range = [IntegerRange(
                from_value=int(spec.minimum), to_value=int(spec.maximum), step=1)]
    if spec.choices:
        descriptor.additional_constraints = f"one of: {', '.join(spec.choices)}"
    return descriptor


class RelocalizeNode(Node):
    """Declares the parameters, loads the checkpoint, and connects `RelocalizationPipeline` to rclpy
    publishers, subscriptions and a diagnostics timer. Raises `StartupError` (after logging it) when
    the parameters are invalid or the checkpoint cannot be used."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.pipeline: RelocalizationPipeline | None = None
        try:
            for spec in NODE_PARAMETERS:
                self.declare_parameter(spec.name, spec.default, parameter_descriptor(spec))
            settings = NodeSettings.from_values(
                {spec.name: self.get_parameter(spec.name).value for spec in NODE_PARAMETERS})
        except (ParameterException, ValueError) as error:
            self._fail(f"invalid parameters: {error}")
        try:
            relocalizer = build_relocalizer(settings)
        except (ValueError, OSError, RuntimeError) as error:  # no such file, bad checkpoint, needs depth
            self._fail(f"cannot use model {settings.model!r}: {error}")

        self.types = RclpyTypes()
        self.publishers_by_output = {
            name: self.create_publisher(self.types.get(topic.type_name), topic.name, QOS[topic.qos])
            for name, topic in OUTPUTS.items() if name != "tf"}
        # /tf through tf2_ros (its QoS); the pipeline publishes "tf" only with publish_tf
        self.tf_broadcaster = TransformBroadcaster(self) if settings.publish_tf else None
        # /tf and /tf_static into tf2's buffer, when the frames need them
        self.tf_buffer = Buffer() if needs_transforms(settings) else None
        self.tf_listener = TransformListener(self.tf_buffer, self) if self.tf_buffer is not None else None
        self.pipeline = RelocalizationPipeline(
            settings, relocalizer, self.types, self._publish, log=self.get_logger(),
            transforms=Tf2Lookup(self.tf_buffer) if self.tf_buffer is not None else None)
        handlers = {"image": self.pipeline.on_image, "camera_info": self.pipeline.on_camera_info,
                    "depth": self.pipeline.on_depth, "reset": self.pipeline.on_reset,
                    "relocalize": self.pipeline.on_relocalize, "odometry": self.pipeline.on_odometry,
                    "tf": self.pipeline.on_tf, "tf_static": self.pipeline.on_tf_static}
        # the TransformListener subscribes to /tf and /tf_static for the lookups; the pipeline too when
        # it keeps the odometry's own buffer
        inputs = {name: topic for name, topic in input_topics(settings).items()
                  if name not in ("tf", "tf_static") or self.pipeline.takes_tf}
        self.subscriptions_by_input = {
            name: self.create_subscription(self.types.get(topic.type_name), topic.name, handlers[name],
                                           QOS[topic.qos])
            for name, topic in inputs.items()}
        self.relocalize_service = self.create_service(Trigger, "relocalize", self._relocalize)
        self.diagnostics_timer = self.create_timer(settings.diagnostics_period,
                                                   self.pipeline.publish_diagnostics)
        self.pipeline.start()
        self.get_logger().info(f"relocalizing {', '.join(topic.name for topic in inputs.values())} "
                               f"with {relocalizer.model_path} on {relocalizer.device} "
                               f"(runtime {relocalizer.runtime})")

    def _publish(self, output: str, msg: Any) -> None:
        if output == "tf":
            if self.tf_broadcaster is not None:
                self.tf_broadcaster.sendTransform(msg.transforms)
        else:
            self.publishers_by_output[output].publish(msg)

    def _relocalize(self, request: Any, response: Any) -> Any:
        """std_srvs/Trigger `relocalize`: accepted at once (success); the pose follows on initialpose
        with the next confident frame."""
        response.success = self.pipeline is not None
        response.message = (self.pipeline.request_relocalization() if self.pipeline is not None
                            else "the node is shutting down")
        return response

    def _fail(self, message: str) -> NoReturn:
        self.get_logger().fatal(message)
        raise StartupError(message)

    def destroy_node(self) -> None:
        """Stop the worker (after the frame it is processing), then destroy the node."""
        if self.pipeline is not None:
            self.pipeline.stop()
            self.pipeline = None
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """`relocalize_node`: run until SIGINT or SIGTERM, or until the context is shut down; exit code 1
    if the node cannot start.

    rclpy's own signal handlers are off (`SignalHandlerOptions.NO`): they shut the context down on
    the first SIGINT, so that "shutting down" and whatever the worker still logged failed to reach
    /rosout ("publisher's context is invalid"), and the next SIGINT raised KeyboardInterrupt in the
    cleanup. Instead every signal only requests a stop (`shutdown.SignalStop`), and the node stops
    once, in order: the log line, the worker, the node, then the context. Nothing logs through rclpy
    after that."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = SignalStop().install()
    node: RelocalizeNode | None = None
    try:
        node = RelocalizeNode()
        executor = SingleThreadedExecutor()  # callbacks never block: one thread is enough
        executor.add_node(node)
        while not stop.requested:
            executor.spin_once(timeout_sec=POLL_S)
    except StartupError:
        return 1
    except ExternalShutdownException:
        pass  # the context is shut down already: nothing may log through it now
    finally:
        if node is not None:
            if rclpy.ok():  # not after an external shutdown
                node.get_logger().info("shutting down" + (f" ({stop.signal_name})" if stop.requested else ""))
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
