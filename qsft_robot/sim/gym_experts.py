"""The quality knobs of `experts.Quality` around a Gymnasium task's own scripted policy.

A benchmark's scripted policy (Meta-World ships one per task) is an expert; offline RL needs logs of
mixed quality with the information a value function can exploit. The operators are the built-in
tasks' knobs with the same preset values (`wrong_choice` aside: a single-object task has one decoy,
so "nearest" and "random" are the same here):
- noise: Gaussian noise on the motion dimensions of every action;
- wrong_target: the episode heads for a decoy point of the workspace instead of the task (a
  systematic mistake: the decoy follows from the scene, so in the logs the most common first move of
  a biased operator is the wrong one);
- early_stop: a hesitation that times out: the operator freezes part-way and never resumes;
- switch: one change of mind between 15% and 45% of the time limit, task -> decoy (a failure whose
  first part is good behaviour) or decoy -> task (a success with a detour): stitching material.
"""
from __future__ import annotations

import numpy as np

from qsft_robot.sim.experts import Quality, draw_stop_and_switch


class GymExpert:
    """env: a task with expert_action() (the scripted policy's action now), decoy_action() (a move
    towards the decoy point) and motion_dims (how many leading action dimensions are motion)."""

    def __init__(self, env, quality: Quality | str = "expert", seed: int = 0):
        self.env = env
        self.quality = Quality.preset(quality) if isinstance(quality, str) else quality
        self.rng = np.random.default_rng(seed)
        self.on_task = True
        self.stop_at: int | None = None
        self.switch_at: int | None = None
        self.last = np.zeros(env.action_dim)

    def reset(self) -> dict:
        """Call after env.reset(); returns the episode's degradation (recorded with the episode)."""
        q = self.quality
        wrong = bool(self.rng.random() < q.wrong_target)
        self.on_task = not wrong
        self.stop_at, self.switch_at = draw_stop_and_switch(self.rng, q, self.env.max_steps)
        self.last = np.zeros(self.env.action_dim)
        return {"wrong_target": wrong, "early_stop": self.stop_at is not None, "switch": self.switch_at is not None}

    def act(self) -> np.ndarray:
        env = self.env
        if self.switch_at is not None and env.t == self.switch_at:
            self.on_task = not self.on_task
        if self.stop_at is not None and env.t >= self.stop_at:
            a = np.zeros(env.action_dim)
            a[env.motion_dims:] = self.last[env.motion_dims:]  # frozen: the gripper stays as it was
            return a
        a = np.asarray(env.expert_action() if self.on_task else env.decoy_action(), np.float64)
        noise = self.rng.normal(0.0, self.quality.noise, size=a.shape) * (np.arange(a.size) < env.motion_dims)
        self.last = np.clip(a + noise, -1.0, 1.0)
        return self.last
