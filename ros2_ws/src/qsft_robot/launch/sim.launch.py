"""
Closed loop in simulation, in one command: the MuJoCo sim bridge and the policy node over ROS 2.

    ros2 launch qsft_robot sim.launch.py task:=base_goto episodes:=20 seed:=1000
    ros2 launch qsft_robot sim.launch.py task:=arm_reach profile:=arm policy:=checkpoint checkpoint:=runs/x

The bridge steps in lockstep with the node's commands, so the success rate it reports at the end
(`success k/n`) is comparable with `qsft-robot eval` on the same seeds. Launch ends when the bridge
has run its episodes, and exits non-zero if either process fails.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from qsft_robot.config import ACTING_MODES
from qsft_robot_ros.launch_common import end_launch_with

ARGS = {
    "task": ("base_goto", "MuJoCo task (base_goto, arm_reach, ...: qsft_robot.sim.registry; metaworld/<env-name>)"),
    "profile": ("base", "robot profile matching the task: base | arm"),
    "seed": ("1000", "first episode seed (qsft-robot eval's default is 1000)"),
    "episodes": ("1", "episodes to run, seeds seed .. seed+episodes-1"),
    "policy": ("color_seek", "checkpoint | color_seek | <module>:<class>"),
    "checkpoint": ("", "run or checkpoint folder (policy:=checkpoint)"),
    "mode": ("argmax_q", f"acting mode: {' | '.join(ACTING_MODES)} (argmax_behavior for BC / filtered-BC checkpoints)"),
    "device": ("auto", "auto | cpu | cuda[:N]"),
    "image_size": ("64", "camera image size (the training data's)"),
    "max_steps": ("0", "episode limit (0: the task's own)"),
}
COMMAND_TOPIC = {"base": "/cmd_vel", "arm": "/arm/ee_delta"}
STATE_TOPIC = "/sim/joint_states"  # the sim's proprio state, stamped like its frame, for policies that use it


def _nodes(context):
    a = {k: LaunchConfiguration(k).perform(context) for k in ARGS}
    share = get_package_share_directory("qsft_robot")
    sim_profile = os.path.join(share, "config", "sim", f"{a['profile']}.yaml")
    if not os.path.isfile(sim_profile):
        raise RuntimeError(f"profile {a['profile']!r}: no {sim_profile} (arm | base)")
    topic = COMMAND_TOPIC[a["profile"]]
    bridge = Node(package="qsft_robot", executable="sim_bridge", name="qsft_sim_bridge", output="screen",
                  parameters=[{"task": a["task"], "seed": int(a["seed"]), "episodes": int(a["episodes"]),
                               "image_size": int(a["image_size"]), "max_steps": int(a["max_steps"]),
                               "robot_profile": sim_profile,
                               "command_topic": topic, "state_topic": STATE_TOPIC, "lockstep": True,
                               "exit_when_done": True}])
    policy = Node(package="qsft_robot", executable="policy_node", name="qsft_policy", output="screen",
                  parameters=[os.path.join(share, "config", f"{a['profile']}.yaml"), {
                      "policy": a["policy"], "checkpoint": a["checkpoint"], "mode": a["mode"], "device": a["device"],
                      "robot_profile": sim_profile, "command_topic": topic, "joint_state_topic": STATE_TOPIC,
                      "enable_actuation": True, "control_hz": 100.0, "max_image_age": 2.0}])
    return [bridge, policy, *end_launch_with(bridge, policy)]


def generate_launch_description():
    args = [DeclareLaunchArgument(k, default_value=v, description=d) for k, (v, d) in ARGS.items()]
    return LaunchDescription([*args, OpaqueFunction(function=_nodes)])
