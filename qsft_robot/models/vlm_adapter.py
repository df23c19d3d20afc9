"""Adapter over HF image-text-to-text models: prompts, action-bin logits, KV-cached argmax decoding.

Everything model-specific lives here so that `algo/` only ever sees (N, B) logit matrices.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from qsft_robot.algo.qsft import support_mask
from qsft_robot.data.action_tokenizer import ActionTokenizer
from qsft_robot.models.families import (Batch, encode_prompts, family_of, image_placeholder, load_processor,
                                        normalise_images, vision_encoder)

logger = logging.getLogger(__name__)

DUMMY_TOKEN = "<act_dummy>"
PROMPT = "In: What action should the robot take to {instruction}?"


def format_state(state) -> str:
    """Proprio state as text: no new parameters, works with any tokenizer (DESIGN: no new heads)."""
    return " ".join(f"{float(x):.2f}" for x in np.asarray(state).ravel())


def build_prompt(instruction: str, state=None, image_part: str = "", image_position: str = "first") -> str:
    """OpenVLA prompt; the image tokens go first (LLaVA's layout) or right after the question.

    Why 'after_instruction' exists: in a causal decoder the image tokens can then attend to the
    instruction, so each patch could ask "is this the object named?" in the first layer. Measured on
    the compact default it did not help: a colour-word -> image-region probe stayed at chance after
    300 steps in both layouts, so 'first' stays the default.
    """
    question = PROMPT.format(instruction=instruction.strip().rstrip("?."))
    text = image_part + question if image_position == "first" else question + " " + image_part
    if state is not None:
        text += " State: " + format_state(state)
    return text + "\nOut:"


def _last_token(full: Batch) -> Batch:
    """Inputs of one cached decoding step: the newest token, its position, the full attention mask."""
    return Batch(full.input_ids[:, -1:], full.attention_mask, full.position_ids[..., -1:], None, {})


class VLMAdapter:
    """Wraps one HF VLM (+ its processor) and the action tokenizer that gives bins vocabulary ids."""

    def __init__(self, model, processor, action_tokenizer: ActionTokenizer, use_state: bool = True,
                 leftover: str = "dummy", image_position: str = "first"):
        if image_position not in ("first", "after_instruction"):
            raise ValueError(f"image_position must be 'first' or 'after_instruction', got {image_position!r}")
        self.image_position = image_position
        self.model = model
        self.family = family_of(model)
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
        from transformers import AutoModelForImageTextToText

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no HF model folder at {path} (config.json missing)")
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or torch.float32).to(device)
        return model, load_processor(path, model.config.model_type)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_dims(self) -> int:
        return self.action_tokenizer.num_dims

    # ---- inputs -------------------------------------------------------------------------------
    def encode(self, images: np.ndarray, instructions: list[str], states=None,
               action_tokens: np.ndarray | None = None) -> Batch:
        """Prompt (+ optional teacher-forced action tokens b^1..b^k) for each sample, left-padded.

        images: (N, H, W, 3) or (N, cams, H, W, 3) uint8, or the frozen tower's cached feature maps
        (N, cams, C, h, w) float (see `image_features`).
        """
        images = np.asarray(images)
        if images.ndim == 4:
            images = images[:, None]
        image_part = image_placeholder(self.family, self.processor, images.shape[1], self.image_seq_length)
        texts = [build_prompt(ins, st if self.use_state else None, image_part, self.image_position)
                 for ins, st in zip(instructions, states if states is not None else [None] * len(instructions))]
        batch = encode_prompts(self, images, texts)
        if action_tokens is not None:
            batch = batch.appended(
                self.bin_token_ids.to(self.device)[torch.as_tensor(np.asarray(action_tokens), device=self.device)])
        return batch

    # ---- frozen image features ---------------------------------------------------------------
    def feature_cache_key(self) -> dict | None:
        """What decides the frozen tower's features, or None when they cannot be cached (the tower
        trains, or it is not the compact default's EfficientNet tower)."""
        from qsft_robot.models.efficientnet_tower import EfficientNetLiteVisionModel, weights_id
        if self.family != "llava":
            return None
        tower = vision_encoder(self.model)
        if not isinstance(tower, EfficientNetLiteVisionModel) or any(p.requires_grad for p in tower.parameters()):
            return None
        ip = self.processor.image_processor
        return {"tower": type(tower).__name__, "weights": weights_id(), "image_size": tower.config.image_size,
                "output_stride": tower.config.output_stride, "mean": list(ip.image_mean), "std": list(ip.image_std),
                "size": dict(ip.crop_size or ip.size), "dtype": str(self.model.dtype)}

    @torch.no_grad()
    def image_features(self, frames: np.ndarray) -> np.ndarray:
        """(n, cams, H, W, 3) uint8 -> (n, cams, C, h, w) float32 feature maps of the frozen tower,
        through the same normalisation as every other path."""
        frames = np.asarray(frames)
        x = normalise_images(self, torch.as_tensor(np.ascontiguousarray(frames), device=self.device))
        fmap = vision_encoder(self.model).feature_map(x).float()
        return fmap.reshape(frames.shape[0], frames.shape[1], *fmap.shape[1:]).cpu().numpy()

    # ---- logits -------------------------------------------------------------------------------
    def _forward(self, model, batch: Batch, keep: int):
        return model(**batch.model_inputs(), logits_to_keep=keep, use_cache=False)

    def action_logits(self, model, batch: Batch, keep: int, with_dummy: bool) -> Tensor:
        """(N, keep, B[+1]) logits restricted to the action bins at the last `keep` positions."""
        logits = self._forward(model, batch, keep).logits[:, -keep:]
        ids = self.logit_ids if with_dummy else self.bin_token_ids
        return logits[..., ids.to(logits.device)].float()

    def teacher_forced_logits(self, model, images, instructions, states, tokens, with_dummy: bool) -> Tensor:
        """(N, D, B[+1]): logits for b^1..b^D given prompt and b^1..b^{D-1} (one forward)."""
        batch = self.encode(images, instructions, states, np.asarray(tokens)[:, :-1])
        return self.action_logits(model, batch, self.num_dims, with_dummy)

    def teacher_forced_and_next_logits(self, model, images, instructions, states, tokens, next_images,
                                       next_instructions, next_states, next_tokens,
                                       with_dummy: bool) -> tuple[Tensor, Tensor]:
        """(N, D, B[+1]) at (P_t, b_t^{1:D-1}) and (N, B[+1]) at the end of P_{t+1}, in ONE forward
        (DESIGN §2.4 asks for one call). The next prompts carry their own logged tokens so both halves
        have one shape; a causal model's logits at the end of P_{t+1} do not see them."""
        n = len(instructions)
        cat = lambda a, b: None if a is None else np.concatenate([np.asarray(a), np.asarray(b)])  # noqa: E731
        both = self.teacher_forced_logits(model, cat(images, next_images), list(instructions) + list(next_instructions),
                                          cat(states, next_states), cat(tokens, next_tokens), with_dummy)
        return both[:n], both[n:, 0]

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
        full = batch           # the whole sequence so far (uncached path and positions)
        step = batch           # what the next cached call feeds: the prompt first, then one token
        chosen = []
        for d in range(self.num_dims):
            dist = []
            for k, m in enumerate(models):
                if use_cache:
                    out = m(**step.model_inputs(with_images=d == 0), past_key_values=caches[k], use_cache=True,
                            logits_to_keep=1)
                    caches[k] = out.past_key_values
                else:
                    out = m(**full.model_inputs(), use_cache=False, logits_to_keep=1)
                # theta's p over real bins is softmax over bins + dummy (when present), sliced to B
                ids_k = self.logit_ids if (k == 0 and mode != "sft") else self.bin_token_ids
                dist.append(out.logits[:, -1, ids_k.to(self.device)].float())
            logp = []  # log-softmax, not softmax().log(): a probability that underflows to 0 must still rank
            for x in dist:
                keep = F.pad(mask_bins[d], (0, x.shape[-1] - mask_bins.shape[-1]), value=True)
                logp.append(x.masked_fill(~keep, float("-inf")).log_softmax(-1)[:, : mask_bins.shape[-1]])
            if mode == "paper":  # pi_tilde ~ pi_beta * exp(beta * p_theta)
                score = logp[1] + beta * logp[0].exp()
            else:
                score = logp[0]
            if need_behavior and support_eps is not None:
                score = score.masked_fill(~support_mask(logp[1].exp(), support_eps), float("-inf"))
            if sample:
                b = torch.multinomial(score.softmax(-1), 1, generator=generator).squeeze(-1)
            else:
                b = score.argmax(-1)
            chosen.append(b)
            full = full.appended(self.bin_token_ids.to(self.device)[b])
            step = _last_token(full)
        return torch.stack(chosen, dim=1).cpu().numpy()
