"""In-memory episode: the common currency between readers, writers, collection and training."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DatasetError(ValueError):
    """A dataset file is missing, corrupt or inconsistent; the message names file and episode."""


@dataclass
class Episode:
    images: dict[str, np.ndarray]        # cam -> (T, H, W, 3) uint8 RGB
    actions: np.ndarray                  # (T, D) float32
    instruction: str
    state: np.ndarray | None = None      # (T, S) float32
    rewards: np.ndarray | None = None    # (T,) float32, reward after each action
    success: bool = False
    terminated: bool = False             # last step ends the task (success/failure), not a time limit
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def validate(self, where: str = "") -> None:
        T = len(self)
        if T == 0:
            raise DatasetError(f"{where}: empty episode")
        for cam, frames in self.images.items():
            if frames.shape[0] != T:
                raise DatasetError(f"{where}: camera '{cam}' has {frames.shape[0]} frames but {T} actions")
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise DatasetError(f"{where}: camera '{cam}' must be (T, H, W, 3) uint8, got "
                                   f"{frames.shape} {frames.dtype}")
        if self.state is not None and self.state.shape[0] != T:
            raise DatasetError(f"{where}: state has {self.state.shape[0]} rows but {T} actions")
        if self.rewards is not None and self.rewards.shape[0] != T:
            raise DatasetError(f"{where}: rewards have {self.rewards.shape[0]} rows but {T} actions")
        bad = ~np.isfinite(self.actions)
        if bad.any():
            raise DatasetError(f"{where}: {int(bad.any(1).sum())} frames with NaN/inf actions "
                               f"(first at frame {int(np.argwhere(bad)[0, 0])})")


def drop_nonfinite_frames(ep: Episode, where: str, log) -> Episode:
    """Opt-in: drop frames with NaN/inf actions (and say how many) instead of failing."""
    keep = np.isfinite(ep.actions).all(1)
    if keep.all():
        return ep
    log.warning("%s: dropped %d frames with NaN/inf actions", where, int((~keep).sum()))
    ep.images = {k: v[keep] for k, v in ep.images.items()}
    ep.actions = ep.actions[keep]
    ep.state = None if ep.state is None else ep.state[keep]
    ep.rewards = None if ep.rewards is None else ep.rewards[keep]
    return ep


def common_action_names(episodes: list[Episode]) -> list[str] | None:
    """The action names every episode's dataset gave (Episode.meta["action_names"]), for the action tokenizer
    to record in a checkpoint; None when any episode has none or two datasets disagree."""
    names = {tuple(e.meta["action_names"]) if e.meta.get("action_names") else None for e in episodes}
    if len(names) != 1 or None in names:
        return None
    return list(names.pop())
