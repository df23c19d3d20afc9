"""Checks every model test makes the same way: a reloaded checkpoint's logits, no transformers deprecations."""
from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np
import torch


@contextlib.contextmanager
def no_transformers_deprecations():
    """Deprecation notices from transformers become test failures, so the next release's removal of an
    API the decoder uses is caught here, not by a user. transformers reports them two ways: FutureWarning
    (`deprecate_kwarg`, e.g. `past_key_values` -> `cache`) and its logger's `warning_once`, whose memo
    is cleared first (a notice already logged earlier in the session would otherwise stay silent)."""
    from transformers.utils import logging as hf_logging

    seen: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            if "deprecat" in record.getMessage().lower():
                seen.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    hf_logger = logging.getLogger("transformers")
    hf_logging.warning_once.cache_clear()
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            yield
    finally:
        hf_logger.removeHandler(handler)
    assert not seen, f"transformers logged deprecations: {seen}"


def reload_gives_the_same_logits(tr, ckpt, episodes, algo):
    """Load `ckpt` as a policy and check its teacher-forced logits equal the trainer's model's on the episodes'
    first frames: (the policy, images, instructions, states) for the checks after."""
    from qsft_robot.algo.policy import load_policy
    pol = load_policy(ckpt)
    images = np.stack([e.images["wrist"][0] for e in episodes])
    instr = [e.instruction for e in episodes]
    state = np.stack([e.state[0] for e in episodes])
    toks = tr.data.tokens[:len(episodes)]
    a = tr.adapter.teacher_forced_logits(tr.model.eval(), images, instr, state, toks, with_dummy=algo == "qsft")
    b = pol.adapter.teacher_forced_logits(pol.adapter.model, images, instr, state, toks, with_dummy=algo == "qsft")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    return pol, images, instr, state


def lora_base_weights(peft_model) -> dict:
    """A copy of the frozen base's weights (not the LoRA tensors, not the projector copies, which train, and
    theta_bar's, which move by Polyak), to compare after training."""
    return {n: p.detach().clone() for n, p in peft_model.named_parameters()
            if "lora_" not in n and "modules_to_save" not in n}


def check_lora_run(tr, ckpt, episodes, algo, base: dict):
    """What every LoRA run must give: the base untouched, a checkpoint of adapters only, a reload with the same
    logits, and KV-cached acting equal to the uncached path. Returns the reloaded policy."""
    for n, p in tr.model.peft_model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), f"base weight {n} changed"
    assert (ckpt / "model" / "adapter_model.safetensors").is_file()
    assert not list((ckpt / "model").glob("model*.safetensors")), "a LoRA checkpoint must not copy the base"
    pol, images, instr, state = reload_gives_the_same_logits(tr, ckpt, episodes, algo)
    with no_transformers_deprecations():  # the views switch adapters between the two models' cached steps
        kw = dict(mode=pol.mode, behavior_model=pol.behavior_model, support_eps=pol.support_eps)
        np.testing.assert_array_equal(pol.act_tokens(images[:, None], instr, state),
                                      pol.adapter.decode(images[:, None], instr, state, use_cache=False, **kw))
    return pol
