"""OGBench `play` data for `ogbench/<name>` tasks: the upstream generator ported, and upstream `.npz` files read.

A play log is what OGBench's manipulation datasets are made of: one long episode (1001 steps upstream) in
which a scripted operator does one *random* task after another (move the cube somewhere, press a button,
open the drawer, ...), with temporally correlated noise on its plan. None of it is aimed at the evaluation
task; the evaluation task's success happens in a log only when a random task happens to leave the scene
in its goal configuration, so a policy for it has to be put together from pieces of the logs.

`noisy` logs (upstream's other dataset type, e.g. visual-cube-single-noisy-v0) are the same random-task logs
by the wheel's Markov oracles instead: a closed-loop operator whose action depends on the current state only
(the plan oracles follow keyframes timed from the start of their plan, which a camera does not show), with
Gaussian noise at a level drawn per log (0 to 0.1; x3 on yaw, x10 on the gripper) and a uniformly random
action on 10% of the steps.

From log to episodes (the same for collected logs and upstream files): the log's states are judged against
the evaluation task by OGBench's own `relabel_dataset` (from qpos and button states); the log is cut after
every step that enters a success state (reward 1 there, terminal, the project's sparse-reward convention),
the steps taken while the scene stays in a success state are dropped (the episode would already have ended),
and the rest after the last success is one episode that ends without success (not terminal: the log ends,
as a time limit does). An upstream file's last step of each trajectory has no next state (its outcome is
unknown), so it is dropped; a collected log knows its last outcome.

Port of OGBench's data_gen_scripts/generate_manipspace.py (https://github.com/seohongpark/ogbench, commit 1d41409),
`play` and `noisy` parts (noisy: the settings of upstream's commands for the noisy datasets, --p_random_action=0.1
at the default --noise 0.1). Play: the same oracles per environment (the wheel's plan oracles: cube, and for scene
cube/button/drawer/window; puzzle: button with the gripper kept closed), the same noise (0.1, smoothing 0.5, no
random actions), the same cube stacking probabilities, log length (1001 steps) and scene health check (a log whose
cube leaves the visible table is collected again), and the same per-step records (observation before the step,
action, qpos/qvel/button states before the step). What differs: each log is seeded (env and numpy's global RNG,
which the oracles draw from) by its episode seed, so `--workers` collections are reproducible (a random action is
drawn from numpy's RNG, not the env's action space, for the same reason); frames are rendered at `collect
--image-size` with the task's renderer (ogbench_tasks: "fast" unless `@upstream`); logs can be shorter (`collect
--max-steps`).

The upstream generator's license:

    The MIT License (MIT)

    Copyright (c) 2024 OGBench Authors

    Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
    associated documentation files (the "Software"), to deal in the Software without restriction, including
    without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
    copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the
    following conditions:

    The above copyright notice and this permission notice shall be included in all copies or substantial
    portions of the Software.

    THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
    LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO
    EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER
    IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE
    USE OR OTHER DEALINGS IN THE SOFTWARE.
"""
from __future__ import annotations

import logging
from pathlib import Path

import mujoco
import numpy as np

from qsft_robot.data.episode import DatasetError, Episode
from qsft_robot.sim.ogbench_tasks import (
    PREFIX,
    PROPRIO_NAMES,
    OGBenchSpec,
    instruction_for,
    make_env,
    parse_name,
    proprio_from_qpos,
)

logger = logging.getLogger(__name__)
PLAY_STEPS = 1001          # upstream --max_episode_steps
PLAY_NOISE = 0.1           # upstream --noise (plan oracles)
PLAY_NOISE_SMOOTHING = 0.5  # upstream --noise_smoothing
NOISY_NOISE = 0.1           # upstream --noise (Markov oracles): the per-log noise level is drawn from [0, this)
NOISY_NOISE_SCALE = np.array([1.0, 1.0, 1.0, 3.0, 10.0])   # upstream's per-dimension factors (xyz, yaw, gripper)
NOISY_P_RANDOM = 0.1        # upstream --p_random_action of the noisy datasets
ACTION_NAMES = ["dx", "dy", "dz", "dyaw", "dgrip"]
_ENVS: dict[tuple, object] = {}   # per process: building an OGBench env takes seconds


