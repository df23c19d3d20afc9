"""Adapter over HF image-text-to-text models: prompts, action-bin logits, KV-cached argmax decoding.

Everything model-specific lives here so that `algo/` only ever sees (N, B) logit matrices.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from qsft_robot.data.action_tokenizer import ActionTokenizer

logger = logging.getLogger(__name__)

DUMMY_TOKEN = "<act_dummy>"
PROMPT = "In: What action should the robot take to {instruction}?"


def format_state(state) -> str:
    """Proprio state as text: no new parameters, works with any tokenizer (DESIGN: no new heads)."""
    return " ".join(f"{float(x):.2f}" for x in np.asarray(state).ravel())


def build_prompt(instruction: str, state=None) -> str:
    text = PROMPT.format(instruction=instruction.strip().rstrip("?."))
    if state is not None:
        text += " State: " + format_state(state)
    return text + "\nOut:"


@dataclass
class Batch:
    """Tokenised prompts (left-padded) and preprocessed images, on the model's device."""
    input_ids: Tensor
    attention_mask: Tensor
    pixel_values: Tensor


class VLMAdapter:
    """Wraps one HF VLM (+ its processor) and the action tokenizer that gives bins vocabulary ids."""

    def __init__(self, model, processor, action_tokenizer: ActionTokenizer, use_state: bool = True,
                 leftover: str = "dummy"):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.action_tokenizer = action_tokenizer
        self.use_state = use_state
        self.leftover = leftover
        cfg = model.config
        self.image_token_id = int(getattr(cfg, "image_token_index", getattr(cfg, "image_token_id", -1)))
        self.image_seq_length = int(getattr(cfg, "image_seq_length", 0))
        ids = list(action_tokenizer.vocab_ids)
        if leftover == "dummy":
            ids.append(int(self.tokenizer.convert_tokens_to_ids(DUMMY_TOKEN)))
        self.logit_ids = torch.tensor(ids, dtype=torch.long)
        self.bin_token_ids = torch.tensor(action_tokenizer.vocab_ids, dtype=torch.long)

    # ---- construction -------------------------------------------------------------------------
    @staticmethod
    def add_action_vocab(model, processor, action_tokenizer: ActionTokenizer, mapping: str = "added_tokens"):
        """Give the bins (and the dummy token) vocabulary ids; resizes embeddings for added tokens."""
        action_tokenizer.assign_vocab(processor.tokenizer, model, mapping=mapping)
        if DUMMY_TOKEN not in processor.tokenizer.get_vocab():
            processor.tokenizer.add_tokens([DUMMY_TOKEN], special_tokens=True)
            model.resize_token_embeddings(len(processor.tokenizer))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", dtype=None, **kw):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no HF model folder at {path} (config.json missing)")
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or torch.float32).to(device)
        processor = AutoProcessor.from_pretrained(path)
        return model, processor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_dims(self) -> int:
        return self.action_tokenizer.num_dims

    # ---- inputs -------------------------------------------------------------------------------
    def preprocess_images(self, images: np.ndarray) -> Tensor:
        """(N, cams, H, W, 3) uint8 -> (N * cams, 3, h, w) normalised, with the processor's settings.

        Done in torch, batched, instead of the processor's per-image PIL path: same arithmetic,
        ~100x faster on a training batch.
        """
        ip = self.processor.image_processor
        size = ip.crop_size["height"] if getattr(ip, "crop_size", None) else ip.size["height"]
        x = torch.as_tensor(np.ascontiguousarray(images), device=self.device)
        if x.ndim == 4:
            x = x[:, None]
        n, cams = x.shape[:2]
        x = x.reshape(n * cams, *x.shape[2:]).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(ip.image_mean, device=x.device)[None, :, None, None]
        std = torch.tensor(ip.image_std, device=x.device)[None, :, None, None]
        return ((x - mean) / std).to(self.model.dtype)

    def encode(self, images: np.ndarray, instructions: list[str], states=None,
               action_tokens: np.ndarray | None = None) -> Batch:
        """Prompt (+ optional teacher-forced action tokens b^1..b^k) for each sample, left-padded."""
        n_cams = 1 if images.ndim == 4 else images.shape[1]
        image_part = "".join(["<image>" * self.image_seq_length] * n_cams)
        texts = [image_part + build_prompt(ins, st if self.use_state else None)
                 for ins, st in zip(instructions, states if states is not None else [None] * len(instructions))]
        enc = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        bos = self.tokenizer.bos_token_id
        if action_tokens is not None:
            vid = self.bin_token_ids.numpy()[np.asarray(action_tokens)]
            enc = [([bos] if bos is not None else []) + e + vid[i].tolist() for i, e in enumerate(enc)]
        else:
            enc = [([bos] if bos is not None else []) + e for e in enc]
        length = max(len(e) for e in enc)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(enc), length), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), length), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, length - len(e):] = torch.tensor(e)
            mask[i, length - len(e):] = 1
        return Batch(ids.to(self.device), mask.to(self.device), self.preprocess_images(images))

    # ---- logits -------------------------------------------------------------------------------
    @staticmethod
    def positions(attention_mask: Tensor) -> Tensor:
        """Position ids under left padding: count real tokens only."""
        return (attention_mask.cumsum(-1) - 1).clamp_min(0)

    def _forward(self, model, batch: Batch, keep: int):
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     pixel_values=batch.pixel_values, position_ids=self.positions(batch.attention_mask),
                     logits_to_keep=keep, use_cache=False)

    def action_logits(self, model, batch: Batch, keep: int, with_dummy: bool) -> Tensor:
        """(N, keep, B[+1]) logits restricted to the action bins at the last `keep` positions."""
        logits = self._forward(model, batch, keep).logits[:, -keep:]
        ids = self.logit_ids if with_dummy else self.bin_token_ids
        return logits[..., ids.to(logits.device)].float()

    def teacher_forced_logits(self, model, images, instructions, states, tokens, with_dummy: bool) -> Tensor:
        """(N, D, B[+1]): logits for b^1..b^D given prompt and b^1..b^{D-1} (one forward)."""
        batch = self.encode(images, instructions, states, np.asarray(tokens)[:, :-1])
        return self.action_logits(model, batch, self.num_dims, with_dummy)

    # ---- acting -------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, images, instructions, states=None, mode: str = "argmax_q", behavior_model=None,
               beta: float = 1.0, sample: bool = False, support_eps: float | None = None,
               use_cache: bool = True, generator: torch.Generator | None = None) -> np.ndarray:
        """Greedy (or sampled) action tokens, one dimension at a time; (N, D) bin ids.

        With use_cache the prompt is prefilled once and each of the D-1 further tokens is one cached
        step; without it every dimension re-runs the whole sequence (kept for the equality test).
        """
        if mode not in ("argmax_q", "paper", "sft"):
            raise ValueError(f"unknown acting mode {mode!r}")
        batch = self.encode(images, instructions, states)
        need_behavior = mode == "paper" or (mode == "argmax_q" and support_eps is not None)
        if need_behavior and behavior_model is None:
            raise ValueError(f"mode {mode!r} (support_eps={support_eps}) needs the behaviour model")
        # models[0] scores the bins: theta, or pi_beta itself for 'sft'; models[1] is pi_beta if needed
        first = (behavior_model or self.model) if mode == "sft" else self.model
        models = [first] + ([behavior_model] if need_behavior else [])
        mask_bins = torch.as_tensor(self.action_tokenizer.bin_mask(), device=self.device)
        caches = [None] * len(models)
        ids, attn = batch.input_ids, batch.attention_mask
        pos = self.positions(attn)
        chosen = []
        step_ids, step_pos, pix = ids, pos, batch.pixel_values
        for d in range(self.num_dims):
            dist = []
            for k, m in enumerate(models):
                if use_cache:
                    out = m(input_ids=step_ids, attention_mask=attn, position_ids=step_pos, pixel_values=pix,
                            past_key_values=caches[k], use_cache=True, logits_to_keep=1)
                    caches[k] = out.past_key_values
                else:
                    out = m(input_ids=ids, attention_mask=attn, position_ids=pos, pixel_values=batch.pixel_values,
                            use_cache=False, logits_to_keep=1)
                # theta's p over real bins is softmax over bins + dummy (when present), sliced to B
                ids_k = self.logit_ids if (k == 0 and mode != "sft") else self.bin_token_ids
                dist.append(out.logits[:, -1, ids_k.to(self.device)].float())
            probs = []
            for x in dist:
                keep = F.pad(mask_bins[d], (0, x.shape[-1] - mask_bins.shape[-1]), value=True)
                probs.append(x.masked_fill(~keep, float("-inf")).softmax(-1)[:, : mask_bins.shape[-1]])
            if mode == "paper":  # pi_tilde ~ pi_beta * exp(beta * p_theta)
                score = probs[1].log() + beta * probs[0]
            else:
                score = probs[0].log()
            if need_behavior and support_eps is not None:
                score = score.masked_fill(probs[1] <= support_eps, float("-inf"))
            if sample:
                b = torch.multinomial(score.softmax(-1), 1, generator=generator).squeeze(-1)
            else:
                b = score.argmax(-1)
            chosen.append(b)
            tok = self.bin_token_ids.to(self.device)[b][:, None]
            ids = torch.cat([ids, tok], dim=1)
            attn = torch.cat([attn, torch.ones_like(tok)], dim=1)
            pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
            step_ids, step_pos, pix = tok, pos[:, -1:], None
        return torch.stack(chosen, dim=1).cpu().numpy()
