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
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGS = {
    "task": ("base_goto", "MuJoCo task (base_goto, arm_reach, ...: qsft_robot.sim.registry)"),
    "profile": ("base", "robot profile matching the task: base | arm"),
    "seed": ("1000", "first episode seed (qsft-robot eval's default is 1000)"),
    "episodes": ("1", "episodes to run, seeds seed .. seed+episodes-1"),
    "policy": ("color_seek", "checkpoint | color_seek | <module>:<class>"),
    "checkpoint": ("", "run or checkpoint folder (policy:=checkpoint)"),
    "mode": ("argmax_q", "acting mode: argmax_q | paper | sft (SFT / filtered-BC checkpoints)"),
    "device": ("auto", "auto | cpu | cuda[:N]"),
    "image_size": ("64", "camera image size (the training data's)"),
}
COMMAND_TOPIC = {"base": "/cmd_vel", "arm": "/arm/ee_delta"}


def _nodes(context):
    a = {k: LaunchConfiguration(k).perform(context) for k in ARGS}
    share = get_package_share_directory("qsft_robot")
    sim_profile = os.path.join(share, "config", "sim", f"{a['profile']}.yaml")
    if not os.path.isfile(sim_profile):
        raise RuntimeError(f"profile {a['profile']!r}: no {sim_profile} (arm | base)")
    topic = COMMAND_TOPIC[a["profile"]]
    bridge = Node(package="qsft_robot", executable="sim_bridge", name="qsft_sim_bridge", output="screen",
                  parameters=[{"task": a["task"], "seed": int(a["seed"]), "episodes": int(a["episodes"]),
                               "image_size": int(a["image_size"]), "robot_profile": sim_profile,
                               "command_topic": topic, "lockstep": True, "exit_when_done": True}])
    policy = Node(package="qsft_robot", executable="policy_node", name="qsft_policy", output="screen",
                  parameters=[os.path.join(share, "config", f"{a['profile']}.yaml"), {
                      "policy": a["policy"], "checkpoint": a["checkpoint"], "mode": a["mode"], "device": a["device"],
                      "robot_profile": sim_profile, "command_topic": topic, "enable_actuation": True,
                      "control_hz": 100.0, "max_image_age": 2.0}])
    return [bridge, policy,
            RegisterEventHandler(OnProcessExit(target_action=bridge, on_exit=_on_exit)),
            RegisterEventHandler(OnProcessExit(target_action=policy, on_exit=_on_exit))]


def _on_exit(event, context):
    """End launch with either process; non-zero when it failed."""
    if event.returncode != 0:
        raise RuntimeError(f"{event.action.name} exited with status {event.returncode} (see its log above)")
    return [EmitEvent(event=Shutdown(reason=f"{event.action.name} finished"))]


def generate_launch_description():
    args = [DeclareLaunchArgument(k, default_value=v, description=d) for k, (v, d) in ARGS.items()]
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