def _cached_env(env_id: str, image_size: int, render: str, **kw):
    key = (env_id, image_size, render, tuple(sorted(kw.items())))
    if key not in _ENVS:
        _ENVS[key] = make_env(env_id, image_size, render, **kw)
    return _ENVS[key]


def _relabel_env(spec: OGBenchSpec):
    """The state-based single-task twin: what OGBench's relabel_dataset reads the task's goal from."""
    return _cached_env(spec.state_env_id, 64, "upstream")


def _oracles(env, family: str, kind: str = "play") -> dict:
    if kind == "noisy":
        from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
        from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
        from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle

        if family == "cube":
            return {"cube": CubeMarkovOracle(env=env, min_norm=0.4)}
        if family == "scene":
            return {"cube": CubeMarkovOracle(env=env, min_norm=0.4, max_step=100),
                    "button": ButtonMarkovOracle(env=env, min_norm=0.4),
                    "drawer": DrawerMarkovOracle(env=env, min_norm=0.4),
                    "window": WindowMarkovOracle(env=env, min_norm=0.4)}
        return {"button": ButtonMarkovOracle(env=env, min_norm=0.4, gripper_always_closed=True)}
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    kw = {"noise": PLAY_NOISE, "noise_smoothing": PLAY_NOISE_SMOOTHING}
    if family == "cube":
        return {"cube": CubePlanOracle(env=env, **kw)}
    if family == "scene":
        return {"cube": CubePlanOracle(env=env, **kw), "button": ButtonPlanOracle(env=env, **kw),
                "drawer": DrawerPlanOracle(env=env, **kw), "window": WindowPlanOracle(env=env, **kw)}
    return {"button": ButtonPlanOracle(env=env, gripper_always_closed=True, **kw)}


def _operator_action(agent, ob, info, kind: str, noise: float) -> np.ndarray:
    """The logged action: the oracle's (play: its own correlated noise inside), or for noisy logs upstream's
    random action / Gaussian noise on top of the Markov oracle's; clipped to the action box."""
    if kind == "noisy":
        if np.random.rand() < NOISY_P_RANDOM:
            action = np.random.uniform(-1.0, 1.0, 5)
        else:
            action = np.asarray(agent.select_action(ob, info), np.float64)
            action = action + np.random.normal(0.0, noise * NOISY_NOISE_SCALE)
    else:
        action = np.asarray(agent.select_action(ob, info), np.float64)
    return np.clip(action, -1.0, 1.0)


def _p_stack(play_env_id: str) -> float:
    """Upstream's probability of stacking a cube on another as a random task's goal (drawn per log)."""
    for word, (lo, hi) in {"single": (0.0, 0.0), "double": (0.0, 0.25), "triple": (0.05, 0.35),
                           "quadruple": (0.1, 0.5), "octuple": (0.0, 0.35)}.items():
        if word in play_env_id:
            return float(np.random.uniform(lo, hi)) if hi > 0 else 0.0
    return 0.5


def _healthy(family: str, qpos: np.ndarray) -> bool:
    """Upstream's scene check: the cube stays visible (on the table, or inside the drawer)."""
    if family != "scene":
        return True
    xyz = qpos[:, 14:17]
    too_far_right = (xyz[:, 1] >= 0.29).any()
    off_left_not_in_drawer = ((xyz[:, 1] <= -0.3) & ((xyz[:, 2] < 0.06) | (xyz[:, 2] > 0.08))).any()
    return not (too_far_right or off_left_not_in_drawer)


