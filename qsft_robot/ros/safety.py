"""Safety filter and watchdog state machine of the policy node: pure logic, unit-tested without ROS."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class SafetyFilter:
    """Clip to the profile's limits, then limit the change per second (slew rate).

    The filter starts at rest (zero) and returns there on every `reset` (a stop), so the first command
    after start-up or after a stop is slew-limited like any other. `max_dt` caps the time step the rate
    limit may use: after a long gap (slow inference, a stop long ago) the next command may still only
    move one control tick's worth, never a jump justified by the gap.
    """

    def __init__(self, lower, upper, max_rate=None, max_dt: float = 0.2):
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        if np.any(self.lower > self.upper):
            raise ValueError("safety limits: lower > upper")
        if max_dt <= 0:
            raise ValueError("safety filter: max_dt must be > 0")
        self.max_rate = None if max_rate is None else np.asarray(max_rate, dtype=np.float64)
        self.max_dt = float(max_dt)
        self.last: np.ndarray = np.zeros_like(self.lower)  # at rest
        self.last_t: float | None = None

    def __call__(self, action, now: float) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.lower.shape:
            raise ValueError(f"action has shape {a.shape}, profile expects {self.lower.shape}")
        if not np.all(np.isfinite(a)):
            a = np.zeros_like(a)  # never forward NaN to hardware
        a = np.clip(a, self.lower, self.upper)
        if self.max_rate is not None:
            dt = self.max_dt if self.last_t is None else min(max(now - self.last_t, 1e-3), self.max_dt)
            step = self.max_rate * dt
            a = np.clip(a, self.last - step, self.last + step)
        self.last, self.last_t = a, now
        return a

    def reset(self, now: float | None = None) -> None:
        """The robot was stopped (a stop is immediate, never slew-limited): ramp up from zero again."""
        self.last = np.zeros_like(self.lower)
        self.last_t = now


class State(str, Enum):
    WAITING = "waiting"      # no frame yet
    RUNNING = "running"
    STALE = "stale"          # newest frame older than max_image_age (camera silent)
    LATE = "late"            # the last command's frame is older than late_age: the next command is overdue
    ESTOP = "estop"          # latched until reset
    FAULT = "fault"          # the policy failed: latched, the node exits


@dataclass
class Watchdog:
    """Decides, every watchdog tick, whether the robot may keep moving or must stop.

    It needs no inference result to decide: it looks only at when the newest frame and the frame behind
    the last command were taken, so a policy that hangs cannot keep the robot moving on old information.
    The last command may stand until `late_age` after its frame was taken (default max_image_age; the
    node uses max_image_age + one control period, see qsft_robot.ros.params.late_bound).
    `transitions` keeps the last MAX_TRANSITIONS changes only (a node runs for days).
    """
    max_image_age: float
    late_age: float | None = None
    state: State = State.WAITING
    transitions: deque = field(default_factory=lambda: deque(maxlen=Watchdog.MAX_TRANSITIONS))

    MAX_TRANSITIONS = 1000

    def tick(self, now: float, newest_frame_time: float | None, estop: bool,
             command_frame_time: float | None = None, fault: bool = False) -> State:
        if fault or self.state == State.FAULT:
            new = State.FAULT
        elif estop or self.state == State.ESTOP:
            new = State.ESTOP
        elif newest_frame_time is None:
            new = State.WAITING
        elif now - newest_frame_time > self.max_image_age:
            new = State.STALE
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
