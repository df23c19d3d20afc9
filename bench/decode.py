"""Actions/second of argmax-Q decoding for the default model, with and without the KV cache, and for
each supported architecture's small config (same prompt, D=4).

    python bench/decode.py [--batch 1 10] [--device cuda --dtype bfloat16 --compile] [--archs ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import OUT, episodes, machine, table, timeit  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--bins", type=int, default=256)
    ap.add_argument("--presets", nargs="+", default=["tiny", "tiny_scratch"],
                    help="compact presets: tiny (default, EfficientNet tower), tiny_scratch (earlier default)")
    ap.add_argument("--archs", nargs="*", default=None, help="small-config architectures (default: all)")
    a = ap.parse_args()
    eps = episodes()
    rows = []
    for preset in a.presets:
        pol = _policy(eps, a, preset)
        for n in a.batch:
            imgs, instr, st = _inputs(eps, n)
            res = {}
            for mode in ("argmax_q", "paper"):
                for cache in (False, True):
                    t = timeit(lambda: pol.adapter.decode(imgs, instr, st, mode=mode,
                                                          behavior_model=pol.behavior_model, use_cache=cache),
                               repeat=10)
                    res[(mode, cache)] = t
                rows.append([preset, n, mode, f"{n / res[(mode, False)]:.1f}", f"{n / res[(mode, True)]:.1f}",
                             f"{res[(mode, False)] / res[(mode, True)]:.2f}x"])
    table(f"decode: actions/s from camera frames (image tower included), compact model (D=4, B={a.bins}), "
          f"{a.device} {a.dtype}{' compiled' if a.compile else ''} — {machine()}",
          ["preset", "batch", "mode", "no cache", "KV cache", "speed-up"], rows)
    arch_table(eps, a, pol.action_tokenizer)


def _policy(eps, a, preset: str):
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.config import load_config
    from qsft_robot.train.trainer import train

    ckpt = train(load_config(None, [f"train.out_dir={OUT / ('decode_run_' + preset)}", "train.steps=1",
                                    "train.batch_size=4", f"algo.num_bins={a.bins}", f"model.preset={preset}"]), eps)
    pol = load_policy(ckpt, device=a.device)
    dtype = getattr(torch, a.dtype)
    pol.adapter.model.to(dtype)
    if pol.behavior_model is not None:
        pol.behavior_model.to(dtype)
    if a.compile:
        pol.adapter.model.forward = torch.compile(pol.adapter.model.forward, dynamic=True)
    return pol


def _inputs(eps, n):
    cam = next(iter(eps[0].images))
    imgs = np.stack([eps[i % len(eps)].images[cam][:1] for i in range(n)])
    instr = [eps[i % len(eps)].instruction for i in range(n)]
    st = np.stack([eps[i % len(eps)].state[0] for i in range(n)])
    return imgs, instr, st


def arch_table(eps, a, action_tokenizer):
    """Each family through its own processor/input layout: hidden 128, 2+2 layers, random weights."""
    from qsft_robot.models.small_vlms import ARCHS, build_small_vlm
    from qsft_robot.models.vlm_adapter import VLMAdapter

    rows = []
    words = sorted({w for e in eps for w in e.instruction.split()})
    for arch in a.archs if a.archs is not None else ARCHS:
        model, proc = VLMAdapter.from_pretrained(build_small_vlm(arch, OUT / "archs" / arch, words, hidden=128),
                                                 device=a.device, dtype=getattr(torch, a.dtype))
        VLMAdapter.add_action_vocab(model, proc, action_tokenizer)
        ad = VLMAdapter(model.eval(), proc, action_tokenizer)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        for n in a.batch:
            imgs, instr, st = _inputs(eps, n)
            t = {c: timeit(lambda: ad.decode(imgs, instr, st, use_cache=c), repeat=5) for c in (False, True)}
            rows.append([arch, f"{n_params:.2f}M", n, f"{n / t[False]:.1f}", f"{n / t[True]:.1f}",
                         f"{t[False] / t[True]:.2f}x"])
    table(f"decode per architecture (small configs, argmax_q, D=4, B={action_tokenizer.bins[0]}), "
          f"{a.device} {a.dtype} — {machine()}", ["arch", "params", "batch", "no cache", "KV cache", "speed-up"],
          rows)


if __name__ == "__main__":
    main()
