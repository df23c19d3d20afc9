"""Offline-RL benchmark: BC vs filtered BC vs Q-SFT on the same mixed-quality sim data, same model.

Per task: collect one dataset (scripted operators of a quality preset), then for every training seed
train BC ("sft") and filtered BC on it, and one Q-SFT run per recipe (algo/recipes.py) with pi_beta = that
seed's BC model (frozen, docs/design.md §2.3's frozen variant; theta and theta_bar start from it), and
evaluate every policy in closed loop on the same held-out episode seeds. With `multitask`, the methods
train once per seed on the union of the tasks' datasets (one policy; the instruction tells the tasks
apart) and are evaluated on each task. Output: a markdown table (mean success over seeds, per-seed
numbers, Wilson 95% interval over all pooled episodes, task averages), a PNG chart and a JSON file.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qsft_robot.algo.recipes import BASE_SETS, Q_LABELS, Q_RECIPES

logger = logging.getLogger(__name__)
BC_METHODS = ("sft", "filtered_bc")
LABELS = {"sft": "BC", "filtered_bc": "filtered BC", **{f"qsft_{k}": v for k, v in Q_LABELS.items()}}


def methods(spec: "BenchSpec | dict") -> tuple[str, ...]:
    """The benchmark's methods in training order: the BC baselines, then one Q-SFT run per recipe."""
    get = spec.get if isinstance(spec, dict) else lambda k, d=None: getattr(spec, k, d)
    return tuple(get("bc_methods", BC_METHODS)) + tuple(f"qsft_{r}" for r in get("q_recipes"))


def _opt(default, help: str, **cli):
    """A BenchSpec field: its default and its help, which the `qsft-robot benchmark` flag shows (cli.py builds
    one flag per field from these; `cli` may name the flag or make a list flag repeatable)."""
    kw = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(metadata={"help": help, **cli}, **kw)


@dataclass
class BenchSpec:
    tasks: list[str] = _opt(["arm_reach_red", "base_goto_red"], "built-in tasks (sim/registry.py), "
                            "metaworld/<env-name>, e.g. metaworld/button-press-topdown-v3 (the metaworld extra), or "
                            "ogbench/<name>, e.g. ogbench/visual-cube-single-play-singletask-task2-v0 (the ogbench "
                            "extra, --quality play)")
    seeds: list[int] = _opt([0, 1, 2], "training seeds")
    episodes: int = _opt(200, "dataset size per task")
    quality: str = _opt("biased", "operator preset of the collected data: biased | stitch | segments | mixed | poor "
                        "(sim/experts.py); play or noisy for ogbench/<name> tasks (sim/ogbench_play.py): --episodes "
                        "then counts 1001-step logs")
    bc_steps: int = _opt(1000, "BC and filtered BC steps")
    q_steps: int = _opt(1000, "Q-SFT steps on top of the seed's BC run (its pi_beta)")
    eval_episodes: int = _opt(50, "closed-loop evaluation episodes per policy")
    eval_seed: int = _opt(1000, "first evaluation episode seed (data uses seeds from 0; 1000: the reported runs, "
                          "tune on others, e.g. 5000)")
    overrides: list[str] = _opt([], "KEY=VALUE for every run, e.g. algo.num_bins=32", flag="--set", repeat=True)
    bc_methods: list[str] = _opt(list(BC_METHODS), "imitation baselines per seed: sft (BC, also every Q-SFT run's "
                                 "pi_beta) and/or filtered_bc; drop filtered_bc where a training step is costly "
                                 "(a pretrained backbone on a CPU)")
    q_recipes: list[str] = _opt(list(Q_RECIPES), "Q-SFT runs per seed, each a row (qsft_robot/algo/recipes.py)")
    q_overrides: list[str] = _opt([], "KEY=VALUE for the Q-SFT runs only, after their recipe's settings",
                                  flag="--q-set", repeat=True)
    config: str = _opt("", "YAML config every run starts from (see configs/; empty: the defaults)")
    multitask: bool = _opt(False, "one policy per method and seed over the union of the tasks' data, evaluated "
                           "per task")
    unseen_phrasings: bool = _opt(False, "also evaluate every policy on its task's held-out phrasings "
                                  "(<task>_unseen, the *_lang tasks: sim/phrasings.py), as rows of their own")
    # rendering is most of a Meta-World step; one training process keeps ~1 core busy
    workers: int = _opt(1, "collection processes, and training seeds run at once")


