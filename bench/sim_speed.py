"""Render fps and env steps/s per task on this machine, expert success rates, one example frame per
task (PNG), all in one run.

    python bench/sim_speed.py [--episodes 20]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, machine, table  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=20)
    a = ap.parse_args()
    import cv2
    import numpy as np

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


if __name__ == "__main__":
    main()
