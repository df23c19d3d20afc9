"""Which transitions make the batch of a training step: a pure function of (seed, step), so a resumed
run draws the same batches without saved loader state."""
from __future__ import annotations

import numpy as np
import torch

from qsft_robot.config import ConfigError
from qsft_robot.data.transitions import Transitions

def batch_indices(seed: int, step: int, n: int, batch_size: int, probs: np.ndarray | None = None) -> np.ndarray:
    """The batch of a step is a pure function of (seed, step): resume needs no loader state.
    `probs` (n,): per-transition sampling probabilities (train.sampling=episode); uniform when None."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n, size=batch_size) if probs is None else rng.choice(n, size=batch_size, p=probs)


def sampling_probs(episode: np.ndarray, mode: str, stride: int = 1) -> np.ndarray | None:
    """train.sampling: "frame" (uniform over transitions) or "episode" (every episode the same total
    probability, spread over its frames); with `stride` s > 1 (data.decision_stride) only the steps 0, s, 2s, ...
    of each episode are drawn.

    Why "episode": in mixed-quality logs the failures are the long episodes (a time-out runs the full
    limit, a success stops when it is done: 30 vs ~5 steps on arm_reach_red), so uniform frames give
    the Q model batches of ~90% failed-episode frames, most of them the robot idling at the wrong
    object. Weighting by episode rather than by frame is the trajectory weighting of Hong et al.,
    "Harnessing Mixed Offline RL Datasets via Trajectory Weighting" (ICLR 2023) with equal weights.
    """
    if mode not in ("frame", "episode"):
        raise ConfigError(f"train.sampling must be 'frame' or 'episode', got {mode!r}")
    if mode == "frame" and stride == 1:
        return None
    _, first, inverse = np.unique(episode, return_index=True, return_inverse=True)
    drawn = (np.arange(len(episode)) - first[inverse]) % stride == 0
    counts = np.bincount(inverse, weights=drawn)
    p = drawn / (counts[inverse] if mode == "episode" else 1.0)
    return p / p.sum()


def _identity(x):
    return x


class StepBatches(torch.utils.data.Dataset):
    """Item k = the frames of training step start + k, read from the image store (for workers)."""

    def __init__(self, data: Transitions, seed: int, batch_size: int, start: int, end: int,
                 probs: np.ndarray | None = None):
        self.data, self.seed, self.batch_size, self.start, self.end = data, seed, batch_size, start, end
        self.probs = probs

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, k: int):
        idx = batch_indices(self.seed, self.start + k, len(self.data), self.batch_size, self.probs)
        return idx, self.data.images[idx], self.data.images[self.data.bootstrap_index[idx]]


def prefetcher(data: Transitions, seed: int, batch_size: int, start: int, end: int, probs, num_workers: int):
    """An iterator over the frames of steps start..end read by `num_workers` DataLoader workers; None
    without workers (the step then reads its frames itself)."""
    if num_workers <= 0:
        return None
    return iter(torch.utils.data.DataLoader(StepBatches(data, seed, batch_size, start, end, probs),
                                            batch_size=None, num_workers=num_workers, collate_fn=_identity,
                                            prefetch_factor=2))
