"""Does the data layer stay flat as a robot log grows? Writes synthetic LeRobot v3.0 datasets with the
project's writer (many episodes per data parquet and MP4, fast synthetic frames) at two sizes and, for
each, measures every stage in a fresh process: its time and peak resident memory, side by side with the
ratio of the larger dataset to the smaller.

Stages: write (the writer, fed by a generator), `data inspect` (tables and metadata, no video),
`data inspect --decode` (every frame decoded, streamed), the frame-cache build (light pass + frames
decoded in bounded chunks into the uint8 memmap training reads) and one epoch of batches (every
transition's frames, read by 2 DataLoader workers as in training). Frames/s is frames over the stage's
time, except for `--decode`: frames over the decoding pass alone, as its report gives it.

Peak RSS is `ru_maxrss` of the stage's process tree as os.wait4 reports it: the largest single process
(a DataLoader worker counts on its own, not summed with the main process). It includes the pages of the
memmapped frame cache a stage has touched: the epoch reads every frame once, so its figure grows with the
cache, although those pages are the kernel's clean file cache, not memory the process allocated.

    python bench/data_scale.py                         # 100 and 1000 episodes of 50 frames, 64 px
    python bench/data_scale.py --episodes 20 200 --length 20   # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, machine, table  # noqa: E402

STAGES = ("write", "inspect", "decode", "cache", "epoch")
LABELS = {"write": "write (project's writer)", "inspect": "data inspect", "decode": "data inspect --decode",
          "cache": "frame-cache build", "epoch": "one epoch of batches (2 workers)"}


def synthetic_episodes(n: int, length: int, size: int, seed: int = 0):
    """Episodes whose frames cost almost nothing to make: a per-episode colour gradient with a square that
    moves with the action, so H.264 sees motion as in a real log. A generator: the writer never holds them."""
    import numpy as np

    from qsft_robot.data.episode import Episode

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 60, size, dtype=np.float32)
    for e in range(n):
        actions = rng.uniform(-1, 1, size=(length, 4)).astype(np.float32)
        base = rng.integers(30, 170, size=3).astype(np.float32)
        img = np.empty((length, size, size, 3), np.uint8)
        img[:] = np.clip(base[None, None, None] + ramp[None, :, None, None], 0, 255).astype(np.uint8)
        pos = np.clip(np.cumsum(actions[:, :2], 0) * 2 + size / 2, 0, size - 8).astype(int)
        for t, (y, x) in enumerate(pos):
            img[t, y:y + 8, x:x + 8] = 255
        success = e % 3 == 0
        yield Episode(images={"front": img}, actions=actions, instruction=f"reach target {e % 5}",
                      state=rng.normal(size=(length, 4)).astype(np.float32),
                      rewards=np.r_[np.zeros(length - 1), float(success)].astype(np.float32),
                      success=success, terminated=success)


def stage_main(stage: str, path: Path, work: Path, a) -> dict:
    """Run one stage in this process; returns what it measured itself (seconds of the work, frames)."""
    import contextlib
    import io

    if stage == "write":
        from qsft_robot.data.lerobot_writer import write_lerobot_v30
        t = time.perf_counter()
        write_lerobot_v30(synthetic_episodes(a.n, a.length, a.size), path, fps=10,
                          episodes_per_file=a.per_file)
        return {"seconds": time.perf_counter() - t, "frames": a.n * a.length}
    if stage in ("inspect", "decode"):
        from qsft_robot.cli import main
        out = io.StringIO()
        t = time.perf_counter()
        with contextlib.redirect_stdout(out):
            rc = main(["data", "inspect", str(path), "--json"] + (["--decode"] if stage == "decode" else []))
        seconds = time.perf_counter() - t
        report = json.loads(out.getvalue())
        if rc != 0 or report["problems"]:
            raise RuntimeError(f"inspect failed: {report['problems']}")
        if stage == "inspect":
            return {"seconds": seconds, "frames": report["frames"]}
        # the decoding pass alone (the report times it), without the table pass before it
        return {"seconds": seconds, "frames": report["decoded"]["frames"], "fps": report["decoded"]["frames_per_s"]}
    from qsft_robot.config import DataConfig
    from qsft_robot.data.sources import load_training_data
    if stage == "cache":
        t = time.perf_counter()
        light, store = load_training_data(DataConfig(path=str(path), feature_cache=str(work)))
        return {"seconds": time.perf_counter() - t, "frames": len(store)}
    if stage == "epoch":
        import numpy as np

        from qsft_robot.data.action_tokenizer import ActionTokenizer
        from qsft_robot.data.sampling import prefetcher
        from qsft_robot.data.transitions import build_transitions
        light, store = load_training_data(DataConfig(path=str(path), feature_cache=str(work)))  # the cache stage's
        tok = ActionTokenizer.fit(np.concatenate([e.actions for e in light]), 16)
        data = build_transitions(light, tok, 0.9, "success", images=store)
        steps = -(-len(data) // a.batch_size)
        t = time.perf_counter()
        frames = 0
        for idx, images, boot in prefetcher(data, 0, a.batch_size, 0, steps, None, num_workers=2):
            frames += len(images) + len(boot)
        return {"seconds": time.perf_counter() - t, "frames": frames}
    raise ValueError(stage)


def run_stage(stage: str, path: Path, work: Path, a) -> dict:
    """The stage in a fresh process: its own figures plus the peak RSS of its process tree (MB)."""
    cmd = [sys.executable, __file__, "--stage", stage, "--path", str(path), "--work", str(work),
           "--n", str(a.n), "--length", str(a.length), "--size", str(a.size), "--per-file", str(a.per_file),
           "--batch-size", str(a.batch_size)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "rss_mb": usage.ru_maxrss / 1024}


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, nargs=2, default=[100, 1000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--length", type=int, default=50, help="frames per episode")
    ap.add_argument("--size", type=int, default=64, help="frame height and width (px)")
    ap.add_argument("--per-file", type=int, default=50, help="episodes per data parquet and MP4")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--keep", action="store_true", help="keep the datasets and caches under outputs/bench/")
    # one stage in this process (what run_stage starts)
    ap.add_argument("--stage", choices=STAGES)
    ap.add_argument("--path", type=Path)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--n", type=int)
    a = ap.parse_args()
    if a.stage:
        os.environ.setdefault("TQDM_DISABLE", "1")
        import logging
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(stage_main(a.stage, a.path, a.work, a)))
        return

    root = OUT / "data_scale"
    shutil.rmtree(root, ignore_errors=True)
    results: dict[int, dict[str, dict]] = {}
    load_before = load()
    for n in a.episodes:
        a.n = n
        path, work = root / f"ds{n}", root / f"run{n}"
        work.mkdir(parents=True)
        results[n] = {}
        for stage in STAGES:
            results[n][stage] = r = run_stage(stage, path, work, a)
            print(f"{n} episodes, {stage}: {r['seconds']:.2f} s, {r['rss_mb']:.0f} MB peak RSS", flush=True)
    small, large = a.episodes
    rows = []
    for stage in STAGES:
        s, g = results[small][stage], results[large][stage]
        rows.append([LABELS[stage], f"{s['seconds']:.2f}", f"{g['seconds']:.2f}", f"{g['seconds'] / s['seconds']:.1f}",
                     f"{s['rss_mb']:.0f}", f"{g['rss_mb']:.0f}", f"{g['rss_mb'] / s['rss_mb']:.2f}",
                     f"{g.get('fps', g['frames'] / g['seconds']):.0f}"])
    table(f"data layer at {small} and {large} episodes ({a.length} frames each, {a.size}x{a.size} px, "
          f"{a.per_file} episodes per file); {machine()}; load average {load_before} before, {load()} after",
          ["stage", f"{small} ep s", f"{large} ep s", "time x", f"{small} ep peak RSS MB",
           f"{large} ep peak RSS MB", "RSS x", f"frames/s at {large} ep"], rows)
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
