"""ros2 launch qsft_robot policy.launch.py profile:=base checkpoint:=/path/to/run instruction:='...'"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description():
    config_dir = os.path.join(get_package_share_directory("qsft_robot"), "config")
    profile = LaunchConfiguration("profile")
    args = [
        DeclareLaunchArgument("profile", default_value="base", description="arm | base (config/<profile>.yaml)"),
        DeclareLaunchArgument("checkpoint", default_value="", description="run or checkpoint folder"),
        DeclareLaunchArgument("instruction", default_value="drive to the red cone"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw"),
        DeclareLaunchArgument("device", default_value="auto"),
        DeclareLaunchArgument("enable_actuation", default_value="false"),
    ]
    params_file = PythonExpression(["'", config_dir, "/' + '", profile, "' + '.yaml'"])
    node = Node(
        package="qsft_robot", executable="policy_node", name="qsft_policy", output="screen",
        parameters=[params_file, {
            "checkpoint": LaunchConfiguration("checkpoint"),
            "instruction": LaunchConfiguration("instruction"),
            "image_topic": LaunchConfiguration("image_topic"),
            "device": LaunchConfiguration("device"),
            "robot_profile": profile,
            "enable_actuation": PythonExpression(["'", LaunchConfiguration("enable_actuation"), "' == 'true'"]),
        }],
    )
    return LaunchDescription(args + [node])
