"""Launch relocalize_node (posenet_ros/node/rclpy_node.py) with the parameters of config/relocalize.yaml.

    ros2 launch posenet_ros relocalize.launch.py model:=/path/to/run image_topic:=/my/camera/image_raw
    ros2 launch posenet_ros relocalize.launch.py model:=/path/to/run publish_tf:=true mc_samples:=16
    ros2 launch posenet_ros relocalize.launch.py --show-args

Arguments:
    params_file  parameters file (default: share/posenet_ros/config/relocalize.yaml)
    namespace    namespace of the node and of its relative output topics (default: none)
    NAME         every node parameter (posenet_ros/node/parameters.py NODE_PARAMETERS, the table
                 config/relocalize.yaml lists): model (REQUIRED, here or in params_file), device,
                 runtime, image_topic, use_depth, publish_tf, mc_samples, ...

The launch arguments are generated from the parameter table, so every parameter of the node can be
set here. An argument the user gives overrides params_file; one not given (its default is the empty
text) leaves the parameter to params_file, so a params_file that sets device: cpu keeps it. The
values are checked before the node starts (publish_tf:=maybe is refused with the parameter's
message); a string parameter takes the text as it is (model:=2024 is a path). An empty value cannot
override a params_file value: to set camera_frame or exported_model back to "", edit params_file.
image_topic, camera_info_topic and depth_topic are the parameters (not remappings), so
image_topic:=/cam/image_raw/compressed subscribes to a CompressedImage (the node chooses the type by
the parameter) and, with camera_info_topic auto, to /cam/camera_info beside it. An argument that is
no parameter and no argument of this file (a typo such as publish_ft:=true; when another launch file
includes this one, that file's own arguments too) is named in a warning; launch itself says nothing
about undeclared arguments.

ROS 2 applies a parameters file section to the node of that full name: the `relocalize_node:` section
of the default file configures the node without a namespace; with namespace:=robot1 a custom
params_file must name it `/robot1/relocalize_node:` (or `/**:`), or its values are ignored.
"""

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.logging import get_logger
from launch.substitutions import PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from posenet_ros.node.parameters import NODE_NAME, NODE_PARAMETERS, parameter_from_text

NOT_GIVEN = ""  # the default of every parameter argument: leave the parameter to params_file


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution(
                                  [FindPackageShare("posenet_ros"), "config", "relocalize.yaml"]),
                              description="ROS 2 parameters file with a relocalize_node section"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and its relative topics"),
    ]
    arguments += [DeclareLaunchArgument(spec.name, default_value=NOT_GIVEN,
                                        description=f"{spec.description} (not given: the params_file "
                                                    f"value; the node's default is {spec.default!r})")
                  for spec in NODE_PARAMETERS]
    return LaunchDescription([*arguments, OpaqueFunction(function=launch_node)])


def launch_node(context: LaunchContext) -> list[Node]:
    """The node, with params_file and then the parameters given as launch arguments (typed and
    checked: a ValueError names a parameter and its bad value, and launch stops with it)."""
    configurations = context.launch_configurations
    given = {spec.name: parameter_from_text(spec.name, configurations[spec.name])
             for spec in NODE_PARAMETERS if configurations[spec.name] != NOT_GIVEN}
    # launch_ros reads a plain string value as YAML (model "2024" would become an integer): strings
    # go as ParameterValue(value_type=str), bool, int and float as they are.
    given = {name: ParameterValue(value, value_type=str) if isinstance(value, str) else value
             for name, value in given.items()}
    known = {"params_file", "namespace", *(spec.name for spec in NODE_PARAMETERS)}
    unknown = sorted(set(configurations) - known)
    if unknown:
        get_logger("relocalize.launch.py").warning(
            f"ignoring {', '.join(unknown)}: not an argument of relocalize.launch.py (see --show-args)")
    return [Node(
        package="posenet_ros",
        executable="relocalize_node",
        name=NODE_NAME,
        namespace=configurations["namespace"],
        parameters=[configurations["params_file"], *([given] if given else [])],
        output="screen",
    )]
