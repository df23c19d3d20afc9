"""Shared pieces of the MuJoCo tasks: seeding, offscreen rendering, the Gymnasium-style step contract."""
from __future__ import annotations

from dataclasses import dataclass, field

import qsft_robot.sim  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
import mujoco
import numpy as np

COLORS = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.1), "blue": (0.1, 0.2, 0.95),
    "yellow": (0.95, 0.85, 0.1), "purple": (0.6, 0.1, 0.8), "orange": (1.0, 0.5, 0.0),
}


def checked_action(action, action_dim: int) -> np.ndarray:
    """The action as (action_dim,) float64; a NaN or inf (a diverged policy, a corrupt command) is refused
    here rather than handed to the physics, which would propagate it through the whole state."""
    action = np.asarray(action, dtype=np.float64).reshape(action_dim)
    if not np.all(np.isfinite(action)):
        raise ValueError(f"non-finite action {action}")
    return action


@dataclass
class StepResult:
    obs: dict
    reward: float
    terminated: bool
    truncated: bool
    info: dict = field(default_factory=dict)


class MujocoTask:
    """Base class: subclasses build the MJCF, define the action map, the instruction and success.

    API follows Gymnasium: reset(seed) -> (obs, info); step(a) -> (obs, r, terminated, truncated, info).
    Observations: {"images": {cam: HxWx3 uint8 RGB}, "state": float32 vector, "instruction": str}.
    """

    action_dim: int = 0
    camera: str = "front"          # the observation camera (what the policy sees)
    video_camera: str = ""          # what videos show; empty: the observation camera
    state_dim: int = 0

    phrase_family: str = ""         # sim/phrasings.py: the instruction frames this task's targets are named in

    def __init__(self, image_size: int = 64, max_steps: int = 40, render_size: int = 192, oracle_state: bool = False,
                 phrasings: str = ""):
        """oracle_state: append the objects' positions (robot frame) to the proprio state, so the value
        learning of an algorithm can be judged apart from perception (the `*_oracle` tasks).
        phrasings: '' (the task's one fixed sentence), 'seen' or 'unseen' (sim/phrasings.py): each episode
        names its target in a sentence drawn from that set (the `*_lang` tasks)."""
        from qsft_robot.sim.phrasings import SPLITS
        if phrasings and phrasings not in SPLITS:
            raise ValueError(f"unknown phrasing split {phrasings!r}; choose from {SPLITS}")
        if phrasings and not self.phrase_family:
            raise ValueError(f"{type(self).__name__} has no phrasings")
        self.oracle_state = oracle_state
        self.phrasings = phrasings
        self.image_size = image_size
        self.max_steps = max_steps
        self.render_size = render_size
        self.rng = np.random.default_rng(0)
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self._renderers: dict[int, mujoco.Renderer] = {}
        self.t = 0
        self.instruction = ""
        self.target = ""

    # subclasses implement these
    def _build(self) -> None: ...
    def _randomize(self) -> None: ...
    def _apply(self, action: np.ndarray) -> None: ...
    def _state(self) -> np.ndarray: ...
    def _success(self) -> bool: ...
    def _oracle(self) -> np.ndarray: ...

    @property
    def robot_position(self) -> np.ndarray:
        """Where the robot is (the hand, the base): in world coordinates, for logs and tests."""
        raise NotImplementedError

    def _renderer(self, size: int) -> mujoco.Renderer:
        if size not in self._renderers:
            self._renderers[size] = mujoco.Renderer(self.model, size, size)
        return self._renderers[size]

    def render(self, size: int | None = None, camera: str | None = None) -> np.ndarray:
        """Offscreen RGB; by default the video view at render_size (observations pass their camera)."""
        r = self._renderer(size or self.render_size)
        r.update_scene(self.data, camera=camera or self.video_camera or self.camera)
        return r.render().copy()

    def observation(self) -> dict:
        return {"images": {self.camera: self.render(self.image_size, self.camera)},
                "state": self.state().astype(np.float32), "instruction": self.instruction}

    def state(self) -> np.ndarray:
        return np.concatenate([self._state(), self._oracle()]) if self.oracle_state else self._state()

    def reset(self, seed: int | None = None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        if self.model is None:
            self._build()
            self.data = mujoco.MjData(self.model)
        mujoco.mj_resetData(self.model, self.data)
        self._randomize()
        if self.phrasings:   # drawn after the scene, so the scene of a seed is the same in every phrasing set
            from qsft_robot.sim.phrasings import phrase
            self.instruction = phrase(self.phrase_family, self.target, self.phrasings, self.rng)
        mujoco.mj_forward(self.model, self.data)
        self.t = 0
        return self.observation(), {"success": False, "instruction": self.instruction, "target": self.target}

    def step(self, action):
        self._apply(checked_action(action, self.action_dim))
        self.t += 1
        success = bool(self._success())
        truncated = (not success) and self.t >= self.max_steps
        return self.observation(), float(success), success, truncated, {"success": success}

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
