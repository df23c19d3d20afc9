"""`qsft-robot demo`: collect mixed-quality data -> train SFT, then Q-SFT on top of it -> evaluate both.

Q-SFT's pi_beta *is* the SFT model (frozen, logits cached), and theta / theta_bar start from it: the
benchmark's recipe, and the cheapest honest comparison (same data, same model, same BC run).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from qsft_robot.algo.recipes import BASE_SETS, DEFAULT_RECIPE, Q_RECIPES
from qsft_robot.config import load_config

logger = logging.getLogger(__name__)

FULL = {"episodes": 200, "steps": 1000, "q_steps": 1000, "eval_episodes": 50}
QUICK = {"episodes": 40, "steps": 30, "q_steps": 15, "eval_episodes": 10}
# Q-SFT's batches only: BC samples frames as the benchmark's BC does
_Q_ONLY = ("train.sampling=",)
# what configs/demo.yaml says, applied when no --config is given (an installed package has no configs/): the
# benchmark's settings and its default Q-SFT recipe
RECIPE = ["collect.task=base_goto_red", "collect.quality=biased", "eval.task=base_goto_red", *BASE_SETS,
          *(s for s in Q_RECIPES[DEFAULT_RECIPE] if not s.startswith(_Q_ONLY))]


def run_demo(out: str | Path = "outputs/demo", quick: bool = False, config: str | None = None,
             overrides: list[str] | None = None) -> dict:
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.data.lerobot_writer import write_lerobot_v30
    from qsft_robot.sim.collect import FPS, collect_episodes
    from qsft_robot.sim.evaluate import evaluate, plot_success

    size = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*(RECIPE if config is None else []), *(overrides or [])]
    base = load_config(config, overrides)
    task = base.collect.task
    t0 = time.perf_counter()
    data_dir = out / "dataset"
    if not (data_dir / "meta" / "info.json").is_file():
        eps = collect_episodes(task, size["episodes"], base.collect.quality, base.collect.seed,
                               base.collect.image_size, base.collect.workers)
        write_lerobot_v30(eps, data_dir, fps=FPS, robot_type=task)
    collect_s = time.perf_counter() - t0
    rows, summaries = [], []
    sft_ckpt = None
    for algo in ("sft", "qsft"):
        t1 = time.perf_counter()
        sets = [f"data.path={data_dir}", f"algo.name={algo}", f"train.out_dir={out / algo}",
                f"train.steps={size['steps'] if algo == 'sft' else size['q_steps']}"]
        if algo == "qsft":  # on top of the BC model, with the recipe's batches (as the benchmark's Q-SFT)
            sets += [f"algo.behavior_init={sft_ckpt}", *(s for s in Q_RECIPES[DEFAULT_RECIPE] if s.startswith(_Q_ONLY))]
        cfg = load_config(config, [*sets, *overrides])
        from qsft_robot.train.trainer import train
        ckpt = train(cfg)
        sft_ckpt = sft_ckpt or ckpt
        train_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        s = evaluate(load_policy(ckpt), cfg.eval.task, episodes=size["eval_episodes"], seed=cfg.eval.seed,
                     num_envs=cfg.eval.num_envs, videos=cfg.eval.videos, out_dir=out / "eval",
                     image_size=cfg.collect.image_size, label=algo)
        summaries.append(s)
        rows.append({"method": algo, "success": s["success_rate"], "ci95": s["ci95"], "episodes": s["episodes"],
                     "train_s": train_s, "eval_s": time.perf_counter() - t2, "checkpoint": str(ckpt)})
    plot = plot_success(summaries, out / "success.png", title="Q-SFT vs SFT")
    result = {"task": task, "collect_s": collect_s, "rows": rows, "plot": str(plot),
              "videos": [v for s in summaries for v in s["videos"]], "wall_s": time.perf_counter() - t0}
    (out / "demo_results.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    lines = [f"task: {result['task']}   (data collection {result['collect_s']:.0f}s)",
             "| method | success | 95% CI | episodes | train s | eval s |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['success']:.2f} | [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | "
                     f"{r['episodes']} | {r['train_s']:.0f} | {r['eval_s']:.0f} |")
    lines.append(f"total wall time: {result['wall_s']:.0f}s")
    lines.append(f"plot: {result['plot']}")
    lines += [f"video: {v}" for v in result["videos"]]
    return "\n".join(lines)
