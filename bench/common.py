"""Shared bench helpers: a small dataset and model built offline, and a table printer."""
from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def episodes(task="arm_reach", n=16):
    from qsft_robot.sim.collect import collect_episodes
    return collect_episodes(task, n, "mixed", seed=0, image_size=64)


def timeit(fn, repeat=10, warmup=2):
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def table(title, header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    print(f"\n{title}\n" + line(header) + "\n|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def machine():
    import platform

    import torch
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
           f"threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}"


OUT = Path(os.environ.get("QSFT_BENCH_OUT", "outputs/bench"))
# tiny_scratch as one config file, so every bench compares against the same model
TINY_SCRATCH_CONFIG = str(Path(__file__).parents[1] / "configs" / "model_tiny_scratch.yaml")
