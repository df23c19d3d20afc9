"""Safety filter and watchdog state machine of the policy node: pure logic, unit-tested without ROS."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class SafetyFilter:
    """Clip to the profile's limits, then limit the change per second (slew rate).

    The slew limit starts from rest: zero for velocities and deltas, where zero is a stop; for absolute
    joint targets (`zero_is_rest` false) the measured pose, because a ramp from zero would be a ramp
    toward 0 rad. It returns there on every `reset` (a stop), so the first command after start-up or
    after a stop is slew-limited like any other. `max_dt` caps the time step the rate limit may use:
    after a long gap (slow inference, a stop long ago) the next command may still only move one control
    tick's worth, never a jump justified by the gap. A measured pose outside the limits is brought back
    at max_rate, never jumped from.
    """

    def __init__(self, lower, upper, max_rate=None, max_dt: float = 0.2, zero_is_rest: bool = True):
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        if np.any(self.lower > self.upper):
            raise ValueError("safety limits: lower > upper")
        if max_dt <= 0:
            raise ValueError("safety filter: max_dt must be > 0")
        self.max_rate = None if max_rate is None else np.asarray(max_rate, dtype=np.float64)
        self.max_dt = float(max_dt)
        self.zero_is_rest = zero_is_rest
        self.last: np.ndarray | None = np.zeros_like(self.lower) if zero_is_rest else None
        self.last_t: float | None = None

    def __call__(self, action, now: float, rest: np.ndarray | None = None) -> np.ndarray:
        """Return the safe command for `action`; `rest` is where a position ramp starts after a reset (the
        measured pose), required then, since there is no safe default."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.lower.shape:
            raise ValueError(f"action has shape {a.shape}, profile expects {self.lower.shape}")
        start = self.last if self.last is not None else (None if rest is None else np.asarray(rest, np.float64))
        if start is None:
            raise ValueError("no measured pose to start the slew limit from")
        if not np.all(np.isfinite(a)):
            a = start.copy() if not self.zero_is_rest else np.zeros_like(a)  # never forward NaN to hardware
        a = np.clip(a, self.lower, self.upper)
        if self.max_rate is not None:
            dt = self.max_dt if self.last_t is None else min(max(now - self.last_t, 1e-3), self.max_dt)
            step = self.max_rate * dt
            a = np.clip(a, start - step, start + step)
        self.last, self.last_t = a, now
        return a

    def reset(self, now: float | None = None) -> None:
        """The robot was stopped (a stop is immediate, never slew-limited): ramp up from rest again, i.e.
        zero, or for positions the pose measured when the next command is made."""
        self.last = np.zeros_like(self.lower) if self.zero_is_rest else None
        self.last_t = now


class State(str, Enum):
    WAITING = "waiting"      # no frame yet
    RUNNING = "running"
    STALE = "stale"          # newest frame older than max_image_age (camera silent)
    LATE = "late"            # the last command's frame is older than late_age: the next command is overdue
    ESTOP = "estop"          # latched until reset
    FAULT = "fault"          # the policy failed: latched, the node exits
    NO_JOINT_STATE = "no_joint_state"        # joint targets, no JointState yet: nothing is sent to the arm
    STALE_JOINT_STATE = "stale_joint_state"  # the newest JointState is older than max_image_age


@dataclass
class Watchdog:
    """Decides, every watchdog tick, whether the robot may keep moving or must stop.

    It needs no inference result to decide: it looks only at when the newest frame and the frame behind
    the last command were taken, so a policy that hangs cannot keep the robot moving on old information.
    With `needs_joint_state` (absolute joint targets) the newest JointState must be fresh as well: the
    policy acts on the measured pose, and a stop holds it.
    The last command may stand until `late_age` after its frame was taken (default max_image_age; the
    node uses max_image_age + one control period, see qsft_robot.ros.params.late_bound).
    `transitions` keeps the last MAX_TRANSITIONS changes only (a node runs for days).
    """
    max_image_age: float
    late_age: float | None = None
    needs_joint_state: bool = False
    state: State = State.WAITING
    transitions: deque = field(default_factory=lambda: deque(maxlen=Watchdog.MAX_TRANSITIONS))

    MAX_TRANSITIONS = 1000

    def tick(self, now: float, newest_frame_time: float | None, estop: bool,
             command_frame_time: float | None = None, fault: bool = False,
             joint_state_time: float | None = None) -> State:
        if fault or self.state == State.FAULT:
            new = State.FAULT
        elif estop or self.state == State.ESTOP:
            new = State.ESTOP
        elif self.needs_joint_state and joint_state_time is None:
            new = State.NO_JOINT_STATE
        elif newest_frame_time is None:
            new = State.WAITING
        elif now - newest_frame_time > self.max_image_age:
            new = State.STALE
        elif self.needs_joint_state and now - joint_state_time > self.max_image_age:
            new = State.STALE_JOINT_STATE
        elif command_frame_time is not None and now - command_frame_time > (
                self.max_image_age if self.late_age is None else self.late_age):
            new = State.LATE
        else:
            new = State.RUNNING
        if new != self.state:
            self.transitions.append((now, self.state, new))
            self.state = new
        return new

    def reset_estop(self) -> None:
        if self.state == State.ESTOP:
            self.state = State.WAITING
