"""Seconds per training step on the default model and batch: SFT vs Q-SFT (joint pi_beta) vs Q-SFT
(frozen, cached pi_beta; per-token Bellman, n-step and return-to-go targets), measured in one run; ratios
against the default's SFT step and against `tiny_scratch` (CLIP-style tower trained from scratch, no feature
cache, 3 x 192 language model) as a baseline row, and the configurations docs/results.md compares: a 2 x 128
language model, and the stride-16 4 x 4 map at 64 px (16 image tokens, no position code) with 2 x 128 (S16) and
3 x 192 (S16-L192) language models.
The language model is ~90% of a step once the tower's features are cached and its matrix products are
most of that, so a step's cost follows (image + prompt tokens) x width^2.

    python bench/train_step.py [--batch 32 --steps 30]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, TINY_SCRATCH_CONFIG, episodes, machine, table  # noqa: E402


STRIDE16 = ["model.output_stride=16", "model.image_size=64", "model.position_channels=0"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    import shutil

    from qsft_robot.config import load_config
    from qsft_robot.train.trainer import Trainer

    eps = episodes(n=24)
    scratch = "sft, tiny_scratch"   # configs/model_tiny_scratch.yaml
    variants = {scratch: ["algo.name=sft"],
                "sft": ["algo.name=sft"],
                "sft, 2 x 128 language model": ["algo.name=sft", "model.text_hidden=128"],
                "sft, S16: stride-16 4 x 4 map at 64 px, 2 x 128": [
                    "algo.name=sft", *STRIDE16, "model.text_hidden=128"],
                "sft, S16-L192: stride-16 map, 3 x 192": [
                    "algo.name=sft", *STRIDE16, "model.text_hidden=192", "model.text_layers=3"],
                "qsft joint": ["algo.name=qsft", "algo.behavior=joint"],
                "qsft frozen+cached, bellman per token (theta_bar over P_t and P_t+1)": [
                    "algo.name=qsft", "algo.behavior=frozen", "algo.behavior_steps=0"],
                "qsft frozen+cached, n_step EMaQ (theta_bar over P_t+n only)": [
                    "algo.name=qsft", "algo.behavior=frozen", "algo.behavior_steps=0", "algo.target=n_step",
                    "algo.next_value=emaq"],
                "qsft frozen+cached, return_to_go": ["algo.name=qsft", "algo.behavior=frozen", "algo.behavior_steps=0",
                                                     "algo.target=return_to_go"]}
    times = {}
    for name, sets in variants.items():
        run = OUT / f"train_step_{''.join(c if c.isalnum() else '_' for c in name)}"
        shutil.rmtree(run, ignore_errors=True)
        tr = Trainer(load_config(TINY_SCRATCH_CONFIG if name == scratch else None,
                                 sets + [f"train.out_dir={run}", f"train.batch_size={a.batch}",
                                         "train.steps=100000", "train.save_every=100000"]), eps)
        if tr.frozen_behavior_due():
            tr.pi_cache = tr.build_behavior_cache()  # one-off cost per dataset, outside the step time
        tr.train_step()  # warm-up
        t = time.perf_counter()
        for _ in range(a.steps):
            tr.train_step()
        times[name] = (time.perf_counter() - t) / a.steps
    baseline = times[scratch]
    rows = [[k, f"{v:.3f}", f"{v / times['sft']:.2f}x", f"{v / baseline:.2f}x"] for k, v in times.items()]
    table(f"train step, default model (frozen EfficientNet tower, cached features), batch {a.batch} — {machine()}",
          ["algorithm", "s/step", "vs SFT", "vs tiny_scratch's SFT"], rows)


if __name__ == "__main__":
    main()
