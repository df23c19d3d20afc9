"""Acting from a checkpoint (docs/design.md §2.6): the modes of config.ActingMode, argmax_q by default.

argmax_q with Q-SFT's ratio critic is a behaviour-regularised greedy choice (p_theta ~ pi_beta * Q): it is
deliberately not argmax Q*, so do not divide by pi_beta here. With algo.critic=sigmoid theta's logits are Q
itself (conservative by their training), and the same argmax over them is greedy on Q.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from qsft_robot.checkpoint import resolve_checkpoint
from qsft_robot.config import ACTING_MODES, check_acting_mode
from qsft_robot.data.action_tokenizer import ActionTokenizer
from qsft_robot.models.families import load_processor, share_vision_encoder
from qsft_robot.models.lora import is_lora_folder, load_lora
from qsft_robot.models.vlm_adapter import VLMAdapter

logger = logging.getLogger(__name__)
MODES = ACTING_MODES


class Policy:
    def __init__(self, adapter: VLMAdapter, behavior_model=None, mode: str = "argmax_q", beta: float = 1.0,
                 sample: bool = False, support_eps: float | None = None, use_cache: bool = True):
        check_acting_mode(mode)
        self.adapter, self.behavior_model, self.mode = adapter, behavior_model, mode
        self.beta, self.sample, self.support_eps, self.use_cache = beta, sample, support_eps, use_cache
        self.generator = torch.Generator(device=adapter.device).manual_seed(0)

    @property
    def action_tokenizer(self) -> ActionTokenizer:
        return self.adapter.action_tokenizer

    def act_tokens(self, images: np.ndarray, instructions: list[str], states=None) -> np.ndarray:
        return self.adapter.decode(images, instructions, states, mode=self.mode, behavior_model=self.behavior_model,
                                   beta=self.beta, sample=self.sample, support_eps=self.support_eps,
                                   use_cache=self.use_cache, generator=self.generator)

    @property
    def chunk(self) -> int:
        """Env steps per decision (algo.chunk of the checkpoint; 1 for a one-step policy)."""
        return self.action_tokenizer.chunk

    @property
    def action_dim(self) -> int:
        return self.action_tokenizer.action_dim

    def act_chunk(self, images: np.ndarray, instructions: list[str], states=None) -> np.ndarray:
        """(N, [cams,] H, W, 3) uint8 RGB -> (N, chunk, D) continuous actions (bin centres), in the order to run."""
        return self.action_tokenizer.decode_chunk(self.act_tokens(images, instructions, states))

    def act(self, images: np.ndarray, instructions: list[str], states=None) -> np.ndarray:
        """(N, [cams,] H, W, 3) uint8 RGB -> (N, D): the first action of the chosen chunk (the whole decision of a
        one-step policy). Callers that re-plan at every step, the ROS node's, use this: receding horizon."""
        return self.act_chunk(images, instructions, states)[:, 0]


def load_policy(checkpoint: str | Path, mode: str | None = None, device: str = "cpu", **kw) -> Policy:
    """Load a checkpoint folder (or a run folder: its newest valid checkpoint) for acting."""
    ckpt = resolve_checkpoint(checkpoint)
    cfg = yaml.safe_load((ckpt / "qsft_config.yaml").read_text())
    tok = ActionTokenizer.load(ckpt / "action_tokenizer.json")  # never refit: decode with its own stats
    algo = cfg["algo"]["name"]
    has_behavior = (ckpt / "behavior" / "config.json").is_file()
    if is_lora_folder(ckpt / "model"):  # adapters over one shared base
        views = load_lora({"theta": ckpt / "model", **({"behavior": ckpt / "behavior"} if has_behavior else {})},
                          device=device)
        model, behavior = views["theta"], views.get("behavior")
        processor = load_processor(ckpt / "model", model.config.model_type)
    else:
        model, processor = VLMAdapter.from_pretrained(ckpt / "model", device=device)
        behavior = None
        if has_behavior:
            from transformers import AutoModelForImageTextToText
            # theta's dtype (from_pretrained's default would be the saved one, bf16 for a bf16 preset)
            behavior = AutoModelForImageTextToText.from_pretrained(
                ckpt / "behavior", dtype=next(model.parameters()).dtype).to(device).eval()
            # a frozen encoder is bit-identical in theta and pi_beta: one module, run once per frame
            share_vision_encoder(model, behavior)
    model.eval()
    mode = check_acting_mode(mode or ("argmax_q" if algo == "qsft" else "argmax_behavior"))
    if algo != "qsft" and mode != "argmax_behavior":
        raise ValueError(f"checkpoint {ckpt} was trained with {algo}: only mode 'argmax_behavior' applies")
    if algo == "qsft" and mode == "argmax_q" and behavior is not None and "support_eps" not in kw:
        # act within the support the Bellman targets were restricted to (algo.support_eps), not beyond it
        kw["support_eps"] = float(cfg["algo"]["support_eps"])
    leftover = cfg["algo"]["leftover"] if algo == "qsft" else "uniform"
    adapter = VLMAdapter(model, processor, tok, use_state=cfg["model"]["use_state"], leftover=leftover,
                         image_position=cfg["model"].get("image_position", "first"),
                         critic=cfg["algo"].get("critic", "ratio"))
    logger.info("loaded %s policy from %s (mode %s)", algo, ckpt, mode)
    return Policy(adapter, behavior_model=behavior, mode=mode, **kw)
