"""Does a shorter horizon let the critic learn the reach on OGBench's noisy logs? The cheapest horizon reduction:
one decision held for k env steps. The benchmark's noisy task-1 dataset is cut into k-step macro steps (the frame
and state at the window's start, the mean of its k logged actions, reward 1 when the window reaches the goal),
BC and the critic train on it with the product's CLI, and the evaluation holds each action for k env steps.
docs/ogbench.md ("What the noisy logs ask of a critic") has the numbers and the training commands.

    python bench/ogbench_macro_steps.py dataset SRC DST --k 5
    python bench/ogbench_macro_steps.py probe BC_RUN [Q_RUN ...] --k 5

Why the mean action stands in for the window: OGBench's arm actions are deltas from the gripper's current pose
(set_control: target = effector pose + action), so k steps of the mean move the gripper about as far as the k
logged steps did; the noise and the 10% random actions of the logs average out. A decision over k steps is an
action chunk whose k actions are equal: the backup spans k steps per bootstrap and one choice moves the value k
times as far, which is the point of the test.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def macro_episode(ep, k: int):
    """The episode in windows of k steps (the last one shorter)."""
    from qsft_robot.data.episode import Episode

    starts = np.arange(0, len(ep), k)
    actions = np.stack([ep.actions[s:s + k].mean(0) for s in starts]).astype(np.float32)
    rewards = np.array([ep.rewards[s:s + k].max() for s in starts], np.float32)
    return Episode(images={c: f[starts] for c, f in ep.images.items()}, actions=np.clip(actions, -1, 1),
                   instruction=ep.instruction, state=ep.state[starts], rewards=rewards, success=ep.success,
                   terminated=ep.terminated, meta={**ep.meta, "macro_steps": k})


def write_dataset(src: Path, dst: Path, k: int) -> None:
    from ogbench_noisy_mixture import write_derived_dataset

    write_derived_dataset(src, dst, lambda ep: macro_episode(ep, k), 1 / k, f" in windows of {k}")


def hold_actions(k: int) -> None:
    """Every OGBench task's step holds its action for k env steps (stopping where the episode ends)."""
    from qsft_robot.sim.ogbench_tasks import OGBenchTask

    step = OGBenchTask.step

    def held(self, action):
        for _ in range(k):
            out = step(self, action)
            if out[2] or out[3]:
                break
        return out
    OGBenchTask.step = held


def probe(a) -> None:
    from ogbench_noisy_mixture import probe_and_evaluate

    probe_and_evaluate(a.bc, a.critics, a.episodes, f"eval_hold{a.k}", f"each action held for {a.k} env steps",
                       before_eval=lambda: hold_actions(a.k))   # the probes step once per state, the closed loop k


if __name__ == "__main__":
    from ogbench_noisy_mixture import dataset_probe_cli

    dataset_probe_cli(lambda a: write_dataset(a.src, a.dst, a.k), probe,
                      lambda p: p.add_argument("--k", type=int, default=5, help="env steps per decision"))
