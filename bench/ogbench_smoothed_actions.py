"""Is it the logs' per-step noise that keeps a chunked critic from ranking the reach? The benchmark's noisy task-1
dataset with every logged action replaced by the centred moving average of the w actions around it (within its log),
so the operator's per-step Gaussian noise and its 10% random actions shrink while the motion stays; chunked BC and
critics then train on it with the product's CLI (docs/ogbench.md, "Action chunks", has the numbers and commands).

    python bench/ogbench_smoothed_actions.py dataset SRC DST --window 5

Why a diagnostic and not a product option: smoothing rewrites what the operator did, so the critic values actions
nobody took; it answers whether noise is the obstacle, which decides what a product change should be.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def smoothed_episode(ep, window: int):
    from qsft_robot.data.episode import Episode

    kernel = np.ones(window) / window
    pad = window // 2
    padded = np.pad(ep.actions, ((pad, window - 1 - pad), (0, 0)), mode="edge")
    actions = np.stack([np.convolve(padded[:, d], kernel, mode="valid") for d in range(ep.actions.shape[1])], 1)
    return Episode(images=ep.images, actions=actions.astype(np.float32), instruction=ep.instruction, state=ep.state,
                   rewards=ep.rewards, success=ep.success, terminated=ep.terminated,
                   meta={**ep.meta, "smoothed_window": window})


if __name__ == "__main__":   # the runs on it are probed with ogbench_noisy_mixture.py --bc / --critic
    from ogbench_noisy_mixture import dataset_probe_cli, write_derived_dataset

    dataset_probe_cli(lambda a: write_derived_dataset(a.src, a.dst, lambda ep: smoothed_episode(ep, a.window),
                                                      what=f", actions averaged over {a.window}"),
                      add_args=lambda p: p.add_argument("--window", type=int, default=5,
                                                        help="actions averaged per step"))
