"""Roll out scripted experts and write a LeRobot v3.0 dataset (sparse reward 1 on the success step)."""
from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm import tqdm

from qsft_robot.data.episode import Episode

logger = logging.getLogger(__name__)
FPS = 10
# play / noisy: the upstream generator's two dataset types (sim/ogbench_play.py); expert: cube-single's oracle
OGBENCH_QUALITIES = ("play", "noisy", "expert")
OGBENCH_LOGS = ("play", "noisy")


def fps_for(task: str) -> int:
    """Frames per second of a task's logs (LeRobot metadata): OGBench controls at 20 Hz, the others at 10."""
    return 20 if task.startswith("ogbench/") else FPS


def check_quality(task: str, quality: str) -> None:
    """Refuse a task/quality pair that cannot be collected, before any worker starts."""
    if task.startswith("ogbench/") and quality not in OGBENCH_QUALITIES:
        raise ValueError(f"{task}: OGBench data comes as --quality play or noisy (the upstream generator's random-task "
                         f"logs, by plan or Markov oracles) or expert (cube-single only), not {quality!r}")
    if quality in OGBENCH_LOGS and not task.startswith("ogbench/"):
        raise ValueError(f"--quality {quality} is OGBench's {quality} data: it needs an ogbench/<name> task, "
                         f"not {task!r}")


def rollout_expert(task: str, seed: int, quality: str, image_size: int) -> Episode:
    from qsft_robot.sim.experts import make_expert
    from qsft_robot.sim.registry import make_task

    env = make_task(task, image_size=image_size)
    obs, _ = env.reset(seed=seed)
    expert = make_expert(env, quality, seed=seed + 7919)
    degradation = expert.reset()
    part = degradation.get("segment")  # segmented presets log the head or the tail of the run only
    frames, states, actions, rewards = [], [], [], []
    terminated = False
    while True:
        cut = part is not None and expert.cut_reached()
        a = expert.stop_action() if part == "head" and cut else expert.act()
        step = (obs, a, None if part is None else [float(x) for x in env.robot_position])
        obs, r, terminated, truncated, info = env.step(a)
        if part == "tail" and not cut and not terminated:  # the run before a tail's cut is not logged ...
            if truncated:
                raise RuntimeError(f"{task} seed {seed}: the run timed out before its cut; no tail to log")
            continue
        # ... unless it met the goal first (noise can carry it past the cut): then the tail is its last step
        if not frames and part is not None:  # where a segment's log starts (the data is judged by it)
            degradation["start_position"] = step[2]
        frames.append(step[0]["images"][env.camera])
        states.append(step[0]["state"])
        actions.append(step[1].astype(np.float32))
        rewards.append(r)
        if terminated or truncated or (part == "head" and cut):  # a head stops at its cut: the log ends
            break
    success = bool(info["success"])
    if part in ("head", "whole") and success:  # met the goal on its way elsewhere: the log stops short of it
        frames, states, actions, rewards = frames[:-1], states[:-1], actions[:-1], rewards[:-1]
        success = terminated = False
    if part == "head":
        degradation["cut_at"] = expert.cut_at
    env.close()
    return Episode(images={env.camera: np.stack(frames)}, actions=np.stack(actions), instruction=env.instruction,
                   state=np.stack(states), rewards=np.asarray(rewards, np.float32), success=success,
                   terminated=terminated, meta={"seed": seed, **degradation})


def rollout(task: str, seed: int, quality: str, image_size: int, max_steps: int = 0) -> list[Episode]:
    """The episodes of one seed: one scripted rollout, or for `play` one OGBench play log cut into the
    episodes of the task's evaluation problem (sim/ogbench_play.py). max_steps: the play log's length
    (0: 1001, as upstream); the other qualities keep the task's own limit."""
    if quality in OGBENCH_LOGS:
        from qsft_robot.sim.ogbench_play import play_episodes
        return play_episodes(task, seed, image_size, max_steps, quality)
    return [rollout_expert(task, seed, quality, image_size)]


def _chunk(args):
    task, seeds, quality, image_size, max_steps = args
    return [rollout(task, s, quality, image_size, max_steps) for s in seeds]


def collect_episodes(task: str, episodes: int, quality: str = "mixed", seed: int = 0, image_size: int = 64,
                     workers: int = 1, max_steps: int = 0) -> list[Episode]:
    """`episodes` seeds from `seed` on; a play seed is one log and gives one episode or more (it is cut at the
    evaluation task's successes), so the list can be longer than `episodes`."""
    check_quality(task, quality)
    seeds = list(range(seed, seed + episodes))
    out: list[Episode] = []
    unit = "log" if quality in OGBENCH_LOGS else "ep"
    with tqdm(total=episodes, desc=f"collect {task} ({quality})", unit=unit) as bar:
        if workers <= 1:
            for s in seeds:
                out += rollout(task, s, quality, image_size, max_steps)
                bar.update(1)
        else:
            chunks = [seeds[i::workers * 4] for i in range(workers * 4)]
            import multiprocessing as mp

            # spawn, not fork: a forked child inherits the parent's EGL/OpenGL state and can deadlock
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                for logs in pool.map(_chunk, [(task, c, quality, image_size, max_steps) for c in chunks if c]):
                    for eps in logs:
                        out += eps
                    bar.update(len(logs))
            out.sort(key=lambda e: (e.meta["seed"], e.meta.get("piece", 0)))
    if not out:
        raise RuntimeError(f"{task}: the {episodes} {quality} logs gave no episodes (every step was already "
                           "at the evaluation task's goal)")
    rate = np.mean([e.success for e in out])
    logger.info("collected %d episodes of %s: success rate %.2f", len(out), task, rate)
    return out