def _train(data: Path, out: Path, algo: str, steps: int, seed: int, sets: list,
           config: str = "") -> tuple[Path, float]:
    from qsft_robot.config import load_config
    from qsft_robot.train.trainer import train
    t = time.perf_counter()
    cfg = load_config(config or None, [f"data.path={data}", f"algo.name={algo}", f"train.out_dir={out}",
                             f"train.steps={steps}", f"train.seed={seed}", f"train.save_every={steps}",
                             "train.keep_last=1", "train.tensorboard=false", *sets])
    return train(cfg), time.perf_counter() - t


def _dataset(spec: BenchSpec, out: Path, task: str) -> tuple[Path, float]:
    """The task's dataset under out/<task>/dataset, collected once and reused after (same spec only):
    (its path, its success rate)."""
    from qsft_robot.data.lerobot_writer import write_lerobot_v30
    from qsft_robot.sim.collect import collect_episodes, fps_for

    data = out / task / "dataset"
    made_with = {"episodes": spec.episodes, "quality": spec.quality, "seed": 0, "image_size": 64}
    spec_file = out / task / "dataset_spec.json"
    if not (data / "meta" / "info.json").is_file():
        eps = collect_episodes(task, spec.episodes, spec.quality, seed=0, image_size=64, workers=spec.workers)
        write_lerobot_v30(eps, data, fps=fps_for(task), robot_type=task)
        spec_file.write_text(json.dumps(made_with))
        return data, float(np.mean([e.success for e in eps]))
    # reuse the dataset (and finished runs, which resume at their last step): same data only
    if spec_file.is_file() and json.loads(spec_file.read_text()) != made_with:
        raise ValueError(f"{data} was collected with {spec_file.read_text()}, not {made_with}: use another --out")
    from qsft_robot.data.sources import open_dataset
    return data, float(np.mean([e.success for e in open_dataset(data).iter_episodes(images=False)]))


def _union_dataset(datasets: list[Path], out: Path) -> Path:
    """One LeRobot dataset holding every task's episodes (each keeps its own instruction): the training
    data of the multi-task policy, at out/dataset. Built once; a folder built from other task datasets
    is refused (its runs would resume as if finished), as `_dataset` refuses other collection settings.
    The frames are decoded and encoded again (H.264, crf 18), one generation more than a single-task
    run trains on; evaluation renders raw frames in both cases."""
    from qsft_robot.data.lerobot_writer import write_lerobot_v30
    from qsft_robot.data.sources import open_dataset
    from qsft_robot.sim.collect import FPS

    made_from = [str(d) for d in datasets]
    spec_file = out / "union_of.json"
    if (out / "dataset").exists():
        was = json.loads(spec_file.read_text()) if spec_file.is_file() else "unknown datasets"
        if was != made_from:
            raise ValueError(f"{out / 'dataset'} was built from {was}, not {made_from}: use another --out")
        return out / "dataset"
    eps = [ep for d in datasets for ep in open_dataset(d).episodes()]
    write_lerobot_v30(eps, out / "dataset", fps=FPS, robot_type="multitask")
    spec_file.write_text(json.dumps(made_from))
    return out / "dataset"


def _train_methods(spec: BenchSpec, data: Path, run: Path, seed: int) -> dict[str, tuple[Path, float]]:
    """BC, filtered BC and Q-SFT (pi_beta = this seed's BC model) on `data`: {method: (checkpoint, seconds)}."""
    base_sets = [*BASE_SETS, *spec.overrides]
    done = {}
    for m in spec.bc_methods:
        done[m] = _train(data, run / m, m, spec.bc_steps, seed, base_sets, spec.config)
    for recipe in spec.q_recipes:
        sets = [*base_sets, f"algo.behavior_init={done['sft'][0]}", *Q_RECIPES[recipe], *spec.q_overrides]
        done[f"qsft_{recipe}"] = _train(data, run / f"qsft_{recipe}", "qsft", spec.q_steps, seed, sets, spec.config)
    return done


