"""Meta-World (v3, MuJoCo) tasks as `GymTask`s: `metaworld/<env-name>`, e.g. metaworld/button-press-topdown-v3.

Meta-World is the external benchmark LeRobot evaluates SmolVLA on; it ships a scripted policy per
task, so mixed-quality offline data is generated here with no download (`gym_experts`). Install it
with the `metaworld` extra (docs/tasks.md).

Choices, each measured on a 2-core CPU (`bench/sim_speed.py --metaworld-only`; docs/tasks.md):
- Seeding: each reset(seed) draws the object and goal positions from the seed (the env's own
  `seeded_rand_vec` path), so eval seed k is the same scene for every method; Meta-World's MT1 wrapper
  instead samples one of 50 fixed scenes per reset.
- Observation: fully observable (goal position in the raw observation), because the scripted policies
  read the goal from it; the policy under training sees only the image and the proprio state (hand
  xyz + gripper opening, the first 4 numbers); object and goal positions are the oracle state.
- Rendering: the project's own `mujoco.Renderer` on the env's model, with shadows and reflections off
  (4.7x faster with llvmpipe: 35.7 ms a frame instead of 167 ms), camera `corner2` (the one LeRobot's
  Meta-World env uses) turned the right way up: Meta-World's corner cameras are mounted upside down.
- Episode limit 150 steps by default: the scripted policies finish in 40-105 (500, Meta-World's own
  limit, would only make every failed evaluation episode 3x longer).
"""
from __future__ import annotations

import importlib.util

import qsft_robot.sim  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
import mujoco
import numpy as np

from qsft_robot.sim.gym_task import GymTask

PREFIX = "metaworld/"
INSTRUCTIONS = {
    "reach-v3": "reach the goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-v3": "press the button",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "door-open-v3": "open the door",
    "window-open-v3": "open the window",
    "window-close-v3": "close the window",
    "plate-slide-v3": "slide the plate into the goal",
    "faucet-open-v3": "turn the faucet on",
    "handle-press-v3": "press the handle down",
    "coffee-button-v3": "press the coffee machine button",
}
UPSIDE_DOWN_CAMERAS = ("corner", "corner2", "corner3", "corner4")
HAND_GAIN = 10.0   # decoy moves: action = gain * offset (m), clipped; the scripted policies use 10-25


def available() -> bool:
    return importlib.util.find_spec("metaworld") is not None


def _mocap_weld_compat() -> None:
    """Meta-World 3.1.1 pins MuJoCo 3.3.0 and writes 11 numbers into each weld's eq_data row; newer
    MuJoCo rows have more columns (12 in 4.0), and the whole-row assignment raises. The 11 leading
    numbers mean the same (anchor, relative pose, torque scale), so write those and leave the rest as
    compiled. A patch, not a fork, because this is the only incompatibility found (all tasks the
    benchmark uses reset, step and succeed under their scripted policies on MuJoCo 4.0: tests). Applied
    when the first Meta-World env is built, not at import."""
    from metaworld import sawyer_xyz_env

    base = sawyer_xyz_env.SawyerMocapBase
    if getattr(base.reset_mocap_welds, "_qsft_compat", False):
        return
    weld = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0])

    def reset_mocap_welds(self) -> None:
        m = self.model
        if m.nmocap > 0 and m.eq_data is not None:
            for i in range(m.neq):
                if m.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
                    m.eq_data[i, :weld.size] = weld

    reset_mocap_welds._qsft_compat = True
    base.reset_mocap_welds = reset_mocap_welds


def env_names() -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    return sorted(ALL_V3_ENVIRONMENTS)


def _make_env(name: str):
    _mocap_weld_compat()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    if name not in ALL_V3_ENVIRONMENTS:
        raise ValueError(f"unknown Meta-World task {name!r}; available: {', '.join(sorted(ALL_V3_ENVIRONMENTS))}")
    env = ALL_V3_ENVIRONMENTS[name]()
    # what Meta-World's goal-observable constructor does, minus freezing the scene: a fresh scene per seed
    env._partially_observable = False
    env.__dict__.pop("sawyer_observation_space", None)   # a cached_property that clips the goal to 0 if kept
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env._set_task_called = True
    return env


class MetaWorldTask(GymTask):
    """One Meta-World v3 task; action: hand xyz delta + gripper effort, each in [-1, 1]."""

    motion_dims = 3

    def __init__(self, name: str, image_size: int = 64, max_steps: int = 150, camera: str = "corner2",
                 render_size: int = 192, oracle_state: bool = False, instruction: str = ""):
        self.name = name
        self.camera = camera
        super().__init__(lambda: _make_env(name), instruction or INSTRUCTIONS.get(name, _instruction_from(name)),
                         image_size=image_size, max_steps=max_steps, render_size=render_size,
                         state_fn=lambda o: o[:4], oracle_fn=lambda o: np.concatenate([o[4:7], o[-3:]]),
                         oracle_state=oracle_state, target=name)
        from metaworld.policies import ENV_POLICY_MAP
        self.policy = ENV_POLICY_MAP[name]()
        self._renderers: dict[int, mujoco.Renderer] = {}
        self._decoy = np.zeros(3)

    def _upside_down(self, camera: str | None) -> bool:
        return (camera or self.camera) in UPSIDE_DOWN_CAMERAS

    def _frame(self, size: int, camera: str | None) -> np.ndarray:
        if size not in self._renderers:
            r = mujoco.Renderer(self.env.model, size, size)
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._renderers[size] = r
        r = self._renderers[size]
        r.update_scene(self.env.data, camera=camera or self.camera)
        return r.render()

    def _reset_env(self, seed: int | None) -> np.ndarray:
        if seed is not None:
            self.env.seed(int(seed))
        obs, _ = self.env.reset()
        obs = np.asarray(obs)
        obj = obs[4:7]
        # the decoy of a wrong-target episode: the object's mirror image across the table's centre line
        # (0.2 m aside when the object sits on it), at hand height: a plausible, systematic wrong move
        side = np.sign(obj[0]) if abs(obj[0]) > 0.05 else 1.0
        self._decoy = np.array([obj[0] - side * max(0.2, 2 * abs(obj[0])), obj[1], obs[2]])
        return obs

    @property
    def hand_pos(self) -> np.ndarray:
        return np.asarray(self.raw_obs[:3], np.float64)

    def expert_action(self) -> np.ndarray:
        """Meta-World's scripted policy for this task, clipped to the action space (its gains overshoot)."""
        return np.clip(self.policy.get_action(self.raw_obs), -1.0, 1.0)

    def decoy_action(self) -> np.ndarray:
        move = np.clip(HAND_GAIN * (self._decoy - self.hand_pos), -1.0, 1.0)
        return np.append(move, -1.0)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
        super().close()


def _instruction_from(name: str) -> str:
    return name.removesuffix("-v3").replace("-", " ")


def make_metaworld_task(task: str, **kw) -> MetaWorldTask:
    """`metaworld/<env-name>` -> its task; clear error when the extra is not installed."""
    if not available():
        raise ModuleNotFoundError(f"{task} needs Meta-World: pip install -e '.[metaworld]' (docs/tasks.md)")
    return MetaWorldTask(task.removeprefix(PREFIX), **kw)
