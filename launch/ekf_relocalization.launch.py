"""Launch relocalize_node and robot_localization's ekf_node fusing its poses with wheel odometry.

    ros2 launch posenet_ros ekf_relocalization.launch.py model:=/path/to/run
    ros2 launch posenet_ros ekf_relocalization.launch.py model:=/path/to/run image_topic:=/cam/image_raw \
        ekf_params_file:=/path/to/my_ekf.yaml

Arguments:
    ekf_params_file  ekf_node's parameters (default: share/posenet_ros/config/ekf_relocalization.yaml,
                     a map-frame EKF of relocalized_pose and odom)
    every other      passed to relocalize.launch.py as it is (model, params_file, namespace, image_topic,
                     ...; see its --show-args), except publish_tf, which is always false: the EKF
                     publishes map -> odom, and two publishers of it would fight. publish_tf:=true is
                     refused.

ekf_node's set_pose topic is remapped to the node's initialpose: with initial_pose_at_start:=true and
initial_pose_lost_frames:=N the node resets the EKF to its first confident pose and to the first
confident pose after N unconfident frames (a robot back in the map after odometry alone carried it).

relocalize.launch.py sees only the arguments given here (not ekf_params_file), so it warns only about
its own unknown ones. ekf_node runs as ekf_filter_node in the same namespace as relocalize_node (the
default parameters file's section /**/ekf_filter_node and its relative topic names serve any
namespace). Needs
robot_localization (apt: ros-<distro>-robot-localization). docs/robot_localization.md explains the
recipe.
"""

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from posenet_ros.node.parameters import parameter_from_text


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("ekf_params_file",
                              default_value=PathJoinSubstitution(
                                  [FindPackageShare("posenet_ros"), "config", "ekf_relocalization.yaml"]),
                              description="robot_localization ekf_node parameters file (a "
                                          "section for the node ekf_filter_node)"),
        OpaqueFunction(function=launch_nodes),
    ])


def launch_nodes(context: LaunchContext) -> list:
    """relocalize.launch.py with the user's arguments and publish_tf false, and ekf_node."""
    arguments = dict(context.launch_configurations)
    ekf_params_file = arguments.pop("ekf_params_file")
    if parameter_from_text("publish_tf", arguments.get("publish_tf", "false")):
        raise ValueError("publish_tf must be false with ekf_relocalization.launch.py: robot_localization "
                         "publishes map -> odom")
    arguments["publish_tf"] = "false"
    relocalize = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("posenet_ros"), "launch", "relocalize.launch.py"])),
        launch_arguments=arguments.items())
    ekf = Node(
        package="robot_localization",
        executable="ekf_node",
        name="ekf_filter_node",
        namespace=arguments.get("namespace", ""),
        parameters=[ekf_params_file],
        # The node's initialpose (a confident pose once, at start with initial_pose_at_start:=true and
        # after being lost with initial_pose_lost_frames:=N) resets the EKF to that pose.
        remappings=[("set_pose", "initialpose")],
        output="screen",
    )
    # forwarding=False: the include starts from no launch configurations but its own arguments.
    return [GroupAction([relocalize], scoped=True, forwarding=False), ekf]
