"""Safety filter and watchdog state machine of the policy node: pure logic, unit-tested without ROS."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class SafetyFilter:
    """Clip to the profile's limits, then limit the change per second (slew rate)."""

    def __init__(self, lower, upper, max_rate=None):
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        if np.any(self.lower > self.upper):
            raise ValueError("safety limits: lower > upper")
        self.max_rate = None if max_rate is None else np.asarray(max_rate, dtype=np.float64)
        self.last: np.ndarray | None = None
        self.last_t: float | None = None

    def __call__(self, action, now: float) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.lower.shape:
            raise ValueError(f"action has shape {a.shape}, profile expects {self.lower.shape}")
        if not np.all(np.isfinite(a)):
            a = np.zeros_like(a)  # never forward NaN to hardware
        a = np.clip(a, self.lower, self.upper)
        if self.max_rate is not None and self.last is not None and self.last_t is not None:
            dt = max(now - self.last_t, 1e-3)
            step = self.max_rate * dt
            a = np.clip(a, self.last - step, self.last + step)
        self.last, self.last_t = a, now
        return a

    def reset(self) -> None:
        self.last = self.last_t = None


class State(str, Enum):
    WAITING = "waiting"      # no frame yet
    RUNNING = "running"
    STALE = "stale"          # newest frame older than max_image_age
    ESTOP = "estop"          # latched until reset


@dataclass
class Watchdog:
    """Decides, every control tick, whether the policy may act or the robot must stop."""
    max_image_age: float
    state: State = State.WAITING
    transitions: list = field(default_factory=list)

    def tick(self, now: float, newest_frame_time: float | None, estop: bool) -> State:
        if estop or self.state == State.ESTOP:
            new = State.ESTOP
        elif newest_frame_time is None:
            new = State.WAITING
        elif now - newest_frame_time > self.max_image_age:
            new = State.STALE
        else:
            new = State.RUNNING
        if new != self.state:
            self.transitions.append((now, self.state, new))
            self.state = new
        return new

    def reset_estop(self) -> None:
        if self.state == State.ESTOP:
            self.state = State.WAITING
