"""Any Gymnasium environment that renders images and reports success, as a task of this project.

Collection, evaluation (success, Wilson interval, video, plot), the benchmark and the ROS sim bridge
all talk to tasks through one small contract (the one `core.MujocoTask` defines): reset(seed) ->
(obs, info), step(a) -> (obs, r, terminated, truncated, info), render(size, camera), observation dicts
{"images": {camera: HxWx3 uint8}, "state": float32, "instruction": str}, `action_dim`, `camera`,
`max_steps`, `t`. `GymTask` puts a Gymnasium env behind that contract, so an external benchmark needs
only a factory, an instruction and a rule for which part of its observation is proprioception.

Why episodes end on success here (Gymnasium envs often run on to a fixed horizon): the project's
offline-RL data is sparse-reward, reward 1 on the success step and terminal there (data/transitions),
the same as the built-in tasks, so the same value targets and evaluation apply unchanged.
"""
from __future__ import annotations

from typing import Any, Callable

import cv2
import numpy as np

from qsft_robot.sim.mujoco_task import checked_action


class GymTask:
    """A Gymnasium env (render_mode "rgb_array") behind the project's task contract.

    env_factory: builds the env; instruction: the language command; state_fn: raw observation ->
    proprio state (default: none, an empty vector); oracle_fn: raw observation -> privileged object
    state appended when oracle_state is set (the `*_oracle` idea of the built-in tasks); max_steps:
    the episode limit (0: the env's own TimeLimit decides); flip: turn rendered frames upside down
    (cameras mounted upside down, as Meta-World's corner cameras are); success_key: the info entry that
    reports success ("success" in Meta-World, "is_success" in Gymnasium-Robotics).
    """

    camera: str = "rgb"   # the observation's image key (and, for native renderers, the camera's name)

    def __init__(self, env_factory: Callable[[], Any], instruction: str, image_size: int = 64, max_steps: int = 0,
                 render_size: int = 192, state_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                 oracle_fn: Callable[[np.ndarray], np.ndarray] | None = None, oracle_state: bool = False,
                 flip: bool = False, target: str = "", success_key: str = "success"):
        self.env = env_factory()
        self.instruction = instruction
        self.target = target
        self.image_size = image_size
        self.render_size = render_size
        # 0: the env's TimeLimit (from its registration spec, or a TimeLimit wrapper applied by hand)
        self.max_steps = max_steps or int(getattr(getattr(self.env, "spec", None), "max_episode_steps", 0)
                                          or getattr(self.env, "_max_episode_steps", 0) or 0)
        if self.max_steps <= 0:
            raise ValueError("a GymTask needs max_steps (the env has no TimeLimit to take it from)")
        self.state_fn = state_fn or (lambda obs: np.zeros(0, np.float32))
        self.oracle_fn = oracle_fn
        if oracle_state and oracle_fn is None:
            raise ValueError("oracle_state needs an oracle_fn (which part of the observation is privileged)")
        self.oracle_state = oracle_state
        self.flip = flip
        self.success_key = success_key
        space = self.env.action_space
        self.action_dim = int(np.prod(space.shape))
        self.action_low = np.asarray(space.low, np.float64).reshape(-1)
        self.action_high = np.asarray(space.high, np.float64).reshape(-1)
        self.raw_obs: np.ndarray | None = None
        self.t = 0

    def state(self) -> np.ndarray:
        s = np.asarray(self.state_fn(self.raw_obs), np.float32).reshape(-1)
        if self.oracle_state:
            s = np.concatenate([s, np.asarray(self.oracle_fn(self.raw_obs), np.float32).reshape(-1)])
        return s

    def _frame(self, size: int, camera: str | None) -> np.ndarray:
        """One RGB frame of the env at its own resolution; subclasses with a native renderer override."""
        frame = self.env.render()
        if frame is None:
            raise ValueError("the env rendered nothing: build it with render_mode='rgb_array'")
        return np.asarray(frame)

    def _upside_down(self, camera: str | None) -> bool:
        return self.flip

    def render(self, size: int | None = None, camera: str | None = None) -> np.ndarray:
        size = size or self.render_size
        frame = self._frame(size, camera)
        if self._upside_down(camera):
            frame = frame[::-1, ::-1]
        if frame.shape[:2] != (size, size):
            frame = cv2.resize(np.ascontiguousarray(frame), (size, size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(frame, dtype=np.uint8)

    def observation(self) -> dict:
        return {"images": {self.camera: self.render(self.image_size, self.camera)},
                "state": self.state(), "instruction": self.instruction}

    def _reset_env(self, seed: int | None) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        return np.asarray(obs)

    def reset(self, seed: int | None = None):
        self.raw_obs = self._reset_env(seed)
        self.t = 0
        return self.observation(), {"success": False, "instruction": self.instruction, "target": self.target}

    def step(self, action):
        action = checked_action(action, self.action_dim)
        obs, _, term, trunc, info = self.env.step(np.clip(action, self.action_low, self.action_high))
        self.raw_obs = np.asarray(obs)
        self.t += 1
        success = bool(info.get(self.success_key, False))
        # the env's own termination without success (a fall, a crash) is a failure that ends the episode
        terminated = success or bool(term)
        truncated = not terminated and (bool(trunc) or self.t >= self.max_steps)
        return self.observation(), float(success), terminated, truncated, {"success": success}

    def close(self) -> None:
        self.env.close()
