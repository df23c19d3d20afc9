"""The plain-operation single-token step (models/llama_step.py) against transformers' LlamaModel.forward,
and the decoders it must leave to the module path."""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaModel

from qsft_robot.models import llama_step


def _decoder(**kw) -> LlamaModel:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kw.pop("kv", 4), **kw)
    dec = LlamaModel(cfg).eval()
    with torch.no_grad():   # non-trivial norm scales, so a norm applied in the wrong place shows
        for name, p in dec.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return dec


@pytest.mark.parametrize("dtype,kv", [(torch.float32, 4), (torch.float32, 2), (torch.bfloat16, 4)],
                         ids=["fp32", "fp32-gqa", "bf16"])
def test_prefill_and_steps_equal_the_module_and_fill_the_same_cache(dtype, kv):
    """A 7-token prefill, then three steps, batch 2: hidden states and every layer's keys/values agree."""
    dec = _decoder(kv=kv).to(dtype)
    prompt, steps = torch.randint(0, 50, (2, 7)), torch.randint(0, 50, (2, 3))
    positions = torch.arange(7, 10)[None].expand(2, -1)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    with torch.no_grad():
        ref_cache, fast_cache = DynamicCache(config=dec.config), DynamicCache(config=dec.config)
        ref = dec(input_ids=prompt, cache=ref_cache, use_cache=True).last_hidden_state
        step = llama_step.LlamaStep(dec, positions)
        got = step.prefill(dec.embed_tokens(prompt), torch.arange(7)[None].expand(2, -1), fast_cache)
        torch.testing.assert_close(got, ref, **tol)   # every prompt position: the causal mask is right
        for s in range(3):
            ref = dec(input_ids=steps[:, s:s + 1], position_ids=positions[:, s:s + 1], cache=ref_cache,
                      use_cache=True).last_hidden_state[:, -1]
            got = step(steps[:, s], s, fast_cache)
            assert got.dtype == ref.dtype and got.shape == ref.shape == (2, 64)
            torch.testing.assert_close(got, ref, **tol)
    assert fast_cache.get_seq_length() == ref_cache.get_seq_length() == 10
    for a, b in zip(fast_cache.layers, ref_cache.layers):
        torch.testing.assert_close(a.keys, b.keys, **tol)
        torch.testing.assert_close(a.values, b.values, **tol)


def test_a_wrong_position_is_caught():
    """The comparison above is sharp: one position off changes the hidden state (rotary angles)."""
    dec = _decoder()
    prompt, tok = torch.randint(0, 50, (1, 5)), torch.randint(0, 50, (1,))
    with torch.no_grad():
        outs = []
        for pos in (5, 6):
            cache = DynamicCache(config=dec.config)
            dec(input_ids=prompt, cache=cache, use_cache=True)
            outs.append(llama_step.LlamaStep(dec, torch.tensor([[pos]]))(tok, 0, cache))
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_plain_prefill_leaves_a_padded_prompt_to_the_module():
    """Inside `plain_prefill` the decoder's call still honours a padding mask (the plain path has only the
    causal one), and takes the plain path for an unpadded prompt; afterwards the class forward is back."""
    dec = _decoder()
    embeds = dec.embed_tokens(torch.randint(0, 50, (2, 6)))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = dec(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                  cache=DynamicCache(config=dec.config), use_cache=True).last_hidden_state
        calls = []
        step = llama_step.LlamaStep(dec)
        prefill = step.prefill
        step.prefill = lambda *a: calls.append(1) or prefill(*a)
        with llama_step.plain_prefill(step):
            padded = dec(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                         cache=DynamicCache(config=dec.config), use_cache=True).last_hidden_state
            assert not calls
            dec(inputs_embeds=embeds, attention_mask=torch.ones_like(mask), cache=DynamicCache(config=dec.config),
                use_cache=True)
            assert calls == [1]
    torch.testing.assert_close(padded[:, 2:], ref[:, 2:])
    assert "forward" not in dec.__dict__


class _Quantised(torch.nn.Linear):
    """Stands for any Linear replacement (LoRA, quantised): its forward is not F.linear of .weight."""


@pytest.mark.parametrize("change", ["none", "bias", "rope_scaling", "gelu", "hook", "wrapped_layer", "not_llama"])
def test_only_the_exact_architecture_takes_the_step(change):
    kw = {"bias": dict(attention_bias=True), "gelu": dict(hidden_act="gelu"),
          "rope_scaling": dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})}
    dec = _decoder(**kw.get(change, {}))
    if change == "hook":
        dec.layers[1].mlp.register_forward_hook(lambda *a: None)
    if change == "wrapped_layer":
        old = dec.layers[0].self_attn.v_proj
        dec.layers[0].self_attn.v_proj = _Quantised(old.in_features, old.out_features, bias=False)
    if change == "not_llama":
        from transformers import Qwen2Config, Qwen2Model
        dec = Qwen2Model(Qwen2Config(vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=4))
    assert llama_step.supports(dec) == (change == "none")
