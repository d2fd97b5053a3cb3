"""Launch relocalize_node (posenet_ros/node/rclpy_node.py) with the parameters of config/relocalize.yaml.

    ros2 launch posenet_ros relocalize.launch.py model:=/path/to/run image_topic:=/my/camera/image_raw
    ros2 launch posenet_ros relocalize.launch.py --show-args

Arguments:
    model        REQUIRED: training run directory or its model.safetensors (the default '' makes the
                 node exit with "parameter 'model' is required")
    params_file  parameters file (default: share/posenet_ros/config/relocalize.yaml)
    image_topic  camera image topic (default /camera/image_raw)
    camera_info_topic
                 its sensor_msgs/CameraInfo topic (default /camera/camera_info); give it with
                 image_topic: the node's camera_info topic (parameter camera_info_topic: auto) is the
                 one beside the default image topic, which remapping the image topic does not move
    depth_topic  depth image topic (default /camera/depth/image_raw; used with use_depth:=true)
    use_depth    true: pair a depth image with every frame (default false)
    device       auto, cpu, cuda or cuda:N (default auto)
    runtime      torch, onnx or torchscript (default torch; onnx and torchscript run the file
                 `posenet-ros export` wrote beside the checkpoint; onnx is the fastest on CPU)
    namespace    namespace of the node and of its relative output topics (default: none)

image_topic, camera_info_topic and depth_topic are remappings of the node's default topic names, the
topics of the defaults of its image_topic, camera_info_topic (auto) and depth_topic parameters
(/camera/image_raw, /camera/camera_info, /camera/depth/image_raw): they apply as long as params_file
keeps those defaults. A compressed image stream needs the parameter instead
(image_topic: /my/camera/image_raw/compressed in params_file), because the node chooses
CompressedImage by the parameter's name, before remapping. model, use_depth, device and runtime are
passed as parameters and override the values of params_file, so set them here, not in the file.

ROS 2 applies a parameters file section to the node of that full name: the `relocalize_node:` section
of the default file configures the node without a namespace; with namespace:=robot1 a custom
params_file must name it `/robot1/relocalize_node:` (or `/**:`), or its values are ignored.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument("model", default_value="",
                              description="REQUIRED: training run directory or its model.safetensors"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution(
                                  [FindPackageShare("posenet_ros"), "config", "relocalize.yaml"]),
                              description="ROS 2 parameters file with a relocalize_node section"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="camera image topic (remaps /camera/image_raw)"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info",
                              description="camera info topic of the images (remaps /camera/camera_info)"),
        DeclareLaunchArgument("depth_topic", default_value="/camera/depth/image_raw",
                              description="depth image topic (remaps /camera/depth/image_raw)"),
        DeclareLaunchArgument("use_depth", default_value="false",
                              description="true: pair a depth image with every frame"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="inference device: auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("runtime", default_value="torch",
                              description="network runtime: torch, onnx or torchscript (posenet-ros export)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and its relative topics"),
    ]
    node = Node(
        package="posenet_ros",
        executable="relocalize_node",
        name="relocalize_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {
                # value_type=str: a path such as 2024 or a device such as "on" stays a string
                "model": ParameterValue(LaunchConfiguration("model"), value_type=str),
                "use_depth": ParameterValue(LaunchConfiguration("use_depth"), value_type=bool),
                "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
                "runtime": ParameterValue(LaunchConfiguration("runtime"), value_type=str),
            },
        ],
        remappings=[
            ("/camera/image_raw", LaunchConfiguration("image_topic")),
            ("/camera/camera_info", LaunchConfiguration("camera_info_topic")),
            ("/camera/depth/image_raw", LaunchConfiguration("depth_topic")),
        ],
        output="screen",
    )
    return LaunchDescription([*arguments, node])
