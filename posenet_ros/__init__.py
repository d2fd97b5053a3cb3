"""posenet_ros: learned camera relocalization (PoseNet family) for ROS 2.

Camera poses are `world_from_cam` (camera-to-world) transforms; quaternions are (w, x, y, z) inside the
package. See docs/design.md in the project for the layers and conventions.
"""

__version__ = "0.1.0"
