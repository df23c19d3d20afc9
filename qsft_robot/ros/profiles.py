"""Robot profiles (configs/robots/): what a policy's action means on a robot, which message carries it, limits.

The action space is part of the profile because the same numbers mean different things to different
controllers: an end-effector delta copied into a joint trajectory would be read as absolute joint angles,
and a zero "stop" would then swing every joint to 0 rad. Each action space therefore allows only the
messages whose controller reads the values with that meaning:

| action_space    | message               | controller that reads it                                      |
| --------------- | --------------------- | ------------------------------------------------------------- |
| base_velocity   | twist                 | a base's cmd_vel (diff_drive_controller, most mobile bases)   |
| ee_delta        | twist_stamped         | MoveIt Servo (delta x control_hz = end-effector velocity)     |
| ee_delta        | float64_multi_array   | the MuJoCo sim bridge, which applies the deltas itself        |
| joint_position  | joint_trajectory      | ros2_control joint_trajectory_controller                      |
| joint_position  | float64_multi_array   | ros2_control forward_command_controller (position interface)  |
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

MESSAGES = {
    "base_velocity": ("twist",),
    "ee_delta": ("twist_stamped", "float64_multi_array"),
    "joint_position": ("joint_trajectory", "float64_multi_array"),
}
DELTAS_AS_JOINTS = (
    "end-effector deltas in a trajectory_msgs/JointTrajectory are read by a joint trajectory controller as "
    "absolute joint angles (and a zero stop as 'every joint to 0 rad'); fix: action_space: ee_delta with "
    "message: twist_stamped for MoveIt Servo, or action_space: joint_position with joint_names for a "
    "checkpoint trained on absolute joint targets")


class ProfileError(ValueError):
    """A robot profile that would make the robot misread its commands; the message says how to fix it."""


@dataclass
class RobotProfile:
    name: str
    action_space: str              # base_velocity | ee_delta | joint_position
    message: str                   # see MESSAGES
    scale: list[float]             # policy action (its own units) * scale = command units
    lower: list[float]             # command limits after scaling (joint_position: joint limits, rad)
    upper: list[float]
    max_rate: list[float] | None = None   # per second, after scaling
    joint_names: list[str] = field(default_factory=list)  # joint_position: the controller's joints, in order
    action_names: list[str] | None = None  # the training data's names of the action dims, when it has them
    frame_id: str = ""             # ee_delta with twist_stamped: the frame the twist is expressed in
    rotation: bool = False         # ee_delta: dims 3..5 are roll, pitch, yaw deltas
    gripper: bool = True           # ee_delta: the last dim is the gripper command

    @classmethod
    def load(cls, path: str | Path) -> "RobotProfile":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"robot profile not found: {path}")
        data = yaml.safe_load(path.read_text())
        legacy = {"kind", "arm_message"} & set(data)
        if data.get("arm_message") == "joint_trajectory":
            raise ProfileError(f"{path}: {DELTAS_AS_JOINTS}")
        if legacy:
            raise ProfileError(f"{path}: {sorted(legacy)} replaced by action_space (base_velocity | ee_delta | "
                               "joint_position) and message (configs/robots/*.yaml show each)")
        try:
            prof = cls(**data)
        except TypeError as e:
            raise ProfileError(f"{path}: {e}") from None
        prof.validate(str(path))
        return prof

    def validate(self, where: str) -> None:
        """Refuse a profile whose commands a controller would misread, with the reason and the fix."""
        if self.action_space not in MESSAGES:
            raise ProfileError(f"{where}: action_space must be one of {' | '.join(MESSAGES)}, "
                               f"not {self.action_space!r}")
        if self.action_space == "ee_delta" and self.message == "joint_trajectory":
            raise ProfileError(f"{where}: {DELTAS_AS_JOINTS}")
        if self.message not in MESSAGES[self.action_space]:
            raise ProfileError(f"{where}: {self.action_space} is sent as {' | '.join(MESSAGES[self.action_space])}, "
                               f"not {self.message!r}")
        n = self.dims
        for name in ("scale", "lower", "upper") + (("max_rate",) if self.max_rate is not None else ()):
            if len(getattr(self, name)) != n:
                raise ProfileError(f"{where}: {name} needs {n} entries ({self.layout()})")
        if self.action_names is not None and len(self.action_names) != n:
            raise ProfileError(f"{where}: action_names needs {n} entries ({self.layout()})")
        if self.message == "twist_stamped" and not self.frame_id:
            raise ProfileError(f"{where}: twist_stamped needs frame_id (the frame MoveIt Servo reads the twist in)")

    # ---- the action's layout -------------------------------------------------------------------
    @property
    def dims(self) -> int:
        """How many action dims the policy must emit for this profile."""
        if self.action_space == "base_velocity":
            return 2
        if self.action_space == "ee_delta":
            return 3 + 3 * self.rotation + self.gripper
        if not self.joint_names:
            raise ProfileError(f"profile {self.name}: joint_position needs joint_names (one per action dim)")
        return len(self.joint_names)

    def layout(self) -> str:
        """The action dims in words, for error messages."""
        if self.action_space == "base_velocity":
            return "linear, angular"
        if self.action_space == "ee_delta":
            rotation = ["droll", "dpitch", "dyaw"] if self.rotation else []
            return ", ".join(["dx", "dy", "dz"] + rotation + ["gripper"] * self.gripper)
        return ", ".join(self.joint_names)

    def check_policy(self, dim: int | None, names: list[str] | None) -> None:
        """Refuse, before anything moves, a policy whose actions do not fit this profile (size, then names)."""
        if dim is not None and dim != self.dims:
            raise ProfileError(f"the policy emits {dim} action dims; profile {self.name} ({self.action_space}) maps "
                               f"{self.dims}: {self.layout()}")
        if names is not None and self.action_names is not None and list(names) != list(self.action_names):
            raise ProfileError(f"the checkpoint's action names {list(names)} differ from profile {self.name}'s "
                               f"action_names {list(self.action_names)}: the dims would drive the wrong joints; "
                               "fix the profile's joint_names/action_names order, or use a matching checkpoint")

    # ---- values --------------------------------------------------------------------------------
    @property
    def holds_position(self) -> bool:
        """True when a stop must hold a measured pose (absolute targets); False when zero is a stop."""
        return self.action_space == "joint_position"

    def to_command(self, action: np.ndarray) -> np.ndarray:
        return np.asarray(action, dtype=np.float64) * np.asarray(self.scale)

    def to_action(self, command: np.ndarray) -> np.ndarray:
        """Command units back to the policy's (a measured joint pose as the policy's state)."""
        return np.asarray(command, dtype=np.float64) / np.asarray(self.scale)
