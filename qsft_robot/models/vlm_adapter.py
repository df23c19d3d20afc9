"""Adapter over HF image-text-to-text models: prompts, action-bin logits, KV-cached argmax decoding.

Everything model-specific lives here so that `algo/` only ever sees (N, B) logit matrices.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from qsft_robot.config import check_acting_mode
from qsft_robot.data.action_tokenizer import ActionTokenizer
from qsft_robot.models import llama_step
from qsft_robot.models.families import (Batch, encode_prompts, family_of, image_placeholder, load_processor,
                                        normalise_images, unwrap, vision_encoder)
from qsft_robot.models.support import support_mask

logger = logging.getLogger(__name__)

DUMMY_TOKEN = "<act_dummy>"
PROMPT = "In: What action should the robot take to {instruction}?"


def last_positions(batch: Batch, keep: int) -> Tensor:
    """`logits_to_keep` for the last `keep` positions, as indices rather than an int.

    Why: with an int the model slices hidden[:, -keep:], a view that is not contiguous, and torch's matmul then
    runs the output head as a batched matmul over a copy of the whole (vocab, hidden) weight per sample
    (SmolLM2's 49k-row head: 0.49 of a 1.4 s training step at 2 layers, batch 16). Indices gather a
    contiguous copy and the head is one plain matmul; the logits are the same.
    """
    length = batch.input_ids.shape[1]
    return torch.arange(length - keep, length, device=batch.input_ids.device)


def format_state(state) -> str:
    """Proprio state as text: no new parameters, works with any tokenizer (docs/design.md: no new heads)."""
    return " ".join(f"{float(x):.2f}" for x in np.asarray(state).ravel())


def build_prompt(instruction: str, state=None, image_part: str = "", image_position: str = "first") -> str:
    """OpenVLA prompt; the image tokens go first (LLaVA's layout) or right after the question.

    Why 'after_instruction' exists: in a causal decoder the image tokens can then attend to the
    instruction, so each patch could ask "is this the object named?" in the first layer. Measured on
    the tiny model it did not help: a colour-word -> image-region probe stayed at chance after
    300 steps in both layouts, so 'first' stays the default.
    """
    question = PROMPT.format(instruction=instruction.strip().rstrip("?."))
    text = image_part + question if image_position == "first" else question + " " + image_part
    if state is not None:
        text += " State: " + format_state(state)
    return text + "\nOut:"


class VLMAdapter:
    """Wraps one HF VLM (+ its processor) and the action tokenizer that gives bins vocabulary ids."""

    def __init__(self, model, processor, action_tokenizer: ActionTokenizer, use_state: bool = True,
                 leftover: str = "dummy", image_position: str = "first", critic: str = "ratio"):
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
        self.critic = critic   # how theta's logits read as Q (algo/qsft.py bin_q_values): tilted_behavior's Q
        cfg = model.config
        self.image_token_id = int(getattr(cfg, "image_token_index", getattr(cfg, "image_token_id", -1)))
        self.image_seq_length = int(getattr(cfg, "image_seq_length", 0))
        ids = list(action_tokenizer.vocab_ids)
        if leftover == "dummy":
            ids.append(int(self.tokenizer.convert_tokens_to_ids(DUMMY_TOKEN)))
        self.logit_ids = torch.tensor(ids, dtype=torch.long)
        self.bin_token_ids = torch.tensor(action_tokenizer.vocab_ids, dtype=torch.long)
        # "dynamic" (transformers' DynamicCache) or "static" (a StaticCache sized prompt + D: what
        # torch.compile wants on GPU; bench/decode.py --static-cache)
        self.cache_implementation = "dynamic"
        # prefill and single-token steps as plain tensor operations where the decoder is a plain Llama
        # (models/llama_step.py); False keeps them on the decoder module (bench/decode.py measures both)
        self.fast_step = True

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
        trains, or it is not the tiny model's EfficientNet tower)."""
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
        return model(**batch.model_inputs(), logits_to_keep=last_positions(batch, keep), use_cache=False)

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
        (docs/design.md §2.4 asks for one call). The next prompts carry their own logged tokens so both halves
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

        With use_cache the prompt is prefilled once into a transformers `Cache` and each of the D-1
        further tokens is one single-token step of the decoder (`_CachedScorer`); without it every
        dimension re-runs the whole sequence, images included (kept as the reference for the equality
        tests). pi_beta runs, with its own cache, only when the mode needs it.
        """
        check_acting_mode(mode)
        need_behavior = mode == "tilted_behavior" or (mode == "argmax_q" and support_eps is not None)
        if need_behavior and behavior_model is None:
            raise ValueError(f"mode {mode!r} (support_eps={support_eps}) needs the behaviour model")
        batch = self.encode(images, instructions, states)
        dev = self.device
        # models[0] scores the bins: theta, or pi_beta itself for 'argmax_behavior'; models[1] is pi_beta if needed
        first = (behavior_model or self.model) if mode == "argmax_behavior" else self.model
        models = [first] + ([behavior_model] if need_behavior else [])
        mask_bins = torch.as_tensor(self.action_tokenizer.bin_mask(), device=dev)   # (D, B)
        n_bins = mask_bins.shape[-1]
        bin_ids = self.bin_token_ids.to(dev)
        scorers = []
        for k, m in enumerate(models):
            # theta's p over real bins is softmax over bins + dummy (when present), sliced to B
            ids = (self.logit_ids if (k == 0 and mode != "argmax_behavior") else self.bin_token_ids).to(dev)
            keep = F.pad(mask_bins, (0, len(ids) - n_bins), value=True)   # per-dimension valid bins, built once
            scorer = (_CachedScorer(m, ids, batch, self.num_dims, self.cache_implementation, self.fast_step)
                      if use_cache else _UncachedScorer(m, ids, batch))
            scorers.append((scorer, keep))
        # theta and pi_beta with one (shared, frozen) image encoder: its features are computed once
        encoder = _shared_encoder(models) if use_cache and len(models) > 1 else None
        chosen = []
        prev = None
        for d in range(self.num_dims):
            with _reused_output(encoder) if d == 0 and encoder is not None else contextlib.nullcontext():
                raw = [s.logits(prev).masked_fill(~keep[d], float("-inf")) for s, keep in scorers]
            # log-softmax, not softmax().log(): a probability that underflows to 0 must still rank
            logp = [r.log_softmax(-1)[:, :n_bins] for r in raw]
            score = logp[0]   # argmax_q: argmax of theta's logits over the bins, whichever way they read as Q
            if mode == "tilted_behavior":   # pi_beta * exp(beta Q)
                q = raw[0][:, :n_bins].sigmoid() if self.critic == "sigmoid" else logp[0].exp()
                score = logp[1] + beta * q
            if need_behavior and support_eps is not None:
                score = score.masked_fill(~support_mask(logp[1].exp(), support_eps), float("-inf"))
            if sample:
                b = torch.multinomial(score.softmax(-1), 1, generator=generator).squeeze(-1)
            else:
                b = score.argmax(-1)
            chosen.append(b)
            prev = bin_ids[b]
        return torch.stack(chosen, dim=1).cpu().numpy()


def _shared_encoder(models) -> torch.nn.Module | None:
    """The image encoder module all `models` hold, if it is one module without LoRA layers (an adapter
    inside it would make the features differ per model), else None."""
    encoders = [vision_encoder(unwrap(m)) for m in models]
    if any(e is not encoders[0] for e in encoders[1:]):
        return None
    if any("lora_" in n for n, _ in encoders[0].named_parameters()):
        return None
    return encoders[0]


@contextlib.contextmanager
def _reused_output(module: torch.nn.Module):
    """While active, a call of `module` with the very same argument objects as an earlier call returns
    a copy of that call's output instead of recomputing it (identity, not equality: a tensor copied or
    cast on the way is simply recomputed). Every caller, the first included, gets its own copy of the
    containers and tensors: models edit what their encoder returns (Qwen2-VL replaces the output's
    pooler_output with a split of it), and one model's edit must not reach the next."""
    own = module.__dict__.get("forward")   # an instance-level forward (e.g. torch.compile's) to restore
    forward = module.forward
    memo: list[tuple[tuple, dict, object]] = []
    plain = (bool, int, float, str, type(None))

    def same(x, y) -> bool:
        return x is y or (type(x) in plain and type(x) is type(y) and x == y)

    def reuse(*args, **kwargs):
        for a, kw, out in memo:
            if len(a) == len(args) and kw.keys() == kwargs.keys() and all(map(same, a, args)) \
                    and all(same(kw[k], kwargs[k]) for k in kwargs):
                return _fresh(out)
        out = forward(*args, **kwargs)
        memo.append((args, kwargs, out))
        return _fresh(out)

    module.forward = reuse
    try:
        yield
    finally:
        if own is None:
            del module.forward   # the class's forward shows through again
        else:
            module.forward = own


def _fresh(x):
    """A copy of a model output: new containers (ModelOutput, dict, list, tuple), cloned tensors."""
    from transformers.utils import ModelOutput

    if isinstance(x, Tensor):
        return x.clone()
    if isinstance(x, ModelOutput):
        return type(x)(**{k: _fresh(v) for k, v in x.items()})
    if isinstance(x, dict):
        return type(x)((k, _fresh(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_fresh(v) for v in x)
    return x


class _UncachedScorer:
    """Reference path: every dimension re-runs the whole sequence (prompt, images, tokens so far)."""

    def __init__(self, model, ids: Tensor, batch: Batch):
        self.model, self.ids, self.full = model, ids, batch

    def logits(self, prev: Tensor | None) -> Tensor:
        if prev is not None:
            self.full = self.full.appended(prev)
        out = self.model(**self.full.model_inputs(), use_cache=False, logits_to_keep=last_positions(self.full, 1))
        return out.logits[:, -1, self.ids].float()


def _hf_model(model):
    """The HF model under a LoRA `AdapterView` with that view's adapter made active (theta and pi_beta
    take turns on one shared base), or the model itself."""
    if hasattr(model, "activate"):
        model.activate()
    return unwrap(model)


class _CachedScorer:
    """One model's KV-cached scores over the action tokens: one prefill, then one token per step.

    Why not just call the whole VLM again with one token: that is what transformers' generate() does,
    and on a small model at batch 1 the per-call Python work of the multimodal wrapper (placeholder
    masks, output dataclasses, the full-vocabulary head) costs as much as the decoder itself. A step
    here calls the text decoder directly (the same module the wrapper calls, so the numbers are the
    model's own; the equality tests check it), then the output head restricted to the ids that are
    scored: B (+1) rows instead of the whole vocabulary (151k for Qwen). Where that decoder is a plain
    Llama (tiny, LLaVA, Idefics3, SmolVLM2) and nothing needs a mask, the steps and the
    prefill's decoder part are its operations without the module machinery (models/llama_step.py).
    Everything a step needs (positions, rotary angles, the attention mask, the sliced head) is built
    once per decode, not per token. The cache is a transformers `DynamicCache` (or a `StaticCache` of
    exactly prompt + D tokens, for torch.compile on GPU), passed as `cache=`, the keyword current
    transformers documents.
    """

    def __init__(self, model, ids: Tensor, batch: Batch, num_steps: int, cache_implementation: str = "dynamic",
                 fast_step: bool = True):
        from transformers import DynamicCache, StaticCache

        self.model, self.ids, self.batch = model, ids, batch
        cfg = model.config
        n, length = batch.input_ids.shape
        if cache_implementation == "static":
            self.cache = StaticCache(config=cfg, max_cache_len=length + num_steps)
        elif cache_implementation == "dynamic":
            self.cache = DynamicCache(config=cfg)
        else:
            raise ValueError(f"cache_implementation must be 'dynamic' or 'static', got {cache_implementation!r}")
        self.static = cache_implementation == "static"
        self.step_no = 0
        self.last_pos = batch.position_ids[..., -1:]
        # no padding anywhere: the causal mask alone is right, so no mask is built at any step
        self.pad = not bool(batch.attention_mask.all())
        if self.pad or self.static:
            self.mask = torch.cat([batch.attention_mask, batch.attention_mask.new_ones(n, num_steps)], 1)
        self.softcap = getattr(cfg.get_text_config(), "final_logit_softcapping", None)
        self.head_weight = None
        self.num_steps = num_steps
        self.fast = fast_step and not (self.pad or self.static)   # a LlamaStep (or None) from the prefill on

    def _head(self, hidden: Tensor, hf) -> Tensor:
        head = hf.get_output_embeddings()
        if type(head) is torch.nn.Linear:   # a plain head: only the scored rows (a LoRA head runs whole)
            if self.head_weight is None:
                self.head_weight = head.weight[self.ids]
                self.head_bias = None if head.bias is None else head.bias[self.ids]
            logits = F.linear(hidden, self.head_weight, self.head_bias)
        else:
            logits = head(hidden)[..., self.ids]
        if self.softcap is not None:   # Gemma-style final soft-capping, applied as the wrapper does
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def logits(self, prev: Tensor | None) -> Tensor:
        hf = _hf_model(self.model)
        if self.fast is True:   # decided once per decode: a plain Llama decoder runs as plain operations
            decoder = hf.get_decoder()
            steps = torch.arange(1, self.num_steps, device=self.last_pos.device)
            self.fast = llama_step.LlamaStep(decoder, self.last_pos + steps) if llama_step.supports(decoder) else None
        if prev is None:   # prefill: the whole multimodal prompt through the model's own forward
            with llama_step.plain_prefill(self.fast) if self.fast else contextlib.nullcontext():
                out = self.model(**self.batch.model_inputs(), cache=self.cache, use_cache=True,
                                 logits_to_keep=last_positions(self.batch, 1))
            return out.logits[:, -1, self.ids].float()
        self.step_no += 1
        if self.fast:
            return self._head(self.fast(prev, self.step_no - 1, self.cache), hf).float()
        length = self.batch.input_ids.shape[1] + self.step_no
        mask = self.mask[:, :length] if self.pad or self.static else None
        out = hf.get_decoder()(input_ids=prev[:, None], attention_mask=mask, position_ids=self.last_pos + self.step_no,
                               cache=self.cache, use_cache=True)
        return self._head(out.last_hidden_state[:, -1], hf).float()
