"""Safe command values -> the plain fields of the ROS messages a profile's controller reads, and its stop.

Pure Python so that what goes to the robot, motion and stop alike, is unit-tested without rclpy; the
node only copies these fields into messages. Each message is (channel, kind, fields): channel "arm" goes
to the command topic, "gripper" to the gripper topic.

control_msgs (GripperCommand) has no ros-kilted wheel on the package index, so the gripper of an
end-effector profile is a std_msgs/Float64MultiArray for a forward command controller.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qsft_robot.ros.profiles import RobotProfile


@dataclass(frozen=True)
class Message:
    channel: str   # "arm" (command topic) | "gripper" (gripper topic)
    kind: str      # twist | twist_stamped | float64_multi_array | joint_trajectory
    fields: dict


class CommandBuilder:
    """Build a profile's messages. `control_hz` turns a per-step delta into a velocity and sets how far
    ahead a joint trajectory's single point lies (one control period: the next command replaces it)."""

    def __init__(self, profile: RobotProfile, control_hz: float):
        self.profile = profile
        self.hz = float(control_hz)

    def command(self, values: np.ndarray) -> list[Message]:
        """The messages for one safe command (command units, already clipped and slew-limited)."""
        c = [float(x) for x in values]
        space, kind = self.profile.action_space, self.profile.message
        if space == "base_velocity":
            return [Message("arm", kind, {"linear": [c[0], 0.0, 0.0], "angular": [0.0, 0.0, c[1]]})]
        if space == "ee_delta" and kind == "twist_stamped":
            return self._servo(c)
        if space == "joint_position" and kind == "joint_trajectory":
            return [self._trajectory(c)]
        return [Message("arm", "float64_multi_array", {"data": c})]

    def stop(self, hold: np.ndarray | None) -> list[Message]:
        """The stop: zero velocity, or for absolute joint targets the pose to hold (None: nothing is safe
        to send yet, so nothing is sent). A velocity stop leaves the gripper as it is."""
        if self.profile.holds_position:
            return [] if hold is None else self.command(hold)
        if self.profile.message == "float64_multi_array":
            return [Message("arm", "float64_multi_array", {"data": [0.0] * self.profile.dims})]
        return [m for m in self.command(np.zeros(self.profile.dims)) if m.channel == "arm"]

    def _servo(self, c: list[float]) -> list[Message]:
        """MoveIt Servo's streaming input: the per-step delta as a velocity over one control period."""
        linear = [x * self.hz for x in c[:3]]
        angular = [x * self.hz for x in c[3:6]] if self.profile.rotation else [0.0, 0.0, 0.0]
        out = [Message("arm", "twist_stamped", {"frame_id": self.profile.frame_id, "linear": linear,
                                                "angular": angular})]
        if self.profile.gripper:
            out.append(Message("gripper", "float64_multi_array", {"data": [c[-1]]}))
        return out

    def _trajectory(self, c: list[float]) -> Message:
        sec, nanosec = divmod(round(1e9 / self.hz), 1_000_000_000)
        return Message("arm", "joint_trajectory", {"joint_names": list(self.profile.joint_names), "positions": c,
                                                   "time_from_start": (int(sec), int(nanosec))})
