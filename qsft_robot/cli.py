"""The `qsft-robot` command: collect, train, eval, demo, benchmark, qvalues, data inspect.

Every command that runs something reads one config (config.py): defaults < `--config FILE.yaml` <
`--set key=value` < the command's own flags, which are shorthands for config keys (`collect --task X`
is `--set collect.task=X`). Choices (algorithms, acting modes, data formats) come from the config's
declarations.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np

from qsft_robot.config import RunConfig, choices

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# command-line flag -> the config key it sets, per command
COLLECT_FLAGS = {"task": "collect.task", "episodes": "collect.episodes", "quality": "collect.quality",
                 "seed": "collect.seed", "image_size": "collect.image_size", "workers": "collect.workers",
                 "max_steps": "collect.max_steps", "dataset_path": "collect.dataset_path"}
TRAIN_FLAGS = {"data": "data.path", "algo": "algo.name", "out": "train.out_dir"}
EVAL_FLAGS = {"task": "eval.task", "episodes": "eval.episodes", "seed": "eval.seed", "num_envs": "eval.num_envs",
              "videos": "eval.videos", "mode": "eval.mode", "image_size": "collect.image_size"}


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.steps=500 (repeatable)")


def _flag_args(p: argparse.ArgumentParser, flags: dict, helps: dict | None = None) -> None:
    """One option per flag of `flags`, typed, with choices and default named from its config key."""
    import typing

    from qsft_robot.config import describe

    for flag, key in flags.items():
        typ, default = describe(key)
        kw = {"choices": typing.get_args(typ), "type": _renamed_refused(key)} \
            if typing.get_origin(typ) is typing.Literal else {"type": typ if typ in (int, float) else str}
        extra = (helps or {}).get(flag, f" (default {default})")
        p.add_argument("--" + flag.replace("_", "-"), help=f"{key}{extra}", **kw)


def _renamed_refused(key: str):
    """argparse type of a choice flag: a renamed value is refused with its new name (argparse's own message
    would only list the choices)."""
    from qsft_robot.config import RENAMED_VALUES

    def parse(value: str) -> str:
        new = RENAMED_VALUES.get(key, {}).get(value)
        if new is not None:
            raise argparse.ArgumentTypeError(f"{value!r} was renamed {new!r}")
        return value
    return parse


def _load(a, flags: dict):
    """The run's config: --config, then --set, then the flags given (those left at None are not)."""
    from qsft_robot.config import load_config

    given = [f"{key}={getattr(a, flag)}" for flag, key in flags.items() if getattr(a, flag, None) is not None]
    return load_config(a.config, [*a.overrides, *getattr(a, "assignments", []), *given])


def cmd_collect(a) -> int:
    from qsft_robot.data.lerobot_writer import write_lerobot_v30
    from qsft_robot.sim.collect import collect_episodes, fps_for

    c = _load(a, COLLECT_FLAGS).collect
    if c.dataset_path:   # an upstream OGBench file, relabelled for the task's evaluation problem
        if not c.task.startswith("ogbench/"):
            raise SystemExit(f"--dataset-path reads an upstream OGBench .npz file: it needs an ogbench/<name> "
                             f"task, not {c.task!r}")
        from qsft_robot.sim.ogbench_play import episodes_from_npz
        eps = episodes_from_npz(c.task, c.dataset_path)
    else:
        eps = collect_episodes(c.task, c.episodes, c.quality, c.seed, c.image_size, c.workers, c.max_steps)
    path = write_lerobot_v30(eps, a.out, fps=fps_for(c.task), robot_type=c.task)
    if a.hdf5:
        from qsft_robot.data.hdf5_io import write_robomimic
        write_robomimic(eps, a.hdf5)
    rate = sum(e.success for e in eps) / len(eps)
    print(f"wrote {len(eps)} episodes ({rate:.0%} successful) to {path}" + (f" and {a.hdf5}" if a.hdf5 else ""))
    return 0


def cmd_train(a) -> int:
    from qsft_robot.train.trainer import end_distributed, train

    cfg = _load(a, TRAIN_FLAGS)
    ckpt = train(cfg, eval_hook=closed_loop_eval_hook(cfg))
    end_distributed()
    print(f"checkpoint: {ckpt}")
    return 0


