"""OGBench manipulation (MuJoCo) single-task variants as `GymTask`s: `ogbench/<name>`.

OGBench (Park, Frans, Eysenbach & Levine, ICLR 2025; PyPI `ogbench`, MIT) was built so that imitating its
data is not enough: its `play` datasets are a noisy scripted operator doing *random* tasks in the scene, and
an evaluation task has to be put together from pieces of them. Its reward-based "singletask" variants fix one
evaluation task per id (`task1` ... `task5`). Install with the `ogbench` extra (README: OGBench).

Names: OGBench's dataset-style id, e.g. `ogbench/visual-cube-single-play-singletask-task1-v0` (what
`ogbench.make_env_and_datasets` takes), or its env id `ogbench/visual-cube-single-singletask-task1-v0`; both
are the same task (the dataset type in the name does not change the env: `collect --quality` decides the
data). Without `-taskN` the env's default task. The visual variants of cube, scene and puzzle only: the
project learns from pixels. A trailing `@upstream` renders with the env's own renderer, `@lite` without the
faint arm (below).

Choices (docs/ogbench.md):
- Observation: the env's own 64-px `front_pixels` frame (its pixel observation, not rendered a second time);
  proprio state = gripper xyz (OGBench's own scaling: (p - (0.425, 0, 0)) * 10), gripper yaw and opening
  (0..1), computed from the joint positions alone (`proprio_from_qpos`), so that collected logs, upstream
  `.npz` files (which store qpos) and evaluation give the same numbers for the same state.
- Rendering: OGBench's frames are rendered with 4096-px shadow maps and 4x multisampling, costly with Mesa's
  software renderer. "fast" (the default) keeps the shadows at 512 px and drops the multisampling: a frame
  ~3.8x faster, a whole env step ~3x (measured on 2 busy cores), a mean absolute difference of ~1/255 per
  pixel from the env's own frame (at edges; docs/ogbench.md). `@upstream` keeps the env's renderer: the
  published datasets' frames, for a policy trained on an upstream `.npz` file. `@lite` is "fast" without the
  robot's geoms that OGBench draws nearly transparent (alpha <= 0.1: the arm's links and most of the gripper,
  193k of the scene's 263k mesh faces; the gripper's pads stay), and so without their shadow: an env step ~5x
  faster than "fast" (19 vs 96 ms of CPU), but the arm's shadow on the table, which shows its pose, is gone
  (mean difference 4.3/255); the gripper's pose is in the proprio state. For CPU budgets, and a difference
  from the published observation to state beside any result.
- Success and reward: the env's own success (all of the task's objects at their goals); sparse reward 1
  on the step that reaches it and the episode ends there (the project's convention, data/transitions). The
  env is made with success_timing="post" (OGBench's single-task default, "pre", reports a state's success one
  step late); OGBench's own per-step reward, -(number of unmet subgoals), is not used.
- Episode limit: the env's own (cube-single 200, scene 750, puzzle-3x3 500 steps).
- Envs are reused: building one (MJCF assembly, IK model) takes seconds, so a closed task's env goes back
  to a per-process pool and the next task with the same settings takes it; reset(seed) re-initialises all
  of an episode's state (tested: a reused env gives the same frames as a new one).
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass

import qsft_robot.sim  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
import mujoco
import numpy as np

from qsft_robot.sim.gym_task import GymTask

PREFIX = "ogbench/"
RENDER_SUFFIXES = {"@upstream": "upstream", "@lite": "lite"}
RENDER_MODES = ("fast", "lite", "upstream")
FAINT_ALPHA = 0.11   # @lite: geoms drawn at most this opaque (the pixel envs' arm links, alpha 0.1) are hidden
FAMILIES = ("cube", "scene", "puzzle")
XYZ_CENTER = np.array([0.425, 0.0, 0.0])   # OGBench's own normalisation of positions (state observations)
XYZ_SCALE = 10.0
FAST_SHADOW_SIZE = 512
PROPRIO_NAMES = ["effector_x", "effector_y", "effector_z", "effector_yaw", "gripper_opening"]
# one instruction per evaluation task (single-task policies do not need them to tell tasks apart, but every
# episode carries one); the cube moves are described as seen from the camera (world +y is image right)
INSTRUCTIONS = {
    ("cube-single", 1): "move the cube from the right to the left",
    ("cube-single", 2): "move the cube away from the robot",
    ("cube-single", 3): "move the cube towards the robot",
    ("cube-single", 4): "move the cube from the near left to the far right",
    ("cube-single", 5): "move the cube from the near right to the far left",
    ("scene", 1): "open the drawer and the window",
    ("scene", 2): "unlock, close the drawer and the window, then lock them again",
    ("scene", 3): "move the cube to the right, open the drawer, unlock and close the window",
    ("scene", 4): "unlock the drawer, put the cube in it and close it",
    ("scene", 5): "put the cube in the drawer, close it, open the window and lock both",
}
_POOL: dict[tuple, list] = {}


def available() -> bool:
    return importlib.util.find_spec("ogbench") is not None


@dataclass(frozen=True)
class OGBenchSpec:
    """The pieces of an `ogbench/<name>` task name."""

    name: str           # as given, without the prefix and the render suffix
    env_id: str         # the evaluation env, e.g. visual-cube-single-singletask-task1-v0
    play_env_id: str    # the env the play data is collected in, e.g. visual-cube-single-v0
    state_env_id: str   # its state-based twin (relabels logs by qpos; renders nothing)
    dataset_name: str   # OGBench's name for its dataset of this env, e.g. visual-cube-single-play-v0
    family: str         # cube | scene | puzzle
    variant: str        # e.g. cube-single, scene, puzzle-3x3
    task_id: int        # 0: the env's default task
    render: str         # fast | lite | upstream


def parse_name(task: str) -> OGBenchSpec:
    name = task.removeprefix(PREFIX)
    render = "fast"
    for suffix, mode in RENDER_SUFFIXES.items():
        if name.endswith(suffix):
            name, render = name.removesuffix(suffix), mode
    splits = name.split("-")
    if "singletask" not in splits or not name.startswith("visual-") or not any(f in splits for f in FAMILIES):
        raise ValueError(f"{task!r}: OGBench tasks here are the visual manipulation single-task variants, "
                         "e.g. ogbench/visual-cube-single-play-singletask-task1-v0 (cube, scene, puzzle)")
    pos = splits.index("singletask")
    dataset_type = "play"
    if splits[pos - 1] in ("play", "noisy"):   # OGBench's dataset-style name: drop the dataset type
        dataset_type = splits[pos - 1]
        splits = splits[:pos - 1] + splits[pos:]
        pos -= 1
    env_id = "-".join(splits)
    m = re.fullmatch(r"task(\d+)", splits[-2])
    base = splits[:pos]                         # visual, cube, single
    version = splits[-1]
    family = next(f for f in FAMILIES if f in base)
    return OGBenchSpec(name=name, env_id=env_id, play_env_id="-".join(base + [version]),
                       state_env_id=env_id.removeprefix("visual-"),
                       dataset_name="-".join(base + [dataset_type, version]), family=family,
                       variant="-".join(base[1:]), task_id=int(m.group(1)) if m else 0, render=render)


def _registered(env_id: str) -> None:
    import gymnasium
    import ogbench.manipspace  # noqa: F401  (registers the manipulation envs)
    if env_id not in gymnasium.registry:
        known = sorted(k for k in gymnasium.registry if k.startswith("visual-") and "singletask" in k
                       and any(f in k for f in FAMILIES))
        raise ValueError(f"unknown OGBench env {env_id!r}; the visual single-task ids are: {', '.join(known)}")


def _fast_rendering(u) -> None:
    """Smaller shadow maps and no multisampling for every model this env compiles (see the module doc)."""
    original = u.modify_mjcf_model

    def modify_mjcf_model(mjcf_model):
        mjcf_model = original(mjcf_model)
        q = mjcf_model.visual.quality
        if q.shadowsize != FAST_SHADOW_SIZE or q.offsamples != 0:
            q.shadowsize, q.offsamples = FAST_SHADOW_SIZE, 0
            u.mark_dirty()
        return mjcf_model

    u.modify_mjcf_model = modify_mjcf_model


def faint_robot_geoms(m: mujoco.MjModel) -> np.ndarray:
    """Ids of the robot's drawn geoms (bodies under ur5e/, the arm and its gripper) of alpha <= FAINT_ALPHA: the
    links OGBench's pixel envs draw nearly transparent. Other faint geoms (the scene's window panes) stay."""
    alpha = np.where(m.geom_matid >= 0, m.mat_rgba[np.maximum(m.geom_matid, 0), 3], m.geom_rgba[:, 3])
    robot = np.array([m.body(b).name.startswith("ur5e/") for b in m.geom_bodyid])
    return np.flatnonzero((alpha <= FAINT_ALPHA) & (m.geom_group <= 2) & robot)


def _hide_faint_geoms(u) -> None:
    """@lite: every model this env compiles draws none of `faint_robot_geoms` (moved to group 3, which the
    renderer's default options do not draw; a geom's group changes nothing in the physics)."""
    original = u.post_compilation

    def post_compilation():
        original()
        u._model.geom_group[faint_robot_geoms(u._model)] = 3

    u.post_compilation = post_compilation


def make_env(env_id: str, image_size: int = 64, render: str = "fast", **kw):
    """An OGBench env by id (gymnasium.make, without the env checker), rendering image_size frames."""
    import gymnasium

    _registered(env_id)
    if render not in RENDER_MODES:
        raise ValueError(f"render must be one of {RENDER_MODES}, not {render!r}")
    env = gymnasium.make(env_id, width=image_size, height=image_size, disable_env_checker=True, **kw)
    if render in ("fast", "lite"):
        _fast_rendering(env.unwrapped)
    if render == "lite":
        _hide_faint_geoms(env.unwrapped)
    return env


def proprio_from_qpos(u, qpos: np.ndarray, scratch: mujoco.MjData) -> np.ndarray:
    """(5,) float32 proprio state of the state with joint positions qpos: gripper (pinch site) xyz in OGBench's
    scaling, its yaw and the gripper opening in [0, 1]. u: the unwrapped OGBench env (its model and ids);
    scratch: an MjData of its model that this function may overwrite."""
    from ogbench.manipspace import lie

    scratch.qpos[:] = qpos
    mujoco.mj_kinematics(u._model, scratch)
    pos = (scratch.site_xpos[u._pinch_site_id] - XYZ_CENTER) * XYZ_SCALE
    yaw = lie.SO3.from_matrix(scratch.site_xmat[u._pinch_site_id].reshape(3, 3)).compute_yaw_radians()
    grip = np.clip(qpos[u._gripper_opening_joint_id] / 0.8, 0.0, 1.0)   # the env's own opening measure
    return np.array([*pos, yaw, grip], np.float32)


def instruction_for(spec: OGBenchSpec, task_id: int = 0) -> str:
    task_id = task_id or spec.task_id
    if (spec.variant, task_id) in INSTRUCTIONS:
        return INSTRUCTIONS[(spec.variant, task_id)]
    if spec.family == "puzzle":
        return f"press the buttons to make the {spec.variant.removeprefix('puzzle-')} pattern {task_id}"
    return f"solve {spec.variant.replace('-', ' ')} task {task_id}"


class OGBenchTask(GymTask):
    """One OGBench visual single-task env; action (5,): gripper xyz delta, yaw delta, opening delta, in [-1, 1]."""

    camera = "front_pixels"
    motion_dims = 4   # xyz + yaw: the operator noise of `collect --quality expert` goes on these

    def __init__(self, name: str, image_size: int = 64, max_steps: int = 0, render_size: int = 192,
                 instruction: str = ""):
        self.spec = parse_name(name)
        _registered(self.spec.env_id)
        self._pool_key = (self.spec.env_id, image_size, self.spec.render)
        super().__init__(self._take_env, instruction or instruction_for(self.spec), image_size=image_size,
                         max_steps=max_steps, render_size=render_size, target=self.spec.env_id)
        self.name = name
        if not instruction and self.spec.task_id == 0:   # the env's default task: its id is known once it exists
            self.instruction = instruction_for(self.spec, int(self.unwrapped._reward_task_id))
        self._scratch: mujoco.MjData | None = None
        self._oracle = None
        self._episode_seed = 0

    def _take_env(self):
        free = _POOL.get(self._pool_key)
        if free:
            return free.pop()
        # success_timing="post": a step reports the success of the state it leads to (module doc)
        return make_env(self.spec.env_id, self.image_size_for_env, self.spec.render, success_timing="post")

    @property
    def image_size_for_env(self) -> int:
        return self._pool_key[1]

    @property
    def unwrapped(self):
        return self.env.unwrapped

    def state(self) -> np.ndarray:
        u = self.unwrapped
        if self._scratch is None or self._scratch.qpos.shape != u._data.qpos.shape:
            self._scratch = mujoco.MjData(u._model)
        return proprio_from_qpos(u, u._data.qpos, self._scratch)

    def _frame(self, size: int, camera: str | None) -> np.ndarray:
        # the env's own pixel observation of the current state (rendered by its step/reset); other sizes and
        # the video frames are this frame resized (the env's offscreen buffer is image_size wide)
        return np.asarray(self.raw_obs)

    def _reset_env(self, seed: int | None) -> np.ndarray:
        self._oracle = None
        self._episode_seed = 0 if seed is None else int(seed)
        obs, _ = self.env.reset(seed=seed)
        return np.asarray(obs)

    # -- a scripted expert for the evaluation task (cube-single: the wheel's pick-and-place plan oracle) --
    def _oracle_info(self) -> dict:
        from ogbench.manipspace import lie

        u = self.unwrapped
        info = u.compute_ob_info()
        mocap = u._cube_target_mocap_ids[0]
        info["privileged/target_block"] = 0
        info["privileged/target_block_pos"] = u._data.mocap_pos[mocap].copy()
        info["privileged/target_block_yaw"] = np.array([lie.SO3(wxyz=u._data.mocap_quat[mocap]).compute_yaw_radians()])
        return info

    def expert_action(self) -> np.ndarray:
        """The upstream pick-and-place plan oracle, noise-free, planned for this episode's goal (cube-single only:
        the other tasks need several oracles in sequence; their data is `--quality play`)."""
        if self.spec.variant != "cube-single":
            raise NotImplementedError(f"{self.name}: a scripted expert for the evaluation task exists for "
                                      "cube-single only; collect the other tasks with --quality play")
        info = self._oracle_info()
        if self._oracle is None:
            from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
            self._oracle = CubePlanOracle(env=self.env, noise=0.0)
            # the oracle draws its keyframes from numpy's global RNG: seeded by the episode, then restored
            saved = np.random.get_state()
            np.random.seed(self._episode_seed)
            try:
                self._oracle.reset(None, info)
            finally:
                np.random.set_state(saved)
        return np.clip(np.asarray(self._oracle.select_action(None, info), np.float64), -1.0, 1.0)

    def close(self) -> None:
        # back to the pool for the next task with the same settings (not closed: it is reused)
        _POOL.setdefault(self._pool_key, []).append(self.env)


def make_ogbench_task(task: str, **kw) -> OGBenchTask:
    """`ogbench/<name>` -> its task; clear error when the extra is not installed."""
    if not available():
        raise ModuleNotFoundError(f"{task} needs OGBench: pip install -e '.[ogbench]' (README: OGBench)")
    return OGBenchTask(task, **kw)