def _evaluate_methods(spec: BenchSpec, ckpts: dict, task: str, run: Path, seed: int) -> dict[str, dict]:
    """Every method's checkpoint on `task`'s held-out episode seeds: {method: record}."""
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.sim.evaluate import evaluate

    records = {}
    for m, (ckpt, t) in ckpts.items():
        s = evaluate(load_policy(ckpt), task, episodes=spec.eval_episodes, seed=spec.eval_seed, num_envs=10,
                     videos=1 if seed == spec.seeds[0] else 0, out_dir=run / "eval", label=f"{m}_seed{seed}")
        records[m] = {"seed": seed, "success": s["success_rate"], "n": s["episodes"], "train_s": t,
                      "checkpoint": str(ckpt), "videos": s["videos"]}
    return records


def _seed_run(spec: BenchSpec, data: Path, run: Path, evals: dict[str, Path], seed: int) -> dict[str, dict]:
    """One training seed: the three methods trained on `data` under `run`, each evaluated on every task
    of `evals` ({task: its eval folder}): {task: {method: record}}. Top level, so a worker process can run it."""
    ckpts = _train_methods(spec, data, run, seed)
    return {task: _evaluate_methods(spec, ckpts, task, folder, seed) for task, folder in evals.items()}


def _init_worker(threads: int, log_level: int) -> None:
    import torch

    from qsft_robot.config import setup_logging
    torch.set_num_threads(threads)
    setup_logging(log_level)


def _run_seeds(spec: BenchSpec, jobs: list[tuple]):
    """`_seed_run` for every job (its arguments after spec): yields the results in job order, each as soon
    as it and those before it are done. With spec.workers > 1 the jobs run in that many processes at once,
    each with its share of the cores: one training or evaluation process keeps ~1 core busy (Meta-World
    button-press-topdown: 26-31 min a seed in a row on a 2-core machine), and the seeds are
    independent. Spawned, as in collection: a forked child would inherit the EGL renderer state."""
    if spec.workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _seed_run(spec, *job)
        return
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    n = min(spec.workers, len(jobs))
    threads = max(1, len(os.sched_getaffinity(0)) // n)
    logger.info("running %d seed jobs in %d processes (%d torch threads each)", len(jobs), n, threads)
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads, logging.getLogger().getEffectiveLevel())) as pool:
        futures = [pool.submit(_seed_run, spec, *job) for job in jobs]
        try:
            for f in futures:
                yield f.result()
        except BaseException:  # fail now, not after every queued seed has run
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _rows(runs: dict) -> dict:
    """Per method: mean over seeds, per-seed numbers, Wilson 95% interval over all pooled episodes."""
    from qsft_robot.sim.evaluate import wilson_interval

    rows = {}
    for m in runs:
        k = sum(round(r["success"] * r["n"]) for r in runs[m])
        n = sum(r["n"] for r in runs[m])
        rows[m] = {"mean": float(np.mean([r["success"] for r in runs[m]])),
                   "per_seed": [r["success"] for r in runs[m]], "ci95": list(wilson_interval(k, n)), "n": n,
                   "train_s": float(np.mean([r["train_s"] for r in runs[m]]))}
    return rows


def _unseen_phrasings(task: str, wanted: bool) -> list[str]:
    """[<task>_unseen] when wanted (ValueError if `task` has no held-out phrasings), else []."""
    from qsft_robot.sim.registry import TASKS
    if not wanted:
        return []
    if f"{task}_unseen" not in TASKS:
        raise ValueError(f"--unseen-phrasings: task {task!r} has no held-out phrasings; the *_lang tasks have "
                         f"({', '.join(t for t in TASKS if t.endswith('_lang'))})")
    return [f"{task}_unseen"]


