"""Robot profiles: how policy action dims map to ROS command fields, with limits (configs/robots/)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml


@dataclass
class RobotProfile:
    name: str
    kind: str                      # "base" (geometry_msgs/Twist) | "arm" (Float64MultiArray | JointTrajectory)
    scale: list[float]             # policy action (normalised) * scale = command units
    lower: list[float]             # command limits after scaling
    upper: list[float]
    max_rate: list[float] | None = None   # per second, after scaling
    arm_message: str = "float64_multi_array"  # or "joint_trajectory"
    joint_names: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> "RobotProfile":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"robot profile not found: {path}")
        data = yaml.safe_load(path.read_text())
        prof = cls(**data)
        n = len(prof.scale)
        if not (len(prof.lower) == len(prof.upper) == n):
            raise ValueError(f"{path}: scale, lower and upper need one entry per action dim")
        if prof.kind == "base" and n != 2:
            raise ValueError(f"{path}: a base profile maps exactly 2 dims (linear, angular)")
        return prof

    def to_command(self, action: np.ndarray) -> np.ndarray:
        return np.asarray(action, dtype=np.float64) * np.asarray(self.scale)

    def stop_command(self) -> np.ndarray:
        """Zero velocity for a base; for an arm, zero delta = hold the current pose."""
        return np.zeros(len(self.scale))

    def command_fields(self, command: np.ndarray) -> dict:
        """Plain fields the node copies into the ROS message."""
        c = [float(x) for x in command]
        if self.kind == "base":
            return {"type": "twist", "linear_x": c[0], "angular_z": c[1]}
        if self.arm_message == "joint_trajectory":
            return {"type": "joint_trajectory", "joint_names": self.joint_names or [f"a{i}" for i in range(len(c))],
                    "positions": c}
        return {"type": "float64_multi_array", "data": c}