def play_log(spec: OGBenchSpec, seed: int, image_size: int = 64, steps: int = PLAY_STEPS,
             kind: str = "play") -> dict:
    """One play (or noisy, module doc) log in the env's data-collection mode: frames (T, H, W, 3), actions (T, 5),
    qpos (T + 1, nq) and button_states (T + 1, nb) when the env has buttons (index T: the state after the last
    step), proprio (T, 5)."""
    env = _cached_env(spec.play_env_id, image_size, spec.render, terminate_at_goal=False, mode="data_collection",
                      max_episode_steps=steps)
    u = env.unwrapped
    saved = np.random.get_state()
    np.random.seed(seed % 2**32)   # the oracles draw their plans and noise from numpy's global RNG
    try:
        ob, info = env.reset(seed=seed)
        while True:   # upstream: scene logs whose cube leaves the visible table are collected again
            agents = _oracles(env, spec.family, kind)
            p_stack = _p_stack(spec.play_env_id)
            noise = float(np.random.uniform(0.0, NOISY_NOISE)) if kind == "noisy" else 0.0
            agent = agents[info["privileged/target_task"]]
            agent.reset(ob, info)
            scratch = mujoco.MjData(u._model)
            log = {"frames": [], "actions": [], "qpos": [], "button_states": [], "proprio": []}
            done = False
            while not done:
                action = _operator_action(agent, ob, info, kind, noise)
                next_ob, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                if agent.done:   # the random task is finished: a new random task
                    agent_ob, agent_info = u.set_new_target(p_stack=p_stack)
                    agent = agents[agent_info["privileged/target_task"]]
                    agent.reset(agent_ob, agent_info)
                log["frames"].append(np.asarray(ob))
                log["actions"].append(action.astype(np.float32))
                log["qpos"].append(info["prev_qpos"])
                log["proprio"].append(proprio_from_qpos(u, info["prev_qpos"], scratch))
                if "prev_button_states" in info:
                    log["button_states"].append(info["prev_button_states"])
                ob = next_ob
            log["qpos"].append(info["qpos"])
            if "button_states" in info:
                log["button_states"].append(info["button_states"])
            if _healthy(spec.family, np.asarray(log["qpos"])):
                break
            logger.info("%s seed %d: unhealthy play log (cube out of view), collected again", spec.name, seed)
            ob, info = env.reset()
    finally:
        np.random.set_state(saved)
    out = {k: np.stack(v) for k, v in log.items() if v}
    return out


def success_mask(spec: OGBenchSpec, qpos: np.ndarray, button_states: np.ndarray | None) -> np.ndarray:
    """(N,) bool: which states are the evaluation task's success, by OGBench's own relabel_dataset."""
    from ogbench.relabel_utils import relabel_dataset

    data = {"qpos": np.asarray(qpos, np.float64)}
    if button_states is not None:
        data["button_states"] = np.asarray(button_states)
    relabel_dataset(spec.state_env_id, _relabel_env(spec), data)
    return data["masks"] == 0


def episodes_from_log(frames: np.ndarray, actions: np.ndarray, proprio: np.ndarray, success: np.ndarray,
                      instruction: str, camera: str, meta: dict) -> list[Episode]:
    """Cut one log into episodes at the evaluation task's successes (module doc). success: (T + 1,), the
    success of the state before each step and of the state after the last one."""
    T = len(actions)
    if len(success) != T + 1 or len(frames) != T or len(proprio) != T:
        raise ValueError(f"a log of {T} steps needs {T} frames and states and {T + 1} success flags, got "
                         f"{len(frames)}, {len(proprio)} and {len(success)}")
    out: list[Episode] = []

    def emit(start: int, stop: int, reached: bool) -> None:
        rewards = np.zeros(stop - start, np.float32)
        if reached:
            rewards[-1] = 1.0
        out.append(Episode(images={camera: frames[start:stop]}, actions=actions[start:stop], instruction=instruction,
                           state=proprio[start:stop], rewards=rewards, success=reached, terminated=reached,
                           meta={**meta, "piece": len(out), "log_step": start, "action_names": ACTION_NAMES}))

    start = None
    for t in range(T):
        if success[t]:              # already at the goal: the episode would have ended; not logged
            start = None
            continue
        if start is None:
            start = t
        if success[t + 1]:          # this step reaches the goal: reward 1, terminal
            emit(start, t + 1, True)
            start = None
    if start is not None:
        emit(start, T, False)
    return out