def closed_loop_eval_hook(cfg):
    """train.eval_every > 0: the trainer's eval hook, closed-loop success in the sim task eval.task."""
    if cfg.train.eval_every <= 0:
        return None
    from qsft_robot.sim.evaluate import evaluate

    e = cfg.eval

    def hook(policy, step: int) -> float:
        return evaluate(policy, e.task, episodes=e.episodes, seed=e.seed, num_envs=e.num_envs, videos=0,
                        out_dir=Path(cfg.train.out_dir) / "eval", image_size=cfg.collect.image_size,
                        max_steps=e.max_steps, label=f"step{step}", action_steps=e.action_steps)["success_rate"]
    return hook


def cmd_eval(a) -> int:
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.sim.evaluate import evaluate, plot_success

    cfg = _load(a, EVAL_FLAGS)
    e = cfg.eval
    # eval.mode when asked for (--mode, or a value other than its default); otherwise every checkpoint acts
    # as its algorithm does (argmax_q for Q-SFT, argmax_behavior for the BC baselines)
    mode = e.mode if a.mode is not None or e.mode != RunConfig().eval.mode else None
    summaries = []
    for ckpt in a.checkpoints:
        label = Path(ckpt).name if len(a.checkpoints) > 1 else "policy"
        kw = {} if a.support_eps is None else {"support_eps": a.support_eps if a.support_eps > 0 else None}
        s = evaluate(load_policy(ckpt, mode=mode, beta=e.beta, **kw), e.task, e.episodes, e.seed, e.num_envs,
                     e.videos, a.out, cfg.collect.image_size, max_steps=e.max_steps, label=label,
                     action_steps=e.action_steps)
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

    report = inspect_dataset(a.path, a.format, a.instruction, decode=a.decode)
    print(json.dumps(report, indent=2) if a.json else report["text"])
    return 1 if report["problems"] and a.strict else 0


def cmd_qvalues(a) -> int:
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.algo.qvalues import plot_qvalues, qvalue_table

    pol = load_policy(a.checkpoint)
    logged = None
    if a.data:
        from qsft_robot.data.sources import open_dataset
        for i, ep in enumerate(open_dataset(a.data).iter_episodes()):
            if i == a.episode:
                break
        else:
            raise FileNotFoundError(f"{a.data} has no episode {a.episode}")
        if not 0 <= a.frame < len(ep.actions):
            raise ValueError(f"episode {a.episode} has {len(ep.actions)} frames; --frame {a.frame} is out of range")
        image = np.stack([ep.images[c][a.frame] for c in ep.images])
        instruction, state = ep.instruction, None if ep.state is None else ep.state[a.frame]
        logged = pol.action_tokenizer.encode_chunks(ep.actions[a.frame:])[0]   # a chunk: this step and the next
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


def benchmark_spec(a):
    """The benchmark's BenchSpec from its flags; flags left out keep BenchSpec's defaults (written only there)."""
    from dataclasses import fields

    from qsft_robot.benchmark import BenchSpec

    return BenchSpec(**{f.name: getattr(a, f.name) for f in fields(BenchSpec) if getattr(a, f.name, None) is not None})


def cmd_benchmark(a) -> int:
    from qsft_robot.benchmark import format_markdown, run_benchmark

    res = run_benchmark(benchmark_spec(a), a.out)
    print(format_markdown(res) + f"\nplot: {res['plot']}")   # under OUT/multitask/ for --multitask
    return 0


