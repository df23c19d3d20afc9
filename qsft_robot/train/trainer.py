"""One training loop for Q-SFT and the BC baselines (DESIGN §2.3-2.5).

Exact resume: batch indices come from an RNG seeded by (seed, step), so the data order is a pure
function of the step and needs no saved loader state; model, target, behaviour, optimizer and
scheduler states are restored from the last atomic checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from qsft_robot.algo.qsft import (behavior_loss, bellman_targets, mc_lower_bound, polyak_update, qsft_loss,
                                  token_rewards_discounts)
from qsft_robot.config import ConfigError, RunConfig, to_dict
from qsft_robot.data.action_tokenizer import ActionTokenizer
from qsft_robot.data.episode import DatasetError, Episode
from qsft_robot.data.transitions import Transitions, build_transitions
from qsft_robot.models.families import freeze_vision_encoder
from qsft_robot.models.tiny_vlm import build_tiny_vlm, instruction_words
from qsft_robot.models.vlm_adapter import VLMAdapter
from qsft_robot.train.checkpoint import config_changes, latest_valid_checkpoint, resolve_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)
LOG_FIELDS = ["step", "loss", "q_loss", "bc_loss", "mean_target", "frac_saturated", "mean_p_data", "pi_entropy",
              "q_success", "q_failure", "lr", "step_time", "eval_success"]


def batch_indices(seed: int, step: int, n: int, batch_size: int, probs: np.ndarray | None = None) -> np.ndarray:
    """The batch of a step is a pure function of (seed, step): resume needs no loader state.
    `probs` (n,): per-transition sampling probabilities (train.sampling=episode); uniform when None."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n, size=batch_size) if probs is None else rng.choice(n, size=batch_size, p=probs)


def sampling_probs(episode: np.ndarray, mode: str) -> np.ndarray | None:
    """train.sampling: "frame" (uniform over transitions) or "episode" (every episode the same total
    probability, spread over its frames).

    Why "episode": in mixed-quality logs the failures are the long episodes (a time-out runs the full
    limit, a success stops when it is done: 30 vs ~5 steps on arm_reach_red), so uniform frames give
    the Q model batches of ~90% failed-episode frames, most of them the robot idling at the wrong
    object. Weighting by episode rather than by frame is the trajectory weighting of Hong et al.,
    "Harnessing Mixed Offline RL Datasets via Trajectory Weighting" (ICLR 2023) with equal weights.
    """
    if mode == "frame":
        return None
    if mode != "episode":
        raise ConfigError(f"train.sampling must be 'frame' or 'episode', got {mode!r}")
    _, inverse, counts = np.unique(episode, return_inverse=True, return_counts=True)
    p = 1.0 / counts[inverse]
    return p / p.sum()


def _identity(x):
    return x


class StepBatches(torch.utils.data.Dataset):
    """Item k = the frames of training step start + k, read from the image store (for workers)."""

    def __init__(self, data: Transitions, seed: int, batch_size: int, start: int, end: int,
                 probs: np.ndarray | None = None):
        self.data, self.seed, self.batch_size, self.start, self.end = data, seed, batch_size, start, end
        self.probs = probs

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, k: int):
        idx = batch_indices(self.seed, self.start + k, len(self.data), self.batch_size, self.probs)
        return idx, self.data.images[idx], self.data.images[self.data.next_index[idx]]


def load_for_training(cfg: RunConfig, run_dir: Path, keep=lambda ep: True):
    """LeRobot data streamed into a frame memmap (datasets larger than RAM); other formats in memory.

    Returns (episodes without frames, frame store) or (episodes with frames, None).
    """
    from qsft_robot.data.image_store import MemmapImageStore
    from qsft_robot.data.lerobot import iter_lerobot

    path = Path(cfg.data.path)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if cfg.data.format == "hdf5" or path.suffix in (".h5", ".hdf5") or path.is_file():
        return [e for e in load_episodes(cfg) if keep(e)], None
    kw = dict(cameras=cfg.data.cameras or None, drop_nonfinite=cfg.data.drop_nonfinite)
    light = [e for e in iter_lerobot(path, images=False, **kw) if keep(e)]
    total = sum(len(e) for e in light)
    source = f"{path.resolve()}|{len(light)}|{total}|{cfg.data.cameras}|{cfg.algo.name}"
    folder = run_dir / "frame_cache"
    store = MemmapImageStore.open_if_valid(folder, total, source)
    if store is None:
        store = MemmapImageStore.write(folder, (e for e in iter_lerobot(path, **kw) if keep(e)),
                                       cameras=cfg.data.cameras or None, total_frames=total, source=source)
    return light, store


