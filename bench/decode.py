"""Actions/second of argmax-Q decoding: uncached, KV-cached, and the cache's limit, measured in the same
run, for the default model and for each supported architecture's small config (same prompt, D=4).

The limit is what a KV cache allows at best with the same model and inputs: one prefill forward of the
encoded prompt plus D-1 single-token forwards, called directly on the HF model (prompt encoding, bin
masks and the choice of a token outside the timing, a `DynamicCache`, masks and positions prepared
beforehand). `cached / limit` near 1 means the project's decode adds nothing on top of the model; below 1
it is faster than the model's own cached forward: a plain-Llama decoder (the default, LLaVA, Idefics3,
SmolVLM2) runs its prefill and single-token steps as plain tensor operations (models/llama_step.py), and
the "module step" column is the same decode with the decoder module doing both instead.
Times are the best of --repeat interleaved rounds (the machine may be shared; see `timed`).

    python bench/decode.py [--batch 1 10] [--device cuda --dtype bfloat16 --compile --static-cache] [--archs ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import OUT, TINY_SCRATCH_CONFIG, episodes, machine, table  # noqa: E402


def timed(fns: dict, repeat: int = 20, warmup: int = 3) -> dict:
    """Best (minimum) seconds per call of each function, the functions interleaved round by round so
    that a burst of load from other jobs lands on all of them alike; on a shared machine the minimum
    is the estimate of the uncontended time (a mean or median carries other jobs' load)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    ts = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ts[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in ts.items()}


@torch.no_grad()
def limit_decode(models, batch, num_dims: int) -> None:
    """The limit for `models` (theta, and pi_beta where the mode needs it): per model one prefill of the
    already-encoded prompt + num_dims-1 single-token forwards, each a plain call of the HF model."""
    from transformers import DynamicCache

    n, length = batch.input_ids.shape
    mask = torch.cat([batch.attention_mask, batch.attention_mask.new_ones(n, num_dims)], 1)
    pos = [batch.position_ids[..., -1:] + d for d in range(1, num_dims)]
    for m in models:
        cache = DynamicCache(config=m.config)
        out = m(**batch.model_inputs(), cache=cache, use_cache=True, logits_to_keep=1)
        for d in range(1, num_dims):
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            out = m(input_ids=tok, attention_mask=mask[:, :length + d], position_ids=pos[d - 1], cache=cache,
                    use_cache=True, logits_to_keep=1)


def measure(adapter, imgs, instr, st, repeat: int, mode: str = "argmax_q", behavior_model=None,
            support_eps=None) -> dict:
    """Seconds per batch: uncached decode, cached decode, the limit (and prompt encoding alone)."""
    kw = dict(mode=mode, behavior_model=behavior_model, support_eps=support_eps)
    batch = adapter.encode(imgs, instr, st)
    need_behavior = mode == "tilted_behavior" or support_eps is not None
    first = behavior_model if mode == "argmax_behavior" else adapter.model
    models = [first] + ([behavior_model] if need_behavior else [])
    def module_step():
        adapter.fast_step = False
        try:
            adapter.decode(imgs, instr, st, use_cache=True, **kw)
        finally:
            adapter.fast_step = True

    return timed({"uncached": lambda: adapter.decode(imgs, instr, st, use_cache=False, **kw),
                  "cached": lambda: adapter.decode(imgs, instr, st, use_cache=True, **kw),
                  "module step": module_step,
                  "limit": lambda: limit_decode(models, batch, adapter.num_dims),
                  "encode": lambda: adapter.encode(imgs, instr, st)}, repeat)


def row(label, n, t) -> list:
    return [*label, n, f"{n / t['uncached']:.1f}", f"{n / t['cached']:.1f}", f"{n / t['module step']:.1f}",
            f"{n / t['limit']:.1f}",
            f"{t['uncached'] / t['cached']:.2f}x", f"{t['cached'] / t['limit']:.2f}", f"{t['encode'] * 1e3:.1f}"]


COLS = ["batch", "no cache", "KV cache", "KV cache, module step", "limit", "cached vs uncached", "cached / limit",
        "encode ms"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model and its text decoder")
    ap.add_argument("--static-cache", action="store_true", help="StaticCache (prompt + D) instead of DynamicCache")
    ap.add_argument("--bins", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--presets", nargs="+", default=["tiny"],
                    help="tiny presets: tiny (default, EfficientNet tower), tiny_scratch (tower trained from scratch)")
    ap.add_argument("--archs", nargs="*", default=None, help="small-config architectures (default: all)")
    a = ap.parse_args()
    eps = episodes()
    rows = []
    for preset in a.presets:
        pol = _policy(eps, a, preset)
        # what the robot runs (Policy.act_tokens: argmax_q within pi_beta's support), theta alone, tilted_behavior
        variants = [("argmax_q+support", dict(mode="argmax_q", behavior_model=pol.behavior_model,
                                              support_eps=pol.support_eps)),
                    ("argmax_q", dict(mode="argmax_q")),
                    ("tilted_behavior", dict(mode="tilted_behavior", behavior_model=pol.behavior_model))]
        for n in a.batch:
            imgs, instr, st = _inputs(eps, n)
            for name, kw in variants:
                rows.append(row([preset, name], n, measure(pol.adapter, imgs, instr, st, a.repeat, **kw)))
    table(f"decode: actions/s from camera frames (image tower included), tiny model (D=4, B={a.bins}), "
          f"{_flags(a)} — {machine()}", ["preset", "mode", *COLS], rows)
    arch_table(eps, a, pol.action_tokenizer)


def _flags(a) -> str:
    return f"{a.device} {a.dtype}{' compiled' if a.compile else ''}{' static cache' if a.static_cache else ''}"


def _speed_flags(adapter, a) -> None:
    if a.static_cache:
        adapter.cache_implementation = "static"
    if a.compile:
        from qsft_robot.models.families import unwrap
        hf = unwrap(adapter.model)
        hf.forward = torch.compile(hf.forward, dynamic=True)
        dec = hf.get_decoder()
        dec.forward = torch.compile(dec.forward, dynamic=not a.static_cache)


def _policy(eps, a, preset: str):
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.config import load_config
    from qsft_robot.train.trainer import train

    import shutil
    run = OUT / f"decode_run_{preset}"
    shutil.rmtree(run, ignore_errors=True)  # a 1-step throwaway run: never resume one made by older code
    config = TINY_SCRATCH_CONFIG if preset == "tiny_scratch" else None  # configs/model_tiny_scratch.yaml
    ckpt = train(load_config(config, [f"train.out_dir={run}", "train.steps=1",
                                      "train.batch_size=4", f"algo.num_bins={a.bins}", f"model.preset={preset}"]), eps)
    pol = load_policy(ckpt, device=a.device)
    dtype = getattr(torch, a.dtype)
    pol.adapter.model.to(dtype)
    if pol.behavior_model is not None:
        pol.behavior_model.to(dtype)
    _speed_flags(pol.adapter, a)
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
        _speed_flags(ad, a)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        for n in a.batch:
            imgs, instr, st = _inputs(eps, n)
            rows.append(row([arch, f"{n_params:.2f}M"], n, measure(ad, imgs, instr, st, max(5, a.repeat // 2))))
    table(f"decode per architecture (small configs, argmax_q, D=4, B={action_tokenizer.bins[0]}), "
          f"{_flags(a)} — {machine()}", ["arch", "params", *COLS], rows)


if __name__ == "__main__":
    main()
