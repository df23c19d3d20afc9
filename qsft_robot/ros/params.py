"""The policy node's parameters, their defaults and descriptions, without rclpy.

One table serves the node (declare_parameter with a description), the launch file (one declared launch
argument per parameter, generated from this table) and the tests. It imports nothing from ROS, so
`policy.launch.py --show-args` and the pure unit tests read it without a ROS context.
"""
from __future__ import annotations

from qsft_robot.config import ACTING_MODES

KINDS = "checkpoint | color_seek | <module>:<class>"
PROFILES = ("base", "arm", "servo_arm", "so100")  # configs/robots/<name>.yaml, each with config/<name>.yaml

# name: (default, description). Only `instruction` may change at run time (see RUNTIME_PARAMS).
PARAM_SPECS: dict[str, tuple[object, str]] = {
    "checkpoint": ("", "run or checkpoint folder from `qsft-robot train` (policy:=checkpoint)"),
    "policy": ("checkpoint", f"which policy acts: {KINDS}"),
    "policy_args": ("", "JSON object of keyword arguments for a scripted or plug-in policy"),
    "mode": ("argmax_q", f"acting mode of a checkpoint: {' | '.join(ACTING_MODES)} "
                         "(argmax_behavior for BC / filtered-BC runs)"),
    "device": ("auto", "auto (cuda when available) | cpu | cuda[:N]"),
    "robot_profile": ("base", f"configs/robots/<name>.yaml ({' | '.join(PROFILES)}) or a path to a profile"),
    "instruction": ("", "language instruction; may be changed at run time"),
    "max_instruction_chars": (256, "longer instructions are cut to this (one warning each)"),
    "image_topic": ("/camera/image_raw", "sensor_msgs/Image (or CompressedImage) topic"),
    "compressed": (False, "subscribe to sensor_msgs/CompressedImage"),
    "image_reliability": ("reliable", "camera QoS: reliable (image_transport, most drivers) | best_effort"),
    "image_depth": (5, "camera QoS history depth"),
    "max_image_pixels": (3840 * 2160, "frames with more pixels are rejected with an error"),
    "control_hz": (5.0, "at most this many policy actions per second; also the slew-limit tick"),
    "watchdog_hz": (50.0, "how often the watchdog checks frame age (stop latency <= max_image_age + 1/this)"),
    "max_image_age": (0.5, (
        "stop when the newest frame is older (s); a frame older than this is never acted on, and a command "
        "stands for at most max_image_age + 1/control_hz after its frame was taken")),
    "stamp_skew_tolerance": (0.1, "allowed camera/node clock offset when judging age from header.stamp (s)"),
    "fault_linger_s": (1.0, "after a fault, publish stop + fault status this long before exiting"),
    "enable_actuation": (False, "false: dry run, commands go to preview_topic"),
    "command_topic": ("/cmd_vel", "where commands go when enable_actuation is true"),
    "gripper_topic": ("", (
        "std_msgs/Float64MultiArray for the gripper dim of an ee_delta profile sent as twist_stamped (a forward "
        "command controller); in a dry run it goes to <preview_topic>/gripper ('' = the gripper dim is dropped)")),
    "preview_topic": ("/qsft/preview", "where commands go in a dry run"),
    "status_topic": ("/qsft/status", "std_msgs/String JSON status at <= 5 Hz"),
    "estop_topic": ("/qsft/estop", "std_msgs/Bool; true stops and latches until restart"),
    "instruction_topic": ("/qsft/instruction", "std_msgs/String; replaces the instruction"),
    "joint_state_topic": ("", (
        "sensor_msgs/JointState: proprio state for the policy, and for joint_position profiles the measured pose "
        "(required there: a stop holds it, the slew limit starts from it) ('' = none)")),
    "command_source_topic": ("/qsft/command_source", (
        "std_msgs/String JSON after each command: the header stamp of the frame and the instruction it came "
        "from, and its values (the sim bridge's lockstep; '' = off)")),
}
PARAMS = {k: v for k, (v, _) in PARAM_SPECS.items()}
RUNTIME_PARAMS = {"instruction"}


def late_bound(max_image_age: float, control_hz: float) -> float:
    """How long after its frame was taken a published command may stand (s).

    A command is published only while its frame is at most max_image_age old, and the next one is due a
    control period later; only when that one is overdue is the robot acting on old information. A bound
    of max_image_age alone stops the robot between two timely commands whenever inference takes more
    than max_image_age - 1/control_hz, and each of those stops resets the slew limit (stop-and-go).
    """
    return float(max_image_age) + 1.0 / float(control_hz)


def timing_warning(max_image_age: float, control_hz: float) -> str | None:
    """A start-up warning when the control period alone exceeds max_image_age (frames go stale between
    two actions: the robot would stop between commands), else None."""
    period = 1.0 / float(control_hz)
    if period > float(max_image_age):
        return (f"control period 1/control_hz = {period:.3f}s exceeds max_image_age = {max_image_age}s: "
                "frames go stale between actions and the watchdog will stop the robot between commands; "
                "raise control_hz or max_image_age")
    return None


def launch_value(name: str, text: str):
    """A launch argument's text as the parameter's type (ROS refuses an int for a double parameter)."""
    default = PARAMS[name]
    if isinstance(default, bool):
        low = text.strip().lower()
        if low not in ("true", "false"):
            raise ValueError(f"{name} must be true or false, not {text!r}")
        return low == "true"
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text
