"""Closed-loop evaluation in MuJoCo: batched over parallel envs, seeded, with videos, plots and JSON."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qsft_robot.data.video import write_mp4
from qsft_robot.sim.registry import make_task

logger = logging.getLogger(__name__)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: honest at 0% / 100% and small n, unlike the normal approximation."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _plans(policy, images, instructions: list[str], states, action_steps: int) -> np.ndarray:
    """(N, steps, D): the env steps each env runs before the next decision: a chunked policy's first `action_steps`
    of its chunk (0: all), another policy's one action."""
    if getattr(policy, "chunk", 1) > 1:
        return policy.act_chunk(images, instructions, states)[:, :action_steps or None]
    return policy.act(images, instructions, states)[:, None]


def evaluate(policy, task: str, episodes: int = 20, seed: int = 1000, num_envs: int = 10, videos: int = 2,
             out_dir: str | Path | None = None, image_size: int = 64, max_steps: int = 0,
             label: str = "policy", action_steps: int = 0) -> dict:
    """policy: any object with act(images (N, cams, H, W, 3), instructions, states) -> (N, D); one with
    act_chunk(...) -> (N, k, D) (a chunked checkpoint) runs `action_steps` of each chunk (0: all) between decisions."""
    out_dir = Path(out_dir) if out_dir else None
    slug = task.replace("/", "_")   # file names: metaworld/<env> tasks carry a slash
    results = []
    seeds = list(range(seed, seed + episodes))
    bar = tqdm(total=episodes, desc=f"eval {label} on {task}", unit="ep")
    for start in range(0, episodes, num_envs):
        batch_seeds = seeds[start:start + num_envs]
        kw = {"image_size": image_size, **({"max_steps": max_steps} if max_steps else {})}
        envs = [make_task(task, **kw) for _ in batch_seeds]
        obs = [env.reset(seed=s)[0] for env, s in zip(envs, batch_seeds)]
        active = [True] * len(envs)
        info = [{"success": False, "return": 0.0, "length": 0} for _ in envs]
        frames = {i: [envs[i].render()] for i in range(len(envs)) if start + i < videos}
        while any(active):
            idx = [i for i, a in enumerate(active) if a]
            images = np.stack([np.stack([obs[i]["images"][envs[i].camera]]) for i in idx])
            states = np.stack([obs[i]["state"] for i in idx])
            for i, plan in zip(idx, _plans(policy, images, [obs[i]["instruction"] for i in idx], states,
                                           action_steps)):
                for a in plan:
                    obs[i], r, term, trunc, inf = envs[i].step(a)
                    info[i]["return"] += r
                    info[i]["length"] += 1
                    if i in frames:
                        frames[i].append(envs[i].render())
                    if term or trunc:
                        active[i] = False
                        info[i]["success"] = bool(inf["success"])
                        bar.update(1)
                        break
        for i, env in enumerate(envs):
            info[i].update(seed=batch_seeds[i], instruction=env.instruction)
            if i in frames and out_dir is not None:
                path = out_dir / "videos" / f"{label}_{slug}_seed{batch_seeds[i]}.mp4"
                write_mp4(path, np.stack(frames[i]), fps=10)
                info[i]["video"] = str(path)
            env.close()
        results += info
    bar.close()
    n_succ = sum(r["success"] for r in results)
    lo, hi = wilson_interval(n_succ, len(results))
    summary = {"label": label, "task": task, "episodes": len(results), "success_rate": n_succ / max(1, len(results)),
               "ci95": [lo, hi], "mean_return": float(np.mean([r["return"] for r in results])),
               "mean_length": float(np.mean([r["length"] for r in results])),
               "videos": [r["video"] for r in results if "video" in r], "per_episode": results}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"eval_{label}_{slug}.json").write_text(json.dumps(summary, indent=2))
    logger.info("%s on %s: success %.2f [%.2f, %.2f] over %d episodes", label, task, summary["success_rate"],
                lo, hi, len(results))
    return summary


def plot_success(summaries: list[dict], path: str | Path, title: str = "closed-loop success") -> Path:
    from qsft_robot.plots import pyplot, save_figure
    plt = pyplot()

    labels = [s["label"] for s in summaries]
    rates = np.array([s["success_rate"] for s in summaries])
    err = np.array([[r - s["ci95"][0] for r, s in zip(rates, summaries)],
                    [s["ci95"][1] - r for r, s in zip(rates, summaries)]])
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(labels), 3.4))
    ax.bar(labels, rates, yerr=err, capsize=6, color=["#7a7a7a", "#2a6fdb", "#2ca02c", "#d62728"][: len(labels)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate (95% CI)")
    ax.set_title(f"{title} ({summaries[0]['task']}, n={summaries[0]['episodes']})")
    return save_figure(fig, path, dpi=120)
