"""`qsft-robot data inspect`: what a dataset holds and what is wrong with it, before training.

The report comes from the episode tables (actions, lengths, success, instructions) and the declared camera
shapes, one episode at a time, without decoding video: it is the first thing run on a new log, so its
time and memory must not grow with the hours of video in it. `decode=True` adds a streamed pass that
decodes every frame and names each episode whose frames cannot be had.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qsft_robot.data.episode import DatasetError
from qsft_robot.data.sources import Dataset, open_dataset

logger = logging.getLogger(__name__)


def inspect_dataset(path: str | Path, format: str = "auto", instruction: str = "", decode: bool = False) -> dict:
    ds = open_dataset(path, format, instruction=instruction)
    actions, lengths, succ, instructions = [], [], [], set()
    any_reward, first_shapes = False, None
    for e in tqdm(ds.iter_episodes(images=False), desc="inspect", unit="ep", disable=None):
        if first_shapes is None:  # formats read with their frames (HDF5): the first episode's shapes
            first_shapes = {c: tuple(v.shape[1:]) for c, v in e.images.items()}
        actions.append(e.actions)
        lengths.append(len(e))
        succ.append(e.success)
        instructions.add(e.instruction)
        any_reward = any_reward or (e.rewards is not None and bool(np.any(e.rewards)))
    problems: list[str] = []
    if not lengths:
        raise DatasetError(f"{path}: no episodes")
    acts = np.concatenate(actions)
    cams = ds.camera_shapes() if ds.streamable else first_shapes
    if not any(succ) and not any_reward:
        problems.append("no successful episode and no non-zero reward: set data.reward to label rewards")
    if any(np.ptp(acts[:, d]) == 0 for d in range(acts.shape[1])):
        problems.append("some action dimensions are constant")
    if not any(instructions):
        problems.append("no instruction in the data: set data.instruction")
    report = {"path": str(path), "format": ds.label, "format_key": ds.format, "episodes": len(lengths),
              "frames": int(sum(lengths)),
              "length": {"min": min(lengths), "mean": float(np.mean(lengths)), "max": max(lengths)},
              "cameras": {c: list(s) for c, s in cams.items()},
              "action_dims": int(acts.shape[1]),
              "action_q01": np.quantile(acts, 0.01, 0).round(4).tolist(),
              "action_q99": np.quantile(acts, 0.99, 0).round(4).tolist(),
              "success_rate": float(np.mean(succ)), "instructions": sorted(instructions)[:10],
              "problems": problems}
    text = [f"{report['path']}: {ds.label}, {len(lengths)} episodes, cameras: {', '.join(cams)}",
            f"frames {report['frames']}, length min/mean/max {min(lengths)}/{np.mean(lengths):.1f}/{max(lengths)}",
            "camera shapes: " + ", ".join(f"{c} {tuple(s)}" for c, s in cams.items()),
            f"actions: {report['action_dims']} dims, q01 {report['action_q01']}, q99 {report['action_q99']}",
            f"success rate {report['success_rate']:.2f}", "instructions: " + "; ".join(report["instructions"])]
    if decode:
        report["decoded"] = check_frames(ds, cams, problems)
        d = report["decoded"]
        text.append(f"decoded {d['frames']} frames of {d['episodes']} episodes in {d['seconds']:.1f} s "
                    f"({d['frames_per_s']:.0f} frames/s)")
    text.append("problems: " + ("none" if not problems else "; ".join(problems)))
    report["text"] = "\n".join(text)
    return report


def check_frames(ds: Dataset, cams: dict[str, tuple], problems: list[str]) -> dict:
    """Decode every frame, one episode at a time, and add a problem for each episode whose frames are
    unreadable or not of the declared shape; returns what was decoded and how fast."""
    t0 = time.perf_counter()
    frames = episodes = 0
    for e, ep in tqdm(_episodes_or_errors(ds), desc="decode", unit="ep", disable=None):
        if isinstance(ep, DatasetError):
            problems.append(str(ep))
            continue
        episodes += 1
        frames += len(ep) * len(ep.images)
        for c, v in ep.images.items():
            if tuple(v.shape[1:]) != tuple(cams.get(c, ())):
                problems.append(f"episode {e}: camera '{c}' decodes to {tuple(v.shape[1:])}, declared "
                                f"{tuple(cams.get(c, ()))}")
    seconds = time.perf_counter() - t0
    logger.info("decoded %d frames of %d episodes in %.1f s", frames, episodes, seconds)
    return {"episodes": episodes, "frames": frames, "seconds": seconds, "frames_per_s": frames / max(seconds, 1e-9)}


def _episodes_or_errors(ds: Dataset):
    """(index, Episode or the DatasetError it raised): a broken episode does not hide the ones after it.
    Other formats than LeRobot are read as a whole and stop at their first error."""
    if not ds.streamable:
        try:
            yield from enumerate(ds.iter_episodes())
        except DatasetError as err:
            yield -1, err
        return
    from qsft_robot.data.lerobot_reader import LeRobotReader

    reader = LeRobotReader(ds.detected.path, cameras=ds.cameras)
    try:
        for em in reader.metas:
            try:
                yield em["episode_index"], reader.episode(em, images=True, drop_nonfinite=ds.drop_nonfinite)
            except DatasetError as err:
                yield em["episode_index"], err
    finally:
        reader.close()
