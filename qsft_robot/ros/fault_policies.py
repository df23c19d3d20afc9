"""Policies that misbehave on purpose, to test a robot's safety chain before a model is trusted.

Load them in the node with `policy:=qsft_robot.ros.fault_policies:SlowPolicy` and
`policy_args:='{"delay": 3.0, "fast_calls": 5}'`: the watchdog must stop the robot within the stale
timeout whatever the policy does (hangs, slows down, raises), and these make that checkable.
"""
from __future__ import annotations

import time

import numpy as np

from qsft_robot.ros.scripted_policy import ColorSeekPolicy


class SlowPolicy(ColorSeekPolicy):
    """color_seek that answers at once for `fast_calls` calls, then takes `delay` seconds per call."""

    def __init__(self, action_dim: int = 2, delay: float = 3.0, fast_calls: int = 0, **kwargs):
        super().__init__(action_dim, **kwargs)
        self.delay, self.fast_calls, self.calls = float(delay), int(fast_calls), 0

    def act(self, images: np.ndarray, instructions: list[str], states=None) -> np.ndarray:
        self.calls += 1
        if self.calls > self.fast_calls:
            time.sleep(self.delay)
        return super().act(images, instructions, states)


class FailingPolicy(ColorSeekPolicy):
    """color_seek that raises on call `fail_at` (1 = the first frame), as a broken model would."""

    def __init__(self, action_dim: int = 2, fail_at: int = 1, **kwargs):
        super().__init__(action_dim, **kwargs)
        self.fail_at, self.calls = int(fail_at), 0

    def act(self, images: np.ndarray, instructions: list[str], states=None) -> np.ndarray:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError(f"injected policy failure on call {self.calls}")
        return super().act(images, instructions, states)
