"""A sensor_msgs/JointState's positions, in the order of a profile's joints.

A joint_state_broadcaster publishes every joint of the robot, in its own order; a profile drives a
subset in the controller's order. Matching by name (never by position in the message) is what makes
the held pose of a stop the arm's own pose.
"""
from __future__ import annotations

import numpy as np


def positions_by_name(joint_names: list[str], names: list[str], positions: list[float]) -> tuple[np.ndarray | None,
                                                                                                  str | None]:
    """(positions of `joint_names` in that order, None) or (None, why the message cannot be used)."""
    if len(names) != len(positions):
        return None, f"JointState has {len(names)} names but {len(positions)} positions"
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in joint_names if n not in index]
    if missing:
        return None, f"JointState lacks joints {missing} of the profile (has {list(names)})"
    out = np.array([positions[index[n]] for n in joint_names], dtype=np.float64)
    if not np.all(np.isfinite(out)):
        return None, "JointState has NaN/inf positions for the profile's joints"
    return out, None
