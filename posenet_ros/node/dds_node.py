"""The relocalization node on Cyclone DDS, without ROS: `posenet-ros node`.

    posenet-ros node --model run/ --params config/relocalize.yaml [--param use_depth:=true]
                     [--namespace /robot1] [--domain-id 3]

It reads the same parameters file as the rclpy node (`relocalize_node: ros__parameters:`) and runs
the same `RelocalizationPipeline` (pipeline.py) over `dds.DdsNode`, so its topics, QoS, stamps and
messages are those of `ros2 run posenet_ros relocalize_node`; ROS 2 nodes on the same domain
subscribe to them as usual. The TF output goes to /tf as a tf2_msgs/TFMessage, as a
TransformBroadcaster sends it. When the node needs transforms (base_frame set, or map -> odom) it
subscribes to /tf and /tf_static (transient local, as tf2's listener) into the pipeline's
`TransformBuffer` (ros/tf_buffer.py), which interpolates them at each image's stamp; the odometry
(parameter `odometry`: "tf", or a nav_msgs/Odometry topic subscribed here) is looked up in the same way
(node/odometry.py). Without ROS there
are no services: the rclpy node's `relocalize` service is the `relocalization/relocalize` topic here
(std_msgs/Empty; both runtimes have it).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from posenet_ros.node.parameters import NODE_NAME, NodeSettings, parse_override, read_parameters_file
from posenet_ros.node.pipeline import OUTPUTS, RelocalizationPipeline, build_relocalizer, input_topics
from posenet_ros.node.shutdown import POLL_S, SignalStop
from posenet_ros.ros.conversions import RosbagsTypes
from posenet_ros.ros.dds import DdsNode

logger = logging.getLogger("posenet_ros.node")


def load_settings(params_file: str | Path | None, model: str | None = None,
                  overrides: list[str] | tuple[str, ...] = (), namespace: str = "/") -> NodeSettings:
    """Node settings from a parameters file (the section of this node in `namespace`), then
    `NAME:=VALUE` overrides, then `model`."""
    values = read_parameters_file(params_file, NODE_NAME, namespace) if params_file is not None else {}
    values.update(parse_override(text) for text in overrides)
    if model is not None:
        values["model"] = str(model)
    return NodeSettings.from_values(values)


def run_node(settings: NodeSettings, *, namespace: str = "/", domain_id: int | None = None,
             config: str | None = None,
             on_ready: Callable[[RelocalizationPipeline], None] | None = None) -> RelocalizationPipeline:
    """Run the node until SIGINT or SIGTERM, then stop it in order (any number of further signals
    change nothing: `shutdown.SignalStop`); call from the main thread. Returns the pipeline (its
    diagnostics hold the final counts). `config`: Cyclone XML (e.g. `dds.loopback_config()`)."""
    stop = SignalStop().install()
    relocalizer = build_relocalizer(settings)
    with DdsNode(NODE_NAME, namespace=namespace, domain_id=domain_id, config=config) as node:
        publishers = {name: node.publisher(topic.name, topic.type_name, topic.qos)
                      for name, topic in OUTPUTS.items() if name != "tf" or settings.publish_tf}
        pipeline = RelocalizationPipeline(settings, relocalizer, RosbagsTypes(),
                                          lambda name, msg: publishers[name].publish(msg), logger)
        callbacks = {"image": pipeline.on_image, "camera_info": pipeline.on_camera_info,
                     "depth": pipeline.on_depth, "reset": pipeline.on_reset,
                     "tf": pipeline.on_tf, "tf_static": pipeline.on_tf_static,
                     "relocalize": pipeline.on_relocalize, "odometry": pipeline.on_odometry}
        for key, topic in input_topics(settings).items():
            node.subscription(topic.name, topic.type_name, topic.qos, callbacks[key])
        pipeline.start()
        try:
            if on_ready is not None:
                on_ready(pipeline)
            next_report = time.monotonic() + settings.diagnostics_period
            while not stop.requested:
                time.sleep(POLL_S)
                if time.monotonic() >= next_report:
                    pipeline.publish_diagnostics()
                    next_report += settings.diagnostics_period
            logger.info(f"{stop.signal_name}: stopping the node")
        finally:
            pipeline.stop()
            pipeline.publish_diagnostics()
    return pipeline


def main(model: str | None, params_file: str | None, overrides: list[str], namespace: str,
         domain_id: int | None) -> int:
    """The `posenet-ros node` command: run until Ctrl-C or SIGTERM, then print the counts."""
    settings = load_settings(params_file, model, overrides, namespace)

    def ready(pipeline: RelocalizationPipeline) -> None:
        topics = ", ".join(topic.name for topic in input_topics(settings).values())
        print(f"node: ready on {pipeline.relocalizer.device} (runtime {pipeline.relocalizer.runtime}); "
              f"listening to {topics}", file=sys.stderr,
              flush=True)

    pipeline = run_node(settings, namespace=namespace, domain_id=domain_id, on_ready=ready)
    counts = pipeline.diagnostics.counts
    summary = ", ".join(f"{key} {value}" for key, value in counts.items())
    print(f"node: {summary}", file=sys.stderr, flush=True)
    return 0
