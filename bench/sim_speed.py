"""Render fps and env steps/s per task on this machine, expert success rates, one example frame per
task (PNG), all in one run; with Meta-World installed, its render settings per camera as well (the
measurement behind sim/metaworld_tasks.py's choices).

    python bench/sim_speed.py [--episodes 20] [--metaworld | --metaworld-only]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
from common import OUT, machine, table, timeit  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--metaworld", action="store_true", help="also Meta-World's render settings and tasks")
    ap.add_argument("--metaworld-only", action="store_true")
    a = ap.parse_args()
    if a.metaworld or a.metaworld_only:
        metaworld_tables(a.episodes)
    if a.metaworld_only:
        return
    import cv2

    from qsft_robot.sim.collect import rollout_expert
    from qsft_robot.sim.registry import TASKS, make_task

    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in sorted(TASKS):
        env = make_task(name)
        env.reset(seed=0)
        t = time.perf_counter()
        for _ in range(100):
            env.render(64)
        fps64 = 100 / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(50):
            env.render(224)
        fps224 = 50 / (time.perf_counter() - t)
        env.reset(seed=1)
        t, n = time.perf_counter(), 0
        for _ in range(100):
            _, _, term, trunc, _ = env.step(np.zeros(env.action_dim))
            n += 1
            if term or trunc:
                env.reset(seed=n)
        sps = n / (time.perf_counter() - t)  # including the 64x64 observation render
        cv2.imwrite(str(OUT / f"frame_{name}.png"), env.render(224)[..., ::-1])
        wins = {q: sum(rollout_expert(name, s, q, 64).success for s in range(a.episodes)) / a.episodes
                for q in ("expert", "mixed")}
        rows.append([name, f"{fps64:.0f}", f"{fps224:.0f}", f"{sps:.0f}", f"{wins['expert']:.2f}",
                     f"{wins['mixed']:.2f}", str(OUT / f"frame_{name}.png")])
    table(f"MuJoCo tasks — {machine()}", ["task", "render fps 64px", "render fps 224px", "env steps/s",
                                           "expert success", "mixed success", "example frame"], rows)


def _render_ms(renderer, data, camera: str) -> float:
    def frame():
        renderer.update_scene(data, camera=camera)
        renderer.render()
    return timeit(frame, repeat=20, warmup=3) * 1e3


def metaworld_tables(episodes: int) -> None:
    """Render cost per camera with Meta-World's default scene flags vs shadows and reflections off (the
    ratio is what the task's renderer saves), then the benchmark tasks' steps/s and expert success."""
    import cv2
    import mujoco

    from qsft_robot.sim.collect import rollout_expert
    from qsft_robot.sim.registry import make_task

    OUT.mkdir(parents=True, exist_ok=True)
    env = make_task("metaworld/button-press-topdown-v3")
    env.reset(seed=0)
    rows = []
    for camera in ("corner2", "topview", "behindGripper", "gripperPOV"):
        r = mujoco.Renderer(env.env.model, 64, 64)
        full = _render_ms(r, env.env.data, camera)
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        light = _render_ms(r, env.env.data, camera)
        rows.append([camera, f"{full:.1f}", f"{light:.1f}", f"{full / light:.2f}"])
        r.close()
    env.close()
    table(f"Meta-World render, 64 px — {machine()}", ["camera", "ms default flags", "ms no shadow/reflection",
                                                      "speed-up"], rows)
    rows = []
    for name in ("metaworld/button-press-topdown-v3", "metaworld/drawer-open-v3", "metaworld/push-v3"):
        t = time.perf_counter()
        eps = [rollout_expert(name, s, "expert", 64) for s in range(episodes)]
        steps = sum(len(e.actions) for e in eps)
        frame = OUT / f"frame_{name.replace('/', '_')}.png"
        env = make_task(name)
        cv2.imwrite(str(frame), env.reset(seed=0)[0]["images"]["corner2"][..., ::-1])
        env.close()
        rows.append([name, f"{steps / (time.perf_counter() - t):.0f}", f"{np.mean([e.success for e in eps]):.2f}",
                     f"{np.mean([len(e.actions) for e in eps]):.0f}", str(frame)])
    table("Meta-World tasks (corner2, 64 px, scripted expert)", ["task", "steps/s incl. render", "expert success",
                                                                 "mean length", "example frame"], rows)


if __name__ == "__main__":
    main()
