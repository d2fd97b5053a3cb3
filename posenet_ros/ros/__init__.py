"""The only code that knows ROS messages or a middleware: conversions, the rclpy node, the DDS runtime."""