def _check_methods(spec: BenchSpec) -> None:
    """Refuse, before any collection, baselines the benchmark does not know and Q-SFT rows without their pi_beta."""
    unknown = [m for m in spec.bc_methods if m not in BC_METHODS]
    if unknown or not spec.bc_methods or len(set(spec.bc_methods)) != len(spec.bc_methods):
        raise ValueError(f"--bc-methods must name some of {list(BC_METHODS)} once each, got {spec.bc_methods}")
    if spec.q_recipes and "sft" not in spec.bc_methods:
        raise ValueError("--bc-methods without sft: every Q-SFT run needs its seed's BC model as pi_beta")


def _check_multitask(tasks: list[str]) -> None:
    """One policy over several tasks needs one observation and action layout: refuse a mix before any
    collection (say which task differs) rather than fail on the union dataset after it."""
    from qsft_robot.sim.registry import make_task

    layouts = {}
    for task in tasks:
        env = make_task(task)
        obs, _ = env.reset(seed=0)
        layouts[task] = (env.action_dim, env.camera, len(obs["state"]))
        env.close()
    if len(set(layouts.values())) > 1:
        raise ValueError("--multitask needs tasks with the same (action dims, camera, state size); got "
                         + ", ".join(f"{t}: {v}" for t, v in layouts.items()))


def _task_result(results: dict, root: Path, task: str, data_success: float, runs: dict) -> None:
    results["tasks"][task] = {"data_success": data_success, "rows": _rows(runs), "runs": runs}
    (root / task).mkdir(parents=True, exist_ok=True)
    (root / task / "results.json").write_text(json.dumps(results["tasks"][task], indent=2))


def run_benchmark(spec: BenchSpec, out: str | Path) -> dict:
    """Per task (or, with spec.multitask, one policy over the union of the tasks' data): train every
    method for every seed, evaluate per task; write results.json, results.md and offline_rl.png (under
    out/multitask/ for a multi-task run, so that it never overwrites the single-task results beside it)."""
    out = Path(out)
    t0 = time.perf_counter()
    results: dict = {"spec": asdict(spec), "tasks": {}}
    unknown = [r for r in spec.q_recipes if r not in Q_RECIPES]
    if unknown:
        raise ValueError(f"unknown Q-SFT recipe(s) {unknown}; choose from {sorted(Q_RECIPES)}")
    for name, values in (("tasks", spec.tasks), ("seeds", spec.seeds), ("q-recipes", spec.q_recipes)):
        if len(set(values)) != len(values):  # two jobs would train into one run folder
            raise ValueError(f"--{name} lists a value twice: {values}")
    _check_methods(spec)
    if spec.multitask:
        _check_multitask(spec.tasks)
    # the tasks each policy is evaluated on, per training task: itself, and its held-out phrasings if asked
    evaluated = {task: [task, *_unseen_phrasings(task, spec.unseen_phrasings)] for task in spec.tasks}
    datasets = {task: _dataset(spec, out, task) for task in spec.tasks}
    data_success = {e: datasets[task][1] for task, evs in evaluated.items() for e in evs}
    root = out / "multitask" if spec.multitask else out
    if spec.multitask:
        union = _union_dataset([d for d, _ in datasets.values()], root)
        jobs = [(union, root / f"seed{seed}", {e: root / e / f"seed{seed}" for e in data_success}, seed)
                for seed in spec.seeds]
    else:
        jobs = [(datasets[task][0], out / task / f"seed{seed}", {e: out / e / f"seed{seed}" for e in evaluated[task]},
                 seed) for task in spec.tasks for seed in spec.seeds]
    done, left = [], set(data_success)
    for result in _run_seeds(spec, jobs):
        done.append(result)
        for task in sorted(left):  # a task's results are written once all its seeds are in
            per_seed = [r[task] for r in done if task in r]
            if len(per_seed) == len(spec.seeds):
                _task_result(results, root, task, data_success[task],
                             {m: [r[m] for r in per_seed] for m in methods(spec)})
                left.discard(task)
    results["tasks"] = {task: results["tasks"][task] for task in data_success}
    results["wall_s"] = time.perf_counter() - t0
    results["plot"] = str(root / "offline_rl.png")
    (root / "results.json").write_text(json.dumps(results, indent=2))
    (root / "results.md").write_text(format_markdown(results))
    plot_benchmark(results, root / "offline_rl.png")
    return results


