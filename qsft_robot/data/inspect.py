"""`qsft-robot data inspect`: what a dataset holds and what is wrong with it, before training."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from qsft_robot.data.episode import DatasetError
from qsft_robot.data.sources import open_dataset


def inspect_dataset(path: str | Path, format: str = "auto", instruction: str = "") -> dict:
    ds = open_dataset(path, format, instruction=instruction)
    eps = ds.episodes()
    problems: list[str] = []
    if not eps:
        raise DatasetError(f"{path}: no episodes")
    acts = np.concatenate([e.actions for e in eps])
    lengths = [len(e) for e in eps]
    succ = [e.success for e in eps]
    cams = {c: eps[0].images[c].shape[1:] for c in eps[0].images}
    if not any(succ) and all(e.rewards is None or not np.any(e.rewards) for e in eps):
        problems.append("no successful episode and no non-zero reward: set data.reward to label rewards")
    if any(np.ptp(acts[:, d]) == 0 for d in range(acts.shape[1])):
        problems.append("some action dimensions are constant")
    if not any(e.instruction for e in eps):
        problems.append("no instruction in the data: set data.instruction")
    report = {"path": str(path), "format": ds.label, "format_key": ds.format, "episodes": len(eps),
              "frames": int(sum(lengths)),
              "length": {"min": min(lengths), "mean": float(np.mean(lengths)), "max": max(lengths)},
              "cameras": {c: list(s) for c, s in cams.items()},
              "action_dims": int(acts.shape[1]),
              "action_q01": np.quantile(acts, 0.01, 0).round(4).tolist(),
              "action_q99": np.quantile(acts, 0.99, 0).round(4).tolist(),
              "success_rate": float(np.mean(succ)), "instructions": sorted({e.instruction for e in eps})[:10],
              "problems": problems}
    text = [f"{report['path']}: {ds.label}, {len(eps)} episodes, cameras: {', '.join(cams)}",
            f"frames {report['frames']}, length min/mean/max {min(lengths)}/{np.mean(lengths):.1f}/{max(lengths)}",
            "camera shapes: " + ", ".join(f"{c} {tuple(s)}" for c, s in cams.items()),
            f"actions: {report['action_dims']} dims, q01 {report['action_q01']}, q99 {report['action_q99']}",
            f"success rate {report['success_rate']:.2f}", "instructions: " + "; ".join(report["instructions"]),
            "problems: " + ("none" if not problems else "; ".join(problems))]
    report["text"] = "\n".join(text)
    return report