def _add_collect(sub) -> None:
    p = sub.add_parser("collect", help="roll out scripted experts in MuJoCo and write a LeRobot v3.0 dataset")
    _config_args(p)
    _flag_args(p, COLLECT_FLAGS, {"quality": " (default mixed): expert | mixed | poor | biased | stitch | "
                                             "segments, sim/experts.py; play / noisy: OGBench's random-task "
                                             "logs (ogbench/<name> tasks, sim/ogbench_play.py)",
                                  "episodes": " (default 100): episodes, or logs for --quality play / noisy",
                                  "max_steps": " (default 0): steps per play / noisy log (0: 1001, as upstream)",
                                  "dataset_path": ": read this upstream OGBench .npz file (ogbench's loader) "
                                                  "instead of collecting; --task names the evaluation task"})
    p.add_argument("--out", required=True)
    p.add_argument("--hdf5", help="also write a robomimic-layout HDF5 file here")
    p.set_defaults(fn=cmd_collect)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train Q-SFT (default) or a BC baseline on a dataset")
    _config_args(p)
    _flag_args(p, TRAIN_FLAGS, {"data": ": any format `data inspect` reads, found without data.format",
                                "out": ": the run folder; an existing run resumes"})
    p.add_argument("assignments", nargs="*", metavar="KEY=VALUE", help="the same as --set KEY=VALUE")
    p.set_defaults(fn=cmd_train)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="closed-loop success rate in MuJoCo")
    _config_args(p)
    p.add_argument("checkpoints", nargs="+", help="checkpoint or run folders")
    _flag_args(p, EVAL_FLAGS, {"mode": " (default: as the checkpoint's algorithm acts)",
                               "image_size": " (default 64): the rendered frame size, as the training frames were "
                                             "collected (the model resizes frames to its own model.image_size)"})
    p.add_argument("--support-eps", type=float, default=None,
                   help="Q-SFT argmax_q: act only on bins pi_beta gives more than this (default: the checkpoint's "
                        "algo.support_eps; 0: no restriction)")
    p.add_argument("--out", default="outputs/eval")
    p.set_defaults(fn=cmd_eval)


def _add_demo_and_qvalues(sub) -> None:
    p = sub.add_parser("demo", help="collect -> train SFT, then Q-SFT on it -> evaluate both (tiny model)")
    _config_args(p)
    p.add_argument("--quick", action="store_true", help="~2 minute smoke version")
    p.add_argument("--out", default="outputs/demo")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("qvalues", help="plot p_theta (Q) and pi_beta over the bins for one frame")
    p.add_argument("checkpoint")
    p.add_argument("--task", default="arm_reach", help="sim frame: this task at --seed, --frame policy steps in")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--data", help="or a dataset frame (--episode, --frame; any format data inspect reads)")
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--frame", type=int, default=0)
    p.add_argument("--instruction", default="", help="override the instruction")
    p.add_argument("--out", default="outputs/qvalues.png")
    p.set_defaults(fn=cmd_qvalues)


def _add_benchmark(sub) -> None:
    """One flag per BenchSpec field, typed and described there: a flag left out keeps BenchSpec's default."""
    import typing
    from dataclasses import fields

    from qsft_robot.benchmark import BenchSpec

    p = sub.add_parser("benchmark", help="BC vs filtered BC vs Q-SFT on mixed-quality sim data (table + chart)")
    types = typing.get_type_hints(BenchSpec)
    for f in fields(BenchSpec):
        typ, meta = types[f.name], f.metadata
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kw = {"dest": f.name, "default": None, "help": f"{meta['help']} (default: {default})"}
        if typ is bool:
            kw["action"] = "store_true"
        elif typing.get_origin(typ) is list:
            item = typing.get_args(typ)[0]
            kw.update({"type": item, "action": "append", "metavar": "KEY=VALUE"} if meta.get("repeat")
                      else {"type": item, "nargs": "+"})
        else:
            kw["type"] = typ
        p.add_argument(meta.get("flag", "--" + f.name.replace("_", "-")), **kw)
    p.add_argument("--out", default="outputs/offline_rl")
    p.set_defaults(fn=cmd_benchmark)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("inspect", help="format, episodes, frames, cameras, action stats, rewards, problems")
    q.add_argument("path")
    q.add_argument("--format", default="auto", choices=choices("data.format"),
                   help="data.format (default auto: detected from the files)")
    q.add_argument("--instruction", default="", help="data.instruction, for logs without language (ALOHA)")
    q.add_argument("--json", action="store_true")
    q.add_argument("--strict", action="store_true", help="exit 1 when problems are found")
    q.add_argument("--decode", action="store_true",
                   help="also decode every video frame (streamed, episode by episode) and name unreadable episodes")
    q.set_defaults(fn=cmd_inspect)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qsft-robot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log-level", default="INFO")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (_add_collect, _add_train, _add_eval, _add_demo_and_qvalues, _add_benchmark, _add_data):
        add(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from qsft_robot.config import ConfigError, setup_logging
    setup_logging(args.log_level.upper())
    from qsft_robot.data.episode import DatasetError

    try:
        return args.fn(args)
    # checkpoint.CheckpointError is a FileNotFoundError; importing it here would load torch for every command
    except (ConfigError, DatasetError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"qsft-robot: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
