"""Does a trained policy *see* where the target is? Direction agreement with a noise-free expert.

Why this exists: closed-loop success mixes vision, control and value learning; when every method
fails on a task, this separates "the model never learned where the block is" from "Q-SFT picked the
wrong action". Train on a dataset (any algo, any --set), then on held-out start states follow a
noise-free expert for a few steps and count how often the policy's x/y action has the expert's sign
where the expert moves decisively (|a| > 0.5). Chance is 0.5.

    python bench/vision_probe.py DATASET --out outputs/probe --algo filtered_bc --steps 400 \
        [--set model.freeze_vision=true ...] [--task arm_reach_red]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np


def sign_agreement(policy, task: str, starts: int = 50, steps: int = 3, seed: int = 7000) -> tuple[float, int]:
    from qsft_robot.sim.experts import Quality, ScriptedExpert
    from qsft_robot.sim.registry import make_task

    envs = [make_task(task, image_size=64) for _ in range(starts)]
    obs, experts = [], []
    for i, env in enumerate(envs):
        obs.append(env.reset(seed=seed + i)[0])
        experts.append(ScriptedExpert(env, Quality(0.0, 0.0, 0.0), seed=0))
        experts[-1].reset()
    agree = []
    for _ in range(steps):
        acts = policy.act(np.stack([[o["images"][e.camera]] for o, e in zip(obs, envs)]),
                          [o["instruction"] for o in obs], np.stack([o["state"] for o in obs]))
        for i, (env, a) in enumerate(zip(envs, acts)):
            b = experts[i].act()
            agree += [np.sign(a[d]) == np.sign(b[d]) for d in (0, 1) if abs(b[d]) > 0.5]
            obs[i] = env.step(b)[0]  # follow the expert: the probe asks about perception, not recovery
    for env in envs:
        env.close()
    return float(np.mean(agree)), len(agree)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--algo", default="filtered_bc")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--task", default="arm_reach_red")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.benchmark import BASE_SETS, _train

    ckpt, secs = _train(Path(a.data), Path(a.out), a.algo, a.steps, 0, [*BASE_SETS, *a.sets])
    acc, n = sign_agreement(load_policy(ckpt), a.task)
    half = 1.96 * (0.25 / n) ** 0.5
    print(f"| {a.algo} {a.steps} steps {' '.join(a.sets)} | sign agreement {acc:.3f} (chance 0.5 +- {half:.3f}, "
          f"n={n}) | train {secs:.0f} s |")


if __name__ == "__main__":
    main()
