"""Accept an upstream `lerobot` LeRobotDataset object (optional: lerobot pins its own torch, docs/data.md).

The adapter reads the dataset's local folder with our own reader rather than iterating the object:
that keeps one decoding path (and its error messages) for both, and needs no lerobot import here.
"""
from __future__ import annotations

from pathlib import Path

from qsft_robot.data.episode import DatasetError, Episode
from qsft_robot.data.lerobot_reader import read_lerobot


def episodes_from_lerobot_dataset(dataset, **kw) -> list[Episode]:
    root = getattr(dataset, "root", None) or getattr(getattr(dataset, "meta", None), "root", None)
    if root is None or not (Path(root) / "meta" / "info.json").is_file():
        raise DatasetError("expected a LeRobotDataset with a local `root` folder (download it first; this "
                           "library never fetches from a hub)")
    episodes, _ = read_lerobot(root, **kw)
    wanted = getattr(dataset, "episodes", None)  # LeRobotDataset(episodes=[...]) selects a subset
    if wanted:
        keep = set(int(e) for e in wanted)
        episodes = [e for e in episodes if e.meta.get("episode_index") in keep]
    return episodes
