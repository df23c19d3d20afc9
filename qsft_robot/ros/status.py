"""The policy node's status: what it reports on /qsft/status, and in words why the robot is not moving.

Kept apart from the node so that the report is unit-tested without rclpy, and so that an operator who
sees a still robot reads the reason in the status rather than in the code.
"""
from __future__ import annotations

from qsft_robot.ros.safety import State

REASONS = {
    State.WAITING: "no camera frame yet",
    State.STALE: "the newest camera frame is older than max_image_age: stopped",
    State.LATE: "the command for the newest frames is overdue (inference slower than the late bound): stopped",
    State.ESTOP: "e-stop received: stopped and latched until restart",
    State.NO_JOINT_STATE: ("no usable sensor_msgs/JointState yet: nothing is sent to the arm until one gives "
                           "the pose a stop holds and the slew limit starts from"),
    State.STALE_JOINT_STATE: "the newest JointState is older than max_image_age: holding the last known pose",
}


def state_reason(state: State, fault: str | None, joint_state_error: str | None) -> str | None:
    """Why the robot is not moving, in words (None while running)."""
    if state == State.FAULT:
        return f"fault: {fault}"
    reason = REASONS.get(state)
    if state == State.NO_JOINT_STATE and joint_state_error:
        reason = f"{reason} (last JointState unusable: {joint_state_error})"
    return reason


def command_rate(tick_times: list[float]) -> float:
    """Actions per second over the recent inference start times."""
    if len(tick_times) > 1 and tick_times[-1] > tick_times[0]:
        return (len(tick_times) - 1) / (tick_times[-1] - tick_times[0])
    return 0.0