def load_episodes(cfg: RunConfig) -> list[Episode]:
    from qsft_robot.data.lerobot import read_lerobot

    path = Path(cfg.data.path)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if cfg.data.format == "hdf5" or path.suffix in (".h5", ".hdf5"):
        from qsft_robot.data.hdf5_io import read_hdf5
        return read_hdf5(path, instruction=cfg.data.instruction)
    return read_lerobot(path, cameras=cfg.data.cameras or None, drop_nonfinite=cfg.data.drop_nonfinite)[0]


def build_models(cfg: RunConfig, run_dir: Path, episodes: list[Episode], tokenizer: ActionTokenizer):
    if cfg.algo.behavior_init:  # a trained BC model: it already has the action vocabulary
        return VLMAdapter.from_pretrained(resolve_checkpoint(cfg.algo.behavior_init) / "model",
                                          dtype=getattr(torch, cfg.model.dtype))
    if cfg.model.preset in ("tiny", "tiny_scratch"):
        base = build_tiny_vlm(run_dir / "base_model", extra_words=instruction_words(e.instruction for e in episodes),
                              image_size=cfg.model.image_size, patch_size=cfg.model.patch_size,
                              seed=cfg.train.seed, output_stride=cfg.model.output_stride,
                              vision="efficientnet" if cfg.model.preset == "tiny" else "clip_scratch")
    else:
        base = Path(cfg.model.path)
    model, processor = VLMAdapter.from_pretrained(base, dtype=getattr(torch, cfg.model.dtype))
    VLMAdapter.add_action_vocab(model, processor, tokenizer, mapping=cfg.model.token_mapping)
    return model, processor


