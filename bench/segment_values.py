"""Q of the logged actions of a 'segments' dataset, by kind of log: does a value backup stitch?

On 'segments' data (sim/experts.py) no log goes from an evaluation start to the goal: heads run from a
start to a cut and stop there, tails run from a cut to the red object, whole logs go for another object.
A backup that stitches gives the first action of a head for the red object (which ends where tails
begin) a value well above that of a head for another object; return-to-go values every head at 0. The
dataset's logs carry no labels, so the kinds come from collecting the same seeds again (collection is
deterministic per seed; only frames are re-rendered, at a small size).

    python bench/segment_values.py RUN [RUN ...] --task base_goto_red --data OUT/base_goto_red/dataset
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402

from qsft_robot.algo.qvalues import logged_q_values  # noqa: E402


def logged_q(policy, ep, frames: list[int]) -> np.ndarray:
    """Q of the logged action at `frames` (algo.critic: p_theta / pi_beta, or the bin's sigmoid), averaged over
    its tokens."""
    cam = sorted(ep.images)[0]
    tokens = policy.action_tokenizer.encode(ep.actions[frames])
    q, _ = logged_q_values(policy, ep.images[cam][frames][:, None], [ep.instruction] * len(frames), ep.state[frames],
                           tokens)
    return q.mean(-1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="Q-SFT runs or checkpoints trained on the dataset")
    ap.add_argument("--task", required=True)
    ap.add_argument("--data", required=True, help="the 'segments' dataset (collected with seed 0)")
    a = ap.parse_args()
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.data.sources import open_dataset
    from qsft_robot.sim.collect import collect_episodes

    episodes = open_dataset(a.data).episodes()
    kinds = [f"{e.meta['segment']} for {'another object' if e.meta['wrong_target'] else 'red'}"
             for e in collect_episodes(a.task, len(episodes), "segments", seed=0, image_size=16)]
    order = sorted(set(kinds))
    rows = []
    for run in a.runs:
        policy = load_policy(run)
        first = {k: [] for k in order}
        for ep, kind in zip(episodes, kinds):
            first[kind].append(float(logged_q(policy, ep, [0])[0]))
        rows.append([run, *(f"{np.mean(first[k]):.3f} ({len(first[k])})" for k in order)])
    table(f"Q of the first logged action by kind of log ({a.task}, segments data)", ["run", *order], rows)


if __name__ == "__main__":
    main()
