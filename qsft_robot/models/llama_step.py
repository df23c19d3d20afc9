"""One single-token decode step of a Llama-architecture text decoder, as plain tensor operations.

Why hand-written instead of calling `LlamaModel.forward` with one token: at batch 1 on a CPU the small
default's step is ~40 tensor operations, and transformers' per-call machinery around them (keyword
merging and output-capture decorators, the causal-mask builder, rotary recomputation, the output
dataclasses, per-module hooks, even `Module.__getattr__` for each weight) costs as much as the
operations themselves: 1.28 ms a step through the module against ~0.6 ms for the same operations here
(bench/decode.py). Acting makes D-1 such steps per model per action, so they decide what a KV cache
gains. Nothing else changes: the weights are the modules' own parameters (referenced, never copied, so
a model that keeps training is never stale), the key/value cache is the transformers `Cache` the
prefill filled (through its `update`), and the prefill still runs through the model's own forward. Only
the exact architecture is taken (`supports`); anything else (LoRA or quantised layers, rotary scaling,
biases, other activations, hooks, a padding mask, a static cache) stays on the module path.
tests/test_decode_fast_step.py checks hidden states and cache against `LlamaModel.forward`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def supports(decoder: torch.nn.Module) -> bool:
    """Whether `decoder` is a plain transformers LlamaModel this step reproduces exactly."""
    from transformers.models.llama.modeling_llama import LlamaModel

    if type(decoder) is not LlamaModel:
        return False
    cfg = decoder.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default" or getattr(cfg, "hidden_act", "") != "silu":
        return False
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return False
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    if decoder.training and getattr(cfg, "attention_dropout", 0.0):
        return False
    for module in decoder.modules():   # FSDP, accelerate offloading, user hooks: they must keep running
        if module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__:
            return False
    for layer in decoder.layers:
        a, m = layer.self_attn, layer.mlp
        linears = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
        if any(type(x) is not torch.nn.Linear for x in linears):   # a LoRA or quantised layer
            return False
    return True


class LlamaStep:
    """Single-token steps for one decode: rotary cos/sin for the D-1 step positions built once."""

    def __init__(self, decoder: torch.nn.Module, positions: Tensor):
        """positions: (N, S) the position ids of the S steps to come."""
        cfg = decoder.config
        self.decoder = decoder
        self.eps = cfg.rms_norm_eps
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        dtype = decoder.embed_tokens.weight.dtype
        cos, sin = decoder.rotary_emb(torch.empty(0, dtype=dtype, device=positions.device), positions)
        self.cos, self.sin = cos[:, None], sin[:, None]   # (N, 1, S, head_dim): broadcast over heads
        # the parameters themselves (module attribute lookups cost as much as a small matmul here)
        self.embed, self.final_norm = decoder.embed_tokens.weight, decoder.norm.weight
        self.layers = [(ly.input_layernorm.weight, ly.self_attn.q_proj.weight, ly.self_attn.k_proj.weight,
                        ly.self_attn.v_proj.weight, ly.self_attn.o_proj.weight, ly.post_attention_layernorm.weight,
                        ly.mlp.gate_proj.weight, ly.mlp.up_proj.weight, ly.mlp.down_proj.weight)
                       for ly in decoder.layers]

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        # LlamaRMSNorm: statistics in float32, the scale applied in the input dtype
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = self.head_dim // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin

    def __call__(self, tokens: Tensor, step: int, cache) -> Tensor:
        """tokens (N,) ids at step `step` (0-based) -> (N, hidden) final-normed hidden state; fills `cache`."""
        n, hd = tokens.shape[0], self.head_dim
        h = F.embedding(tokens[:, None], self.embed)          # (N, 1, hidden)
        cos, sin = self.cos[:, :, step:step + 1], self.sin[:, :, step:step + 1]
        for i, (w_in, wq, wk, wv, wo, w_post, wg, wu, wd) in enumerate(self.layers):
            x = self._norm(h, w_in)
            q = self._rotate(F.linear(x, wq).view(n, 1, self.n_heads, hd).transpose(1, 2), cos, sin)
            k = self._rotate(F.linear(x, wk).view(n, 1, self.n_kv, hd).transpose(1, 2), cos, sin)
            k, v = cache.update(k, F.linear(x, wv).view(n, 1, self.n_kv, hd).transpose(1, 2), i)
            # one query against every cached position: nothing to mask without padding
            o = F.scaled_dot_product_attention(q, k, v, scale=self.scaling, enable_gqa=self.n_kv != self.n_heads)
            h = h + F.linear(o.transpose(1, 2).reshape(n, 1, -1), wo)
            x = self._norm(h, w_post)
            h = h + F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)
        return self._norm(h, self.final_norm)[:, -1]
