"""
Launch the Q-SFT policy node with a robot profile's parameters.

    ros2 launch qsft_robot policy.launch.py profile:=base checkpoint:=/path/to/run
    ros2 launch qsft_robot policy.launch.py profile:=arm policy:=color_seek     # scripted bring-up
    ros2 launch qsft_robot policy.launch.py --show-args                         # every argument

config/<profile>.yaml holds the defaults; an argument overrides its parameter only when given (its
default here is empty), so the profile's instruction, topics and limits stay as written. When the node
exits with an error (no checkpoint, a policy fault) launch shuts down and exits non-zero.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# launch argument -> (node parameter, description); "" (the default) = keep the profile YAML's value
OVERRIDES = {
    "policy": ("policy", "checkpoint | color_seek (scripted bring-up policy) | <module>:<class>"),
    "checkpoint": ("checkpoint", "run or checkpoint folder from `qsft-robot train`"),
    "mode": ("mode", "acting mode: argmax_q (Q-SFT) | paper | sft (SFT / filtered-BC checkpoints)"),
    "instruction": ("instruction", "language instruction (may also be changed at run time)"),
    "device": ("device", "auto | cpu | cuda[:N]"),
    "image_topic": ("image_topic", "camera topic (sensor_msgs/Image)"),
    "image_reliability": ("image_reliability", "camera QoS: reliable | best_effort"),
    "control_hz": ("control_hz", "at most this many actions per second"),
    "max_image_age": ("max_image_age", "stop when the camera frame is older than this (s)"),
    "enable_actuation": ("enable_actuation", "true: publish on the command topic; false: dry run (preview)"),
    "policy_args": ("policy_args", "JSON keyword arguments for a scripted or plug-in policy"),
}
TYPED = {"control_hz": float, "max_image_age": float,
         "enable_actuation": lambda v: {"true": True, "false": False}[v.lower()]}


def _node(context):
    profile = LaunchConfiguration("profile").perform(context)
    params_file = os.path.join(get_package_share_directory("qsft_robot"), "config", f"{profile}.yaml")
    if not os.path.isfile(params_file):
        raise RuntimeError(f"profile {profile!r}: no {params_file} (arm | base)")
    overrides = {"robot_profile": profile}
    for arg, (param, _) in OVERRIDES.items():
        value = LaunchConfiguration(arg).perform(context)
        if value != "":
            overrides[param] = TYPED.get(arg, str)(value)
    node = Node(package="qsft_robot", executable="policy_node", name="qsft_policy", output="screen",
                parameters=[params_file, overrides])
    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_on_node_exit))]


def _on_node_exit(event, context):
    """End launch with the node: it is the whole system; non-zero when the node failed."""
    if event.returncode != 0:
        raise RuntimeError(f"policy node exited with status {event.returncode} (see its log above)")
    return [EmitEvent(event=Shutdown(reason="policy node exited"))]


def generate_launch_description():
    args = [DeclareLaunchArgument("profile", default_value="base",
                                  description="robot profile: arm | base (config/<profile>.yaml)")]
    args += [DeclareLaunchArgument(arg, default_value="", description=f"{desc} ('' = as in the profile YAML)")
             for arg, (_, desc) in OVERRIDES.items()]
    return LaunchDescription(args + [OpaqueFunction(function=_node)])
