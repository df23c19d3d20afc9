"""
Launch the Q-SFT policy node with a robot profile's parameters.

    ros2 launch qsft_robot policy.launch.py profile:=base checkpoint:=/path/to/run
    ros2 launch qsft_robot policy.launch.py profile:=arm policy:=color_seek     # scripted bring-up
    ros2 launch qsft_robot policy.launch.py profile:=so100 checkpoint:=/path/to/run  # joint positions
    ros2 launch qsft_robot policy.launch.py --show-args                         # every argument

Every node parameter is a launch argument, generated from the node's own table
(qsft_robot.ros.params.PARAM_SPECS) with the same description. config/<profile>.yaml holds the
defaults; an argument overrides its parameter only when given (its default here is empty), so the
profile's instruction, topics and limits stay as written. When the node exits with an error (no
checkpoint, a policy fault) launch shuts down and exits non-zero.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from qsft_robot_ros.launch_common import end_launch_with

from qsft_robot.ros.params import PARAM_SPECS, PROFILES, launch_value


def _node(context):
    profile = LaunchConfiguration("profile").perform(context)
    params_file = os.path.join(get_package_share_directory("qsft_robot"), "config", f"{profile}.yaml")
    if not os.path.isfile(params_file):
        raise RuntimeError(f"profile {profile!r}: no {params_file} ({' | '.join(PROFILES)})")
    overrides = {"robot_profile": profile}
    for name in PARAM_SPECS:
        value = LaunchConfiguration(name).perform(context)
        if value != "":
            overrides[name] = launch_value(name, value)
    node = Node(package="qsft_robot", executable="policy_node", name="qsft_policy", output="screen",
                parameters=[params_file, overrides])
    return [node, *end_launch_with(node)]


def generate_launch_description():
    args = [DeclareLaunchArgument("profile", default_value="base",
                                  description=f"robot profile: {' | '.join(PROFILES)} (config/<profile>.yaml)")]
    args += [DeclareLaunchArgument(name, default_value="", description=(
        f"{desc} ('' = as in the profile YAML, else the node's default {default!r})"))
        for name, (default, desc) in PARAM_SPECS.items()]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])