def format_markdown(results: dict) -> str:
    spec = results["spec"]
    size = (f"{spec['episodes']} {spec['quality']} logs (1001 steps each, cut into episodes at the task's successes)"
            if spec["quality"] in ("play", "noisy") else f"{spec['episodes']} episodes")
    baselines = "/".join(LABELS[m] for m in spec.get("bc_methods", BC_METHODS))
    lines = [f"Data: {size} per task, quality '{spec['quality']}'; {baselines} "
             f"{spec['bc_steps']} steps, Q-SFT {spec['q_steps']} steps on top of its seed's BC model; "
             f"{spec['eval_episodes']} eval episodes from seed {spec['eval_seed']} x training seeds "
             f"{spec['seeds']}.", "",
             "| task | data success | method | mean success | per seed | 95% CI (pooled) |",
             "|---|---|---|---|---|---|"]
    if spec.get("multitask"):
        lines[0] += " One policy per method and seed over all tasks' data (the instruction tells them apart)."
    tasks = results["tasks"]
    for task, r in tasks.items():
        for m in methods(spec):
            row = r["rows"][m]
            lines.append(f"| {task} | {r['data_success']:.2f} | {LABELS[m]} | {row['mean']:.2f} | "
                         f"{', '.join(f'{x:.2f}' for x in row['per_seed'])} | "
                         f"[{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}] |")
    if len(tasks) > 1:
        for m in methods(spec):
            per_seed = np.mean([r["rows"][m]["per_seed"] for r in tasks.values()], axis=0)
            lines.append(f"| task average | {np.mean([r['data_success'] for r in tasks.values()]):.2f} | "
                         f"{LABELS[m]} | {np.mean(per_seed):.2f} | {', '.join(f'{x:.2f}' for x in per_seed)} | |")
    if "wall_s" in results:
        lines += ["", f"Wall time: {results['wall_s'] / 60:.1f} min (collection, training and evaluation)."]
    return "\n".join(lines) + "\n"


def plot_benchmark(results: dict, path: Path) -> Path:
    from qsft_robot.plots import pyplot, save_figure
    plt = pyplot()

    tasks = list(results["tasks"])
    shown = methods(results["spec"])
    fig, ax = plt.subplots(figsize=(2.8 + 0.9 * len(shown) * len(tasks), 3.6))
    width = 0.8 / len(shown)
    palette = ["#7a7a7a", "#e5a03a", "#2a6fdb", "#8fb3ec", "#5c3c92", "#2e8b57"]
    for j, m in enumerate(shown):
        xs = np.arange(len(tasks)) + (j - (len(shown) - 1) / 2) * width
        rows = [results["tasks"][t]["rows"][m] for t in tasks]
        means = np.array([r["mean"] for r in rows])
        err = np.array([[r["mean"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["mean"] for r in rows]])
        ax.bar(xs, means, width, yerr=np.clip(err, 0, None), capsize=4, label=LABELS[m], color=palette[j % 6])
        for x, r in zip(xs, rows):
            ax.scatter([x] * len(r["per_seed"]), r["per_seed"], s=10, color="black", zorder=3)
    for i, t in enumerate(tasks):
        ax.axhline(results["tasks"][t]["data_success"], xmin=i / len(tasks), xmax=(i + 1) / len(tasks),
                   color="black", ls=":", lw=1)
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylim(0, 1)
    ax.set_ylabel("closed-loop success (dots: seeds)")
    ax.set_title("offline RL on mixed-quality data (dotted: data success rate)")
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path, dpi=120)
