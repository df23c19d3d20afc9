"""The `qsft-robot` command: collect, train, eval, demo, benchmark, qvalues, data inspect."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.steps=500 (repeatable)")


def cmd_collect(a) -> int:
    from qsft_robot.data.lerobot import write_lerobot_v30
    from qsft_robot.sim.collect import FPS, collect_episodes

    eps = collect_episodes(a.task, a.episodes, a.quality, a.seed, a.image_size, a.workers)
    path = write_lerobot_v30(eps, a.out, fps=FPS, robot_type=a.task)
    if a.hdf5:
        from qsft_robot.data.hdf5_io import write_robomimic
        write_robomimic(eps, a.hdf5)
    rate = sum(e.success for e in eps) / len(eps)
    print(f"wrote {len(eps)} episodes ({rate:.0%} successful) to {path}" + (f" and {a.hdf5}" if a.hdf5 else ""))
    return 0


def cmd_train(a) -> int:
    from qsft_robot.config import load_config
    from qsft_robot.train.trainer import train

    overrides = list(a.overrides)
    if a.data:
        overrides.append(f"data.path={a.data}")
    if a.algo:
        overrides.append(f"algo.name={a.algo}")
    if a.out:
        overrides.append(f"train.out_dir={a.out}")
    cfg = load_config(a.config, overrides)
    print(f"checkpoint: {train(cfg)}")
    return 0


def cmd_eval(a) -> int:
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.sim.evaluate import evaluate, plot_success

    summaries = []
    for ckpt in a.checkpoints:
        label = Path(ckpt).name if len(a.checkpoints) > 1 else "policy"
        kw = {} if a.support_eps is None else {"support_eps": a.support_eps if a.support_eps > 0 else None}
        s = evaluate(load_policy(ckpt, mode=a.mode, **kw), a.task, a.episodes, a.seed, a.num_envs, a.videos, a.out,
                     a.image_size, label=label)
        summaries.append(s)
        print(f"{label}: success {s['success_rate']:.2f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] "
              f"return {s['mean_return']:.2f} length {s['mean_length']:.1f} over {s['episodes']} episodes")
    if len(summaries) > 1:
        print(f"plot: {plot_success(summaries, Path(a.out) / 'success.png')}")
    return 0


def cmd_demo(a) -> int:
    from qsft_robot.demo import format_table, run_demo

    print(format_table(run_demo(a.out, a.quick, a.config, a.overrides)))
    return 0


def cmd_inspect(a) -> int:
    from qsft_robot.data.inspect import inspect_dataset

    report = inspect_dataset(a.path)
    print(json.dumps(report, indent=2) if a.json else report["text"])
    return 1 if report["problems"] and a.strict else 0


def cmd_qvalues(a) -> int:
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.algo.qvalues import plot_qvalues, qvalue_table

    pol = load_policy(a.checkpoint)
    logged = None
    if a.data:
        from qsft_robot.data.lerobot import iter_lerobot
        for i, ep in enumerate(iter_lerobot(a.data)):
            if i == a.episode:
                break
        else:
            raise FileNotFoundError(f"{a.data} has no episode {a.episode}")
        if not 0 <= a.frame < len(ep.actions):
            raise ValueError(f"episode {a.episode} has {len(ep.actions)} frames; --frame {a.frame} is out of range")
        image = np.stack([ep.images[c][a.frame] for c in ep.images])
        instruction, state = ep.instruction, None if ep.state is None else ep.state[a.frame]
        logged = pol.action_tokenizer.encode(ep.actions[a.frame][None])[0]
        title = f"{a.data} episode {a.episode} frame {a.frame}: {instruction}"
    else:
        from qsft_robot.sim.registry import make_task
        env = make_task(a.task)
        obs, _ = env.reset(seed=a.seed)
        for _ in range(a.frame):  # roll the policy forward to the frame asked for
            obs, *_ = env.step(pol.act(np.stack([obs["images"][env.camera]])[:, None], [obs["instruction"]],
                                       obs["state"][None])[0])
        image, instruction, state = obs["images"][env.camera][None], obs["instruction"], obs["state"]
        title = f"{a.task} seed {a.seed} step {a.frame}: {instruction}"
    table = qvalue_table(pol, image, a.instruction or instruction, state)
    path = plot_qvalues(table, a.out, image=image, title=title, data_tokens=logged)
    print(f"chosen bins {table['chosen'].tolist()}" + (f", logged bins {logged.tolist()}" if logged is not None
                                                       else "") + f"\nplot: {path}")
    return 0


def cmd_benchmark(a) -> int:
    from qsft_robot.benchmark import TUNED_Q, BenchSpec, format_markdown, run_benchmark

    spec = BenchSpec(tasks=a.tasks, seeds=a.seeds, episodes=a.episodes, quality=a.quality,
                     bc_steps=a.bc_steps, q_steps=a.q_steps,
                     eval_episodes=a.eval_episodes, eval_seed=a.eval_seed, overrides=a.overrides or [],
                     q_overrides=a.q_overrides if a.q_overrides is not None else list(TUNED_Q))
    res = run_benchmark(spec, a.out)
    print(format_markdown(res) + f"\nplot: {Path(a.out) / 'offline_rl.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qsft-robot", description=__doc__)
    ap.add_argument("--log-level", default="INFO")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="roll out scripted experts in MuJoCo and write a LeRobot v3.0 dataset")
    p.add_argument("--task", default="arm_reach")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--quality", default="mixed", help="expert | mixed | poor | biased | stitch (sim/experts.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--hdf5", help="also write a robomimic-layout HDF5 file here")
    p.set_defaults(fn=cmd_collect)

    p = sub.add_parser("train", help="train Q-SFT (default) or a BC baseline on a dataset")
    _config_args(p)
    p.add_argument("--data", help="LeRobot folder or HDF5 file (data.path)")
    p.add_argument("--algo", choices=["qsft", "sft", "filtered_bc"])
    p.add_argument("--out", help="run folder (train.out_dir); an existing run resumes")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="closed-loop success rate in MuJoCo")
    p.add_argument("checkpoints", nargs="+", help="checkpoint or run folders")
    p.add_argument("--task", default="arm_reach")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--num-envs", type=int, default=10)
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--mode", choices=["argmax_q", "paper", "sft"])
    p.add_argument("--support-eps", type=float, default=None,
                   help="Q-SFT argmax_q: act only on bins pi_beta gives more than this (default: the checkpoint's "
                        "algo.support_eps; 0: no restriction)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--out", default="outputs/eval")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("demo", help="collect -> train Q-SFT and SFT -> evaluate, on the embedded default")
    _config_args(p)
    p.add_argument("--quick", action="store_true", help="~2 minute smoke version")
    p.add_argument("--out", default="outputs/demo")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("qvalues", help="plot p_theta (Q) and pi_beta over the bins for one frame")
    p.add_argument("checkpoint")
    p.add_argument("--task", default="arm_reach", help="sim frame: this task at --seed, --frame policy steps in")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--data", help="or a LeRobot dataset frame (--episode, --frame)")
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--frame", type=int, default=0)
    p.add_argument("--instruction", default="", help="override the instruction")
    p.add_argument("--out", default="outputs/qvalues.png")
    p.set_defaults(fn=cmd_qvalues)

    p = sub.add_parser("benchmark", help="BC vs filtered BC vs Q-SFT on mixed-quality sim data (table + chart)")
    p.add_argument("--tasks", nargs="+", default=["arm_reach_red", "base_goto_red"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--quality", default="biased",
                   help="operator preset of the collected data: biased | stitch (see sim/experts.py) | mixed | poor")
    p.add_argument("--bc-steps", type=int, default=1000)
    p.add_argument("--q-steps", type=int, default=500)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--eval-seed", type=int, default=1000,
                   help="first evaluation episode seed (1000: the reported runs; tune on others, e.g. 5000)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="every run")
    p.add_argument("--q-set", dest="q_overrides", action="append", metavar="KEY=VALUE",
                   help="Q-SFT runs only (replaces the tuned defaults)")
    p.add_argument("--out", default="outputs/offline_rl")
    p.set_defaults(fn=cmd_benchmark)

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("inspect", help="episodes, frames, cameras, action stats, rewards, problems")
    q.add_argument("path")
    q.add_argument("--json", action="store_true")
    q.add_argument("--strict", action="store_true", help="exit 1 when problems are found")
    q.set_defaults(fn=cmd_inspect)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("OpenGL", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from qsft_robot.config import ConfigError
    from qsft_robot.data.episode import DatasetError
    from qsft_robot.train.checkpoint import CheckpointError

    try:
        return args.fn(args)
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"qsft-robot: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