def play_episodes(task: str, seed: int, image_size: int = 64, max_steps: int = 0,
                  kind: str = "play") -> list[Episode]:
    """One play (or noisy) log of `task` (an ogbench/<name> task), collected with the upstream generator's
    settings and cut into episodes of the task's evaluation problem."""
    from qsft_robot.sim.collect import OGBENCH_LOGS
    if kind not in OGBENCH_LOGS:
        raise ValueError(f"OGBench logs are {' or '.join(OGBENCH_LOGS)}, not {kind!r}")
    if not task.startswith(PREFIX):
        raise ValueError(f"--quality {kind} is OGBench's {kind} data: it needs an ogbench/<name> task, not {task!r}")
    spec = parse_name(task)
    log = play_log(spec, seed, image_size, max_steps or PLAY_STEPS, kind)
    success = success_mask(spec, log["qpos"], log.get("button_states"))
    from qsft_robot.sim.ogbench_tasks import OGBenchTask
    eps = episodes_from_log(log["frames"], log["actions"], log["proprio"], success,
                            instruction_for(spec, int(_relabel_env(spec).unwrapped._reward_task_id)),
                            OGBenchTask.camera, {"seed": seed, "source": f"ogbench {kind} ({spec.play_env_id})",
                                                 "state_names": PROPRIO_NAMES})
    return eps


def episodes_from_npz(task: str, path: str | Path) -> list[Episode]:
    """An upstream OGBench dataset file (e.g. visual-cube-single-play-v0.npz) as episodes of `task`'s evaluation
    problem, read by ogbench's own loader (`ogbench.load_dataset`, with qpos and button states) and relabelled
    by its `relabel_dataset`: what `make_env_and_datasets(<task>, dataset_path=path)` runs for a single-task
    name, without its requirement that the companion `-val.npz` file exists. The frames are the file's
    (upstream renderer): evaluate on `<task>@upstream`."""
    import ogbench

    spec = parse_name(task)
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such OGBench dataset file")
    try:
        data = ogbench.load_dataset(str(path), ob_dtype=np.uint8, compact_dataset=True, add_info=True)
    except KeyError as e:
        raise DatasetError(f"{path}: not an OGBench dataset (missing {e}; expected observations, actions, "
                           "terminals and qpos)") from e
    if "qpos" not in data:
        raise DatasetError(f"{path}: no qpos: the evaluation task's success cannot be judged without it")
    frames = data["observations"]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise DatasetError(f"{path}: observations of shape {frames.shape} are not frames; the state-based "
                           f"datasets are not read here (the tasks learn from pixels)")
    success = success_mask(spec, data["qpos"], data.get("button_states"))
    u = _relabel_env(spec).unwrapped
    scratch = mujoco.MjData(u._model)
    ends = np.flatnonzero(data["valids"] == 0)   # the last step of every trajectory: no next state
    instruction = instruction_for(spec, int(u._reward_task_id))
    out: list[Episode] = []
    start = 0
    for k, end in enumerate(ends):
        sl = slice(start, end)
        proprio = np.stack([proprio_from_qpos(u, q, scratch) for q in data["qpos"][sl]]) \
            if end > start else np.zeros((0, len(PROPRIO_NAMES)), np.float32)
        out += episodes_from_log(frames[sl], data["actions"][sl].astype(np.float32), proprio,
                                 success[start:end + 1], instruction, "front_pixels",
                                 {"seed": k, "source": f"{path.name} trajectory {k}", "state_names": PROPRIO_NAMES})
        start = end + 1
    logger.info("%s: %d trajectories, %d episodes (%d successful) for %s", path, len(ends), len(out),
                sum(e.success for e in out), spec.env_id)
    return out
