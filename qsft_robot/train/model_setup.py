"""Building the networks of a run: the base VLM with its action vocabulary, then theta, pi_beta and
theta_bar (copies, or LoRA adapters over one frozen base), resumed weights and FSDP sharding."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from qsft_robot.algo.networks import Networks
from qsft_robot.checkpoint import resolve_checkpoint
from qsft_robot.config import ConfigError, RunConfig
from qsft_robot.data.action_tokenizer import ActionTokenizer
from qsft_robot.data.episode import Episode
from qsft_robot.models import lora
from qsft_robot.models.tiny_vlm import build_tiny_vlm, instruction_words
from qsft_robot.models.vlm_adapter import VLMAdapter

logger = logging.getLogger(__name__)


def build_models(cfg: RunConfig, run_dir: Path, episodes: list[Episode], tokenizer: ActionTokenizer):
    """The base model and processor every network starts from (docs/design.md §2.3)."""
    if cfg.algo.behavior_init:  # a trained BC model: it already has the action vocabulary
        folder = resolve_checkpoint(cfg.algo.behavior_init) / "model"
        if _behavior_adapter(cfg) is not None:   # a LoRA BC run: its frozen base; its adapter comes in make_networks
            folder = lora.base_of(folder)
        return VLMAdapter.from_pretrained(folder, dtype=getattr(torch, cfg.model.dtype))
    if cfg.model.preset in ("tiny", "tiny_scratch"):
        base = build_tiny_vlm(run_dir / "base_model", extra_words=instruction_words(e.instruction for e in episodes),
                              image_size=cfg.model.image_size, patch_size=cfg.model.patch_size,
                              seed=cfg.train.seed, output_stride=cfg.model.output_stride,
                              text_hidden=cfg.model.text_hidden, text_layers=cfg.model.text_layers,
                              position_channels=cfg.model.position_channels,
                              vision="efficientnet" if cfg.model.preset == "tiny" else "clip_scratch")
    elif cfg.model.preset == "smollm2":
        from qsft_robot.data.cache_dirs import default_cache_root
        from qsft_robot.models.smollm2_vlm import cached_base
        m = cfg.model
        base = cached_base(default_cache_root(), m.image_size, m.output_stride, m.position_channels, m.smollm2_layers)
    else:
        base = Path(cfg.model.path)
    model, processor = VLMAdapter.from_pretrained(base, dtype=getattr(torch, cfg.model.dtype))
    VLMAdapter.add_action_vocab(model, processor, tokenizer, mapping=cfg.model.token_mapping)
    return model, processor


def _behavior_adapter(cfg: RunConfig) -> Path | None:
    """The adapter folder of a LoRA BC run given as algo.behavior_init (None for a whole-model one); refused when
    this run's LoRA rank cannot take it."""
    folder = resolve_checkpoint(cfg.algo.behavior_init) / "model"
    if not lora.is_lora_folder(folder):
        return None
    if cfg.model.lora != lora.adapter_rank(folder):
        raise ConfigError(f"algo.behavior_init {folder} is a LoRA rank-{lora.adapter_rank(folder)} adapter; this "
                          f"run's model.lora_rank resolves to {cfg.model.lora}: train with the same rank")
    return folder


def make_networks(cfg: RunConfig, model, processor, run_dir: Path, accelerator) -> Networks:
    """theta = model; Q-SFT adds pi_beta and theta_bar as copies of it (theta_bar frozen). With
    model.lora > 0 each network is an adapter over one frozen base saved under run_dir/lora_base."""
    qsft = cfg.algo.name == "qsft"
    if cfg.model.lora > 0:
        return _lora_networks(cfg, model, processor, run_dir, accelerator, qsft)
    if not qsft:  # BC baselines: the acting model *is* pi_beta
        return Networks(theta=model, pi_beta=model)
    behavior = copy.deepcopy(model)
    target = copy.deepcopy(model).requires_grad_(False).eval()
    return Networks(theta=model, pi_beta=behavior, theta_bar=target)


def _lora_networks(cfg: RunConfig, model, processor, run_dir: Path, accelerator, qsft: bool) -> Networks:
    """One frozen base (saved once with its resized vocabulary) + an adapter per network."""
    m = cfg.model
    base_dir = run_dir / "lora_base"
    with accelerator.main_process_first():
        if accelerator.is_main_process and not (base_dir / "config.json").is_file():
            model.save_pretrained(base_dir)
            processor.save_pretrained(base_dir)
    names = ["theta", "behavior", "target"] if qsft else ["theta"]
    views = lora.wrap_with_lora(model, base_dir, names, rank=m.lora, alpha=m.lora_alpha,
                                targets=m.lora_targets or None)
    init = _behavior_adapter(cfg) if cfg.algo.behavior_init else None
    for v in views.values() if init is not None else ():   # all three start as the BC model, as copies do
        v.load_adapter_weights(init)
    theta = views["theta"]
    n_train = sum(p.numel() for v in views.values() for p in v.parameters())
    n_base = sum(p.numel() for p in theta.peft_model.base_model.model.parameters() if not p.requires_grad)
    logger.info("LoRA rank %d: %d adapter parameters over a frozen base of %d", m.lora, n_train, n_base)
    if not qsft:
        return Networks(theta=theta, pi_beta=theta)
    return Networks(theta=theta, pi_beta=views["behavior"], theta_bar=views["target"].requires_grad_(False).eval())


def load_weights(nets: Networks, ckpt: Path) -> None:
    """Every network's weights from a checkpoint folder (resume)."""
    def load(model, sub):
        if hasattr(model, "load_adapter_weights"):  # LoRA view
            model.load_adapter_weights(ckpt / sub)
            return
        # through from_pretrained: HF renames keys on save/load, so a raw state dict would not match
        saved = type(model).from_pretrained(ckpt / sub, dtype=next(model.parameters()).dtype)
        model.load_state_dict(saved.state_dict(), strict=True)
    for sub, model in nets.saved().items():
        load(model, sub)


def shard_networks(nets: Networks, world: int, device, mixed_precision: str) -> None:
    """FSDP2: shard every distinct network alike, so the Polyak update is local to matching shards."""
    from qsft_robot.train.fsdp import shard
    for m in {id(m): m for m in (nets.theta, nets.pi_beta, nets.theta_bar) if m is not None}.values():
        shard(m, world, device, mixed_precision)