def _lr_lambda(cfg: RunConfig):
    def f(step: int) -> float:
        if step < cfg.train.warmup_steps:
            return (step + 1) / max(1, cfg.train.warmup_steps)
        if cfg.train.schedule == "constant":
            return 1.0
        prog = (step - cfg.train.warmup_steps) / max(1, cfg.train.steps - cfg.train.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
    return f


def make_accelerator(cfg: RunConfig):
    """One process (CPU or GPU) or many (torchrun / accelerate launch: DDP, gloo on CPU)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu = cfg.train.device == "cpu" or (cfg.train.device == "auto" and not torch.cuda.is_available())
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        # accelerate keeps its settings in a process-wide singleton and refuses a second Accelerator with
        # another mixed precision; one process training several runs in turn (benchmark, notebook) needs it
        from accelerate.state import AcceleratorState
        AcceleratorState._reset_state()
    return Accelerator(cpu=cpu, mixed_precision=cfg.train.mixed_precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


class Trainer:
    def __init__(self, cfg: RunConfig, episodes: list[Episode] | None = None):
        self.cfg = cfg
        self.accelerator = make_accelerator(cfg)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        if cfg.train.batch_size % (self.world * cfg.train.grad_accum):
            raise ConfigError(f"config key 'train.batch_size' ({cfg.train.batch_size}) must divide evenly over "
                              f"{self.world} processes x train.grad_accum={cfg.train.grad_accum}")
        self.run_dir = Path(cfg.train.out_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        logger.info("training %s on %d process(es), device %s, mixed precision %s", cfg.algo.name, self.world,
                    self.accelerator.device, cfg.train.mixed_precision)
        torch.manual_seed(cfg.train.seed)
        keep = (lambda e: e.success) if cfg.algo.name == "filtered_bc" else (lambda e: True)
        store = None
        with self.accelerator.main_process_first():  # frame cache and base model are written once
            if episodes is None:
                episodes, store = load_for_training(cfg, self.run_dir, keep)
            else:
                episodes = [e for e in episodes if keep(e)]
        if not episodes:
            raise DatasetError(f"{cfg.algo.name}: no episodes to train on"
                               + (" (no successful episodes)" if cfg.algo.name == "filtered_bc" else ""))
        all_actions = np.concatenate([e.actions for e in episodes])
        self.tokenizer = ActionTokenizer.fit(all_actions, cfg.algo.num_bins,
                                             {int(k): int(v) for k, v in cfg.algo.per_dim_bins.items()})
        if cfg.algo.behavior_init:
            self._check_behavior_init()
        found = latest_valid_checkpoint(self.run_dir)
        if found is not None:  # resuming: same experiment only, and the statistics the weights were trained with
            self._check_resume_config(found[0])
            saved = ActionTokenizer.load(found[0] / "action_tokenizer.json")
            if saved.bins != self.tokenizer.bins:
                raise ConfigError(f"run {self.run_dir} was trained on {saved.num_dims} action dims with bins "
                                  f"{saved.bins}; this dataset/config gives {self.tokenizer.bins}: use a new "
                                  f"train.out_dir or the original data")
            self.tokenizer = saved
        self.data: Transitions = build_transitions(episodes, self.tokenizer, cfg.algo.gamma, cfg.data.reward,
                                                   cfg.data.cameras or None, images=store,
                                                   end_is_terminal=cfg.data.end_is_terminal)
        self.sample_probs = sampling_probs(self.data.episode, cfg.train.sampling)
        with self.accelerator.main_process_first():
            self.model, self.processor = build_models(cfg, self.run_dir, episodes, self.tokenizer)
        self.model.to(self.accelerator.device)
        if cfg.model.freeze_vision:  # before the copies: pi_beta and theta_bar inherit it
            logger.info("vision encoder frozen (%d parameters)", freeze_vision_encoder(self.model))
        self.qsft = cfg.algo.name == "qsft"
        self.adapter = VLMAdapter(self.model, self.processor, self.tokenizer, cfg.model.use_state,
                                  leftover=cfg.algo.leftover, image_position=cfg.model.image_position)
        self._cache_image_features()
        self.behavior = self.target = None
        if cfg.model.lora_rank > 0:
            self._wrap_lora()
        elif self.qsft:
            self.behavior = copy.deepcopy(self.model)
            self.target = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.resumed_from = found[0] if found is not None else None
        if found is not None:
            self._resume_weights(found[0])
        self.fsdp = cfg.train.distributed == "fsdp" and self.world > 1
        if self.fsdp:  # after loading full weights, before the optimizer sees the (now sharded) parameters
            from qsft_robot.train.fsdp import shard
            for m in (self.model, self.behavior, self.target):  # three distinct modules (LoRA is refused)
                if m is not None:
                    shard(m, self.world, self.accelerator.device, cfg.train.mixed_precision)
        elif cfg.train.distributed == "fsdp":
            logger.info("train.distributed=fsdp with one process: nothing to shard, training unsharded")
        if self.qsft:
            params = [p for m in (self.model, self.behavior) for p in m.parameters() if p.requires_grad]
        else:  # BC baselines: the acting model *is* pi_beta
            self.behavior = self.model
            self.target = None
            params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.step = 0
        self.pi_cache: torch.Tensor | None = None  # frozen pi_beta logits (N, D, B), fp16
        if found is not None:
            self._resume_state(*found)
        if self.fsdp:  # sharded modules synchronise their own gradients: no DDP wrapper
            self.train_model, self.train_behavior = self.model, self.behavior
        elif self.qsft:  # DDP-wrapped views for the loss; the raw modules stay for decoding, Polyak and saving
            self.train_model, self.train_behavior, self.optimizer = self.accelerator.prepare(
                self.model, self.behavior, self.optimizer)
        else:
            self.train_model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
            self.train_behavior = self.train_model

    def _cache_image_features(self) -> None:
        """Frozen pretrained tower: train on its cached per-frame features instead of pixels, so a step
        costs the projector and the language model only (data/feature_cache.py)."""
        self.frames = self.data.images  # the camera frames themselves, whatever the model trains on
        key = self.adapter.feature_cache_key()
        if key is None:
            return
        from qsft_robot.data.feature_cache import cached_features
        with self.accelerator.main_process_first():  # one process writes, the others then find it
            self.data.images = cached_features(self.data.images, self.adapter.image_features, key,
                                               self.cfg.data.feature_cache or None)

    def _trained(self) -> dict:
        return {"model": self.model, "behavior": self.behavior} if self.qsft else {"model": self.model}

    def _check_behavior_init(self) -> None:
        """pi_beta from a finished BC run (DESIGN §2.3's frozen variant, without re-training it):
        same data statistics required, and pi_beta is then frozen with its logits cached."""
        a = self.cfg.algo
        if a.name != "qsft":
            raise ConfigError(f"config key 'algo.behavior_init' applies to algo.name=qsft, not {a.name!r}")
        src = resolve_checkpoint(a.behavior_init)
        saved = ActionTokenizer.load(src / "action_tokenizer.json")
        if saved.bins != self.tokenizer.bins or not np.allclose(saved.low, self.tokenizer.low) \
                or not np.allclose(saved.high, self.tokenizer.high):
            raise ConfigError(f"algo.behavior_init={src} was trained with other action bins/statistics "
                              f"({saved.bins}); train it on the same data and algo.num_bins")
        self.tokenizer = saved
        a.behavior, a.behavior_steps = "frozen", 0
        logger.info("pi_beta, theta and theta_bar start from %s; pi_beta frozen", src)

    def _wrap_lora(self) -> None:
        """One frozen base (saved once with its resized vocabulary) + an adapter per network."""
        from qsft_robot.models.lora import wrap_with_lora
        m = self.cfg.model
        base_dir = self.run_dir / "lora_base"
        with self.accelerator.main_process_first():
            if self.accelerator.is_main_process and not (base_dir / "config.json").is_file():
                self.model.save_pretrained(base_dir)
                self.processor.save_pretrained(base_dir)
        names = ["theta", "behavior", "target"] if self.qsft else ["theta"]
        views = wrap_with_lora(self.model, base_dir, names, rank=m.lora_rank, alpha=m.lora_alpha,
                               targets=m.lora_targets or None)
        self.model = views["theta"]
        self.adapter.model = self.model
        if self.qsft:
            self.behavior = views["behavior"]
            self.target = views["target"].requires_grad_(False).eval()
        n_train = sum(p.numel() for v in views.values() for p in v.parameters())
        n_base = sum(p.numel() for p in self.model.peft_model.base_model.model.parameters() if not p.requires_grad)
        logger.info("LoRA rank %d: %d adapter parameters over a frozen base of %d", m.lora_rank, n_train, n_base)

    # ---- resume -------------------------------------------------------------------------------
    def _check_resume_config(self, ckpt: Path) -> None:
        """Refuse to continue a run under other settings: the result would belong to neither config."""
        import yaml
        saved_file = ckpt / "qsft_config.yaml"
        if not saved_file.is_file():
            return  # written by every checkpoint since the first release; nothing to compare against
        changes = config_changes(yaml.safe_load(saved_file.read_text()) or {}, to_dict(self.cfg),
                                 to_dict(RunConfig()))
        if changes:
            raise ConfigError(f"{self.run_dir} holds a run with other settings ({'; '.join(changes)}): resume it "
                              f"with its own config, or use a new train.out_dir")

    def _resume_weights(self, ckpt: Path) -> None:
        def load(model, sub):
            if hasattr(model, "load_adapter_weights"):  # LoRA view
                model.load_adapter_weights(ckpt / sub)
                return
            # through from_pretrained: HF renames keys on save/load, so a raw state dict would not match
            saved = type(model).from_pretrained(ckpt / sub, dtype=next(model.parameters()).dtype)
            model.load_state_dict(saved.state_dict(), strict=True)
        load(self.model, "model")
        if self.qsft:
            load(self.behavior, "behavior")
            load(self.target, "target")

    def _resume_state(self, ckpt: Path, state: dict) -> None:
        saved_fsdp = state.get("distributed") == "fsdp"
        if saved_fsdp != self.fsdp:
            raise ConfigError(f"{ckpt} was written by a {'sharded (fsdp)' if saved_fsdp else 'unsharded'} run; "
                              f"resume it with the same train.distributed and a process count "
                              f"{'> 1' if saved_fsdp else '= 1 or ddp'}")
        if self.fsdp:
            from qsft_robot.train.fsdp import load_optimizer_state
            load_optimizer_state(self._trained(), self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed from %s at step %d", ckpt, self.step)

    # ---- one step -----------------------------------------------------------------------------
    def batch_indices(self, step: int) -> np.ndarray:
        return batch_indices(self.cfg.train.seed, step, len(self.data), self.cfg.train.batch_size, self.sample_probs)

    def _inputs(self, idx, images=None):
        d = self.data
        st = d.state[idx] if d.state is not None else None
        return (d.images[idx] if images is None else images), [d.instructions[i] for i in idx], st

    @torch.no_grad()
    def build_behavior_cache(self, batch_size: int = 64) -> torch.Tensor:
        """Frozen pi_beta: its teacher-forced logits for every transition, computed once.

        Row i holds pi_beta at (P_i, b_i^{1:d-1}) for each d; the cross-step target of i needs
        pi_beta at the first dimension of P_{i+1}, which is row next_index[i], column 0.
        """
        self.behavior.eval().requires_grad_(False)
        out = []
        for start in tqdm(range(0, len(self.data), batch_size), desc="cache pi_beta", unit="batch"):
            idx = np.arange(start, min(start + batch_size, len(self.data)))
            images, instr, state = self._inputs(idx)
            out.append(self.adapter.teacher_forced_logits(self.behavior, images, instr, state,
                                                          self.data.tokens[idx], with_dummy=False).half())
        logger.info("cached frozen pi_beta logits for %d transitions", len(self.data))
        return torch.cat(out)

    def compute_loss(self, idx: np.ndarray, images=None, next_images=None) -> tuple[torch.Tensor, dict]:
        ad, d, D = self.adapter, self.data, self.adapter.num_dims
        images, instr, state = self._inputs(idx, images)
        tokens = torch.as_tensor(d.tokens[idx])
        # one encoding of (P_t, b_t^{1:D-1}) serves pi_beta, theta and theta_bar
        cur = ad.encode(images, instr, state, d.tokens[idx][:, :-1])
        if self.pi_cache is not None:
            beh_logits = self.pi_cache[idx].float()
        else:
            beh_logits = ad.action_logits(self.train_behavior, cur, D, with_dummy=False)
        bc = behavior_loss(beh_logits.reshape(-1, beh_logits.shape[-1]), tokens.reshape(-1))
        with torch.no_grad():
            entropy = float(-(beh_logits.softmax(-1) * beh_logits.log_softmax(-1)).sum(-1).mean())
        stats = {"bc_loss": bc.item(), "pi_entropy": entropy}
        behavior_first = self.cfg.algo.behavior == "frozen" and self.pi_cache is None
        if not self.qsft or behavior_first:  # BC baselines, or pi_beta's own phase before it freezes
            with torch.no_grad():
                p_data = float(beh_logits.softmax(-1).gather(-1, tokens[..., None]).mean())
            return bc, {**stats, "q_loss": 0.0, "mean_target": 0.0, "mean_p_data": p_data}
        q_logits = ad.action_logits(self.train_model, cur, D, with_dummy=True)
        if self.cfg.algo.target == "return_to_go":  # Monte-Carlo targets: no target network, no bootstrap
            w = torch.as_tensor(d.mc_return[idx]).float().clamp(0.0, 1.0).repeat_interleave(D)
            return self._q_loss(q_logits, tokens, w, bc, stats)
        nidx = d.next_index[idx]
        n_images, n_instr, n_state = self._inputs(nidx, next_images)
        with torch.no_grad():
            if self.pi_cache is not None:
                tq_cur, tq_next = ad.teacher_forced_and_next_logits(
                    self.target, images, instr, state, d.tokens[idx], n_images, n_instr, n_state, d.tokens[nidx],
                    with_dummy=True)
                beh_next = self.pi_cache[nidx, 0].float()
            else:
                tq_cur = ad.action_logits(self.target, cur, D, with_dummy=True)
                nxt = ad.encode(n_images, n_instr, n_state, None)
                tq_next = ad.action_logits(self.target, nxt, 1, with_dummy=True)[:, 0]
                beh_next = ad.action_logits(self.behavior, nxt, 1, with_dummy=False)[:, 0]
        r, disc = token_rewards_discounts(torch.as_tensor(d.reward[idx]), torch.as_tensor(d.done[idx]), D,
                                          self.cfg.algo.gamma)
        # next token state of dim i < D is (prompt, b^1..b^i): position i+1 of the same sequence
        next_q = torch.cat([tq_cur[:, 1:], tq_next[:, None]], dim=1)
        next_b = torch.cat([beh_logits.detach()[:, 1:], beh_next[:, None]], dim=1)
        w = bellman_targets(next_q.reshape(-1, next_q.shape[-1]), next_b.reshape(-1, next_b.shape[-1]),
                            r.reshape(-1), disc.reshape(-1), self.cfg.algo.support_eps, self.cfg.algo.next_value,
                            self.cfg.algo.expectile)
        if self.cfg.algo.mc_lower_bound:
            w = mc_lower_bound(w, torch.as_tensor(d.mc_return[idx]))
        return self._q_loss(q_logits, tokens, w, bc, stats)

    def _q_loss(self, q_logits, tokens, w, bc, stats) -> tuple[torch.Tensor, dict]:
        ql = qsft_loss(q_logits.reshape(-1, q_logits.shape[-1]), tokens.reshape(-1), w, self.cfg.algo.leftover)
        loss = ql if self.pi_cache is not None else ql + bc
        p_data = q_logits.softmax(-1).gather(-1, tokens[..., None]).mean()
        return loss, {**stats, "q_loss": ql.item(), "mean_target": w.mean().item(), "mean_p_data": p_data.item(),
                      "frac_saturated": (w >= 0.999).float().mean().item()}

    def train_step(self, prefetched=None) -> tuple[torch.Tensor, dict]:
        """One optimisation step over the global batch: this process's shard, in grad_accum
        micro-batches (gradients synchronised across processes on the last one), then Polyak."""
        self.model.train()
        idx = self.batch_indices(self.step)
        images = next_images = None
        if prefetched is not None:
            p_idx, images, next_images = prefetched
            assert np.array_equal(p_idx, idx), "prefetched batch out of step"
        shard = np.arange(len(idx))[self.rank::self.world]
        chunks = np.array_split(shard, self.cfg.train.grad_accum)
        models = [self.train_model] + ([self.train_behavior] if self.qsft else [])
        self.optimizer.zero_grad(set_to_none=True)
        total, stats = 0.0, {}
        for k, ch in enumerate(chunks):
            with contextlib.ExitStack() as stack:
                if self.fsdp:
                    from qsft_robot.train.fsdp import set_gradient_sync
                    set_gradient_sync(models, k == len(chunks) - 1)
                elif k < len(chunks) - 1:
                    for m in models:
                        stack.enter_context(self.accelerator.no_sync(m))
                try:
                    loss, st = self.compute_loss(idx[ch], None if images is None else images[ch],
                                                 None if next_images is None else next_images[ch])
                    self.accelerator.backward(loss / len(chunks))
                except torch.cuda.OutOfMemoryError as e:
                    raise RuntimeError(
                        "GPU out of memory: lower train.batch_size (or raise train.grad_accum), set "
                        "train.mixed_precision=bf16, use LoRA for big backbones, or enable gradient "
                        "checkpointing on the model") from e
            total += loss.item() / len(chunks)
            stats = {k2: stats.get(k2, 0.0) + v / len(chunks) for k2, v in st.items()}
        self.accelerator.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                         self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.qsft:
            if self.fsdp:  # FSDP keeps a root's weights gathered after a forward with no backward (theta_bar)
                for m in (self.model, self.target):
                    m.reshard()
            polyak_update(self.target, self.model, self.cfg.algo.polyak_alpha)
        self.step += 1
        return torch.tensor(total), stats

    def periodic_eval(self) -> float:
        """Closed-loop success of the current weights in the sim task of the config (main process)."""
        from qsft_robot.algo.policy import Policy
        from qsft_robot.sim.evaluate import evaluate

        e = self.cfg.eval
        self.model.eval()
        mode = e.mode if self.qsft else "sft"
        support = self.cfg.algo.support_eps if self.qsft and mode == "argmax_q" else None
        policy = Policy(self.adapter, behavior_model=self.behavior if self.qsft else None, mode=mode, beta=e.beta,
                        support_eps=support)
        with torch.no_grad():
            s = evaluate(policy, e.task, episodes=e.episodes, seed=e.seed, num_envs=e.num_envs, videos=0,
                         out_dir=self.run_dir / "eval", image_size=self.cfg.model.image_size,
                         max_steps=e.max_steps, label=f"step{self.step}")
        self.model.train()
        return s["success_rate"]

    def frozen_behavior_due(self) -> bool:
        a = self.cfg.algo
        return self.qsft and a.behavior == "frozen" and self.pi_cache is None and self.step >= a.behavior_steps

    # ---- loop ---------------------------------------------------------------------------------
    def checkpoint(self) -> Path:
        self.accelerator.wait_for_everyone()
        path = self.run_dir / "checkpoints" / f"step-{self.step:08d}"
        gathered = self._gather_sharded() if self.fsdp else None  # collectives: every process takes part
        if self.accelerator.is_main_process:
            path = self._save(gathered)
        self.accelerator.wait_for_everyone()
        return path

    def _saved_models(self) -> dict:
        return {**self._trained(), **({"target": self.target} if self.qsft else {})}

    def _gather_sharded(self) -> dict:
        """Full (unsharded) weights of every network and the optimizer state keyed by parameter name."""
        from qsft_robot.train.fsdp import full_optimizer_state, full_state_dict
        return {"weights": {k: full_state_dict(m) for k, m in self._saved_models().items()},
                "optimizer": full_optimizer_state(self._trained(), self.optimizer)}

    def _save(self, gathered: dict | None = None) -> Path:
        cfgd = to_dict(self.cfg)
        cfgd["reward_rule"] = self.data.reward_rule
        state = {"step": self.step, "world_size": self.world, "distributed": "fsdp" if self.fsdp else "ddp",
                 "optimizer": gathered["optimizer"] if gathered else self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state()}
        return save_checkpoint(self.run_dir, self.step, self._saved_models(), self.processor, self.tokenizer, cfgd,
                               state, keep_last=self.cfg.train.keep_last,
                               state_dicts=gathered["weights"] if gathered else None)

    def train(self, stop_after: int | None = None) -> Path:
        cfg = self.cfg
        main = self.accelerator.is_main_process
        log_path = self.run_dir / ("train_log.csv" if main else f".train_log.rank{self.rank}.csv")
        new_log = not log_path.exists() or self.step == 0
        tb = None
        if main and cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step or None)
        with open(log_path, "w" if new_log else "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
            if new_log:
                writer.writeheader()
            bar = tqdm(total=cfg.train.steps, initial=self.step, desc=f"train {cfg.algo.name}", unit="step",
                       disable=not main)
            last = None
            prefetch = iter(torch.utils.data.DataLoader(
                StepBatches(self.data, cfg.train.seed, cfg.train.batch_size, self.step, cfg.train.steps,
                            self.sample_probs),
                batch_size=None, num_workers=cfg.train.num_workers, collate_fn=_identity,
                prefetch_factor=2 if cfg.train.num_workers else None)) if cfg.train.num_workers > 0 else None
            probe = None
            if self.qsft and main and self.world == 1:  # value diagnostic (train/value_probe.py)
                from qsft_robot.train.value_probe import ValueProbe
                probe = ValueProbe(self.data, seed=cfg.train.seed)
                probe = probe if probe.usable else None
            while self.step < cfg.train.steps:
                if self.frozen_behavior_due():
                    self.pi_cache = self.build_behavior_cache()
                t0 = time.perf_counter()
                loss, stats = self.train_step(next(prefetch) if prefetch is not None else None)
                row = {"step": self.step, "loss": loss.item(), "lr": self.scheduler.get_last_lr()[0],
                       "step_time": time.perf_counter() - t0, "eval_success": None, **stats}
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and main:
                    row["eval_success"] = self.periodic_eval()
                    logger.info("step %d: closed-loop success %.2f on %s", self.step, row["eval_success"],
                                cfg.eval.task)
                log_now = self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps
                if log_now and probe is not None and not self.frozen_behavior_due():
                    row.update(probe.measure(self))
                if log_now or row["eval_success"] is not None:
                    writer.writerow({k: row.get(k) for k in LOG_FIELDS})
                    fh.flush()
                    if tb is not None:
                        for k in LOG_FIELDS[1:]:
                            if row.get(k) is not None:
                                tb.add_scalar(f"train/{k}", row[k], self.step)
                    logger.info("step %d loss %.4f target %.3f (>=0.999: %.2f) p_data %.3f", self.step, row["loss"],
                                row["mean_target"], row.get("frac_saturated", 0.0), row["mean_p_data"])
                bar.set_postfix(loss=f"{row['loss']:.3f}")
                bar.update(1)
                if self.step % cfg.train.save_every == 0 or self.step == cfg.train.steps:
                    last = self.checkpoint()
                if stop_after is not None and self.step >= stop_after:
                    break
            bar.close()
            if tb is not None:
                tb.close()
        if probe is not None:
            from qsft_robot.train.value_probe import plot_values
            plot_values(log_path, self.run_dir / "values.png")
        if last is None and self.resumed_from is not None and self.resumed_from.name == f"step-{self.step:08d}":
            return self.resumed_from  # a finished run asked to run again: nothing new to save
        return last if last is not None else self.checkpoint()


def train(cfg: RunConfig, episodes: list[Episode] | None = None) -> Path:
    return Trainer(cfg, episodes).train()
