"""One training loop for Q-SFT and the BC baselines (docs/design.md §2.3-2.5), in four steps:
data (data/sources.py) -> action tokenizer -> networks (train/model_setup.py) -> loop, whose loss is
algo/losses.py.

Exact resume: batch indices come from an RNG seeded by (seed, step), so the data order is a pure
function of the step and needs no saved loader state; the networks, optimizer and scheduler states
are restored from the last atomic checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from qsft_robot.algo.losses import LossContext, batch_loss
from qsft_robot.algo.networks import Networks
from qsft_robot.algo.qsft import polyak_update
from qsft_robot.checkpoint import latest_valid_checkpoint, save_checkpoint
from qsft_robot.config import ConfigError, RunConfig, to_dict
from qsft_robot.data.action_tokenizer import ActionTokenizer
from qsft_robot.data.episode import DatasetError, Episode, common_action_names
from qsft_robot.data.sampling import batch_indices, prefetcher, sampling_probs
from qsft_robot.data.sources import load_training_data
from qsft_robot.data.transitions import Transitions, build_transitions
from qsft_robot.models.families import freeze_vision_encoder
from qsft_robot.models.vlm_adapter import VLMAdapter
from qsft_robot.train.model_setup import build_models, load_weights, make_networks, shard_networks
from qsft_robot.train.resume import behavior_init_tokenizer, resumed_tokenizer
from qsft_robot.train.run_log import RunLog

logger = logging.getLogger(__name__)
# eval_hook(policy, step) -> closed-loop success rate; qsft-robot train passes the sim's (sim/evaluate.py)
EvalHook = Callable[[object, int], float]


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
    acc = Accelerator(cpu=cpu, mixed_precision=cfg.train.mixed_precision,
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    if cfg.train.batch_size % (acc.num_processes * cfg.train.grad_accum):
        raise ConfigError(f"config key 'train.batch_size' ({cfg.train.batch_size}) must divide evenly over "
                          f"{acc.num_processes} processes x train.grad_accum={cfg.train.grad_accum}")
    return acc


class Trainer:
    def __init__(self, cfg: RunConfig, episodes: list[Episode] | None = None, eval_hook: EvalHook | None = None):
        self.cfg, self.eval_hook = cfg, eval_hook
        if cfg.train.eval_every > 0 and eval_hook is None:
            raise ConfigError("config key 'train.eval_every' > 0 needs an eval hook (Trainer(..., eval_hook=...); "
                              "`qsft-robot train` passes the sim's closed-loop evaluation)")
        self.accelerator = make_accelerator(cfg)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.run_dir = Path(cfg.train.out_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        logger.info("training %s on %d process(es), device %s, mixed precision %s", cfg.algo.name, self.world,
                    self.accelerator.device, cfg.train.mixed_precision)
        torch.manual_seed(cfg.train.seed)
        episodes, store = self._load_data(episodes)                      # 1. data
        found = self._fit_tokenizer(episodes)                            # 2. action tokenizer
        self.data: Transitions = build_transitions(episodes, self.tokenizer, cfg.algo.gamma, cfg.data.reward,
                                                   cfg.data.cameras or None, images=store,
                                                   end_is_terminal=cfg.data.end_is_terminal)
        if cfg.algo.name == "qsft" and cfg.algo.target == "n_step":
            self.data.use_n_step(cfg.algo.n_step, cfg.algo.gamma)
        self.sample_probs = sampling_probs(self.data.episode, cfg.train.sampling, cfg.data.decision_stride)
        self._build_networks(episodes, found)                            # 3. networks
        self.optimizer = torch.optim.AdamW([p for m in {id(m): m for m in self.nets.trained().values()}.values()
                                            for p in m.parameters() if p.requires_grad],
                                           lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.step = 0
        self.pi_cache: torch.Tensor | None = None  # frozen pi_beta logits (N, D, B), fp16
        if found is not None:
            self._resume_state(*found)
        self.views = self._prepare_views()

    # ---- the steps of set-up -------------------------------------------------------------------
    def _load_data(self, episodes: list[Episode] | None) -> tuple[list[Episode], object]:
        cfg = self.cfg
        keep = (lambda e: e.success) if cfg.algo.name == "filtered_bc" else (lambda e: True)
        store = None
        with self.accelerator.main_process_first():  # the frame cache is written once
            if episodes is None:
                episodes, store = load_training_data(cfg.data, keep)
            else:
                episodes = [e for e in episodes if keep(e)]
        if not episodes:
            raise DatasetError(f"{cfg.algo.name}: no episodes to train on"
                               + (" (no successful episodes)" if cfg.algo.name == "filtered_bc" else ""))
        return episodes, store

    def _fit_tokenizer(self, episodes: list[Episode]):
        """Bins from the data (§2.1), or the ones the weights were trained with (behavior_init, resume).
        Returns the checkpoint to resume from, (folder, state) or None."""
        cfg = self.cfg
        self.tokenizer = ActionTokenizer.fit(np.concatenate([e.actions for e in episodes]), cfg.algo.num_bins,
                                             {int(k): int(v) for k, v in cfg.algo.per_dim_bins.items()},
                                             names=common_action_names(episodes))
        if cfg.algo.chunk > 1:
            self.tokenizer = self.tokenizer.chunked(cfg.algo.chunk)
        if cfg.algo.behavior_init:
            self.tokenizer = behavior_init_tokenizer(cfg, self.tokenizer)
        found = latest_valid_checkpoint(self.run_dir)
        if found is not None:
            self.tokenizer = resumed_tokenizer(self.run_dir, cfg, found[0], self.tokenizer)
        self.resumed_from = found[0] if found is not None else None
        return found

    def _build_networks(self, episodes: list[Episode], found) -> None:
        cfg, acc = self.cfg, self.accelerator
        with acc.main_process_first():  # the base model is written once
            model, self.processor = build_models(cfg, self.run_dir, episodes, self.tokenizer)
        model.to(acc.device)
        if cfg.model.freeze_vision:  # before the copies: pi_beta and theta_bar inherit it
            logger.info("vision encoder frozen (%d parameters)", freeze_vision_encoder(model))
        self.adapter = VLMAdapter(model, self.processor, self.tokenizer, cfg.model.use_state,
                                  leftover=cfg.algo.leftover, image_position=cfg.model.image_position,
                                  critic=cfg.algo.critic)
        self._cache_image_features()
        self.nets: Networks = make_networks(cfg, model, self.processor, self.run_dir, acc)
        self.adapter.model = self.nets.theta
        if found is not None:
            load_weights(self.nets, found[0])
        self.fsdp = cfg.train.distributed == "fsdp" and self.world > 1
        if self.fsdp:  # after loading full weights, before the optimizer sees the (now sharded) parameters
            shard_networks(self.nets, self.world, acc.device, cfg.train.mixed_precision)
        elif cfg.train.distributed == "fsdp":
            logger.info("train.distributed=fsdp with one process: nothing to shard, training unsharded")

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

    def _prepare_views(self) -> Networks:
        """The modules the loss runs through: DDP-wrapped theta and pi_beta (sharded modules synchronise
        their own gradients and need no wrapper); theta_bar is never trained and stays as it is."""
        n = self.nets
        if self.fsdp:
            return Networks(n.theta, n.pi_beta, n.theta_bar)
        if n.qsft:
            theta, pi_beta, self.optimizer = self.accelerator.prepare(n.theta, n.pi_beta, self.optimizer)
            return Networks(theta, pi_beta, n.theta_bar)
        theta, self.optimizer = self.accelerator.prepare(n.theta, self.optimizer)
        return Networks(theta, theta)

    # the networks by their checkpoint names (tests and tools read these)
    model = property(lambda self: self.nets.theta)
    behavior = property(lambda self: self.nets.pi_beta)
    target = property(lambda self: self.nets.theta_bar)

    @property
    def qsft(self) -> bool:
        return self.nets.qsft

    # ---- resume ------------------------------------------------------------------------------
    def _resume_state(self, ckpt: Path, state: dict) -> None:
        saved_fsdp = state.get("distributed") == "fsdp"
        if saved_fsdp != self.fsdp:
            raise ConfigError(f"{ckpt} was written by a {'sharded (fsdp)' if saved_fsdp else 'unsharded'} run; "
                              f"resume it with the same train.distributed and a process count "
                              f"{'> 1' if saved_fsdp else '= 1 or ddp'}")
        if self.fsdp:
            from qsft_robot.train.fsdp import load_optimizer_state
            load_optimizer_state(self.nets.trained(), self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed from %s at step %d", ckpt, self.step)

    # ---- one step ------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> np.ndarray:
        return batch_indices(self.cfg.train.seed, step, len(self.data), self.cfg.train.batch_size, self.sample_probs)

    @torch.no_grad()
    def build_behavior_cache(self, batch_size: int = 64) -> torch.Tensor:
        """Frozen pi_beta: its teacher-forced logits for every transition, computed once.

        Row i holds pi_beta at (P_i, b_i^{1:d-1}) for each d; the cross-step target of i needs
        pi_beta at the first dimension of P_{i+1}, which is row next_index[i], column 0.
        """
        self.nets.pi_beta.eval().requires_grad_(False)
        out = []
        for start in tqdm(range(0, len(self.data), batch_size), desc="cache pi_beta", unit="batch"):
            idx = np.arange(start, min(start + batch_size, len(self.data)))
            images, instr, state = self.data.inputs(idx)
            out.append(self.adapter.teacher_forced_logits(self.nets.pi_beta, images, instr, state,
                                                          self.data.tokens[idx], with_dummy=False).half())
        logger.info("cached frozen pi_beta logits for %d transitions", len(self.data))
        return torch.cat(out)

    def compute_loss(self, idx: np.ndarray, images=None, next_images=None) -> tuple[torch.Tensor, dict]:
        ctx = LossContext(self.adapter, self.data, self.cfg.algo, self.nets, self.views, self.pi_cache, self.step)
        return batch_loss(ctx, idx, images, next_images)

    def train_step(self, prefetched=None) -> tuple[torch.Tensor, dict]:
        """One optimisation step over the global batch: this process's shard, in grad_accum
        micro-batches (gradients synchronised across processes on the last one), then Polyak."""
        self.nets.theta.train()
        idx = self.batch_indices(self.step)
        images = next_images = None
        if prefetched is not None:
            p_idx, images, next_images = prefetched
            assert np.array_equal(p_idx, idx), "prefetched batch out of step"
        chunks = np.array_split(np.arange(len(idx))[self.rank::self.world], self.cfg.train.grad_accum)
        self.optimizer.zero_grad(set_to_none=True)
        total, stats = 0.0, {}
        for k, ch in enumerate(chunks):
            with self._grad_sync(last=k == len(chunks) - 1):
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
                for m in (self.nets.theta, self.nets.theta_bar):
                    m.reshard()
            polyak_update(self.nets.theta_bar, self.nets.theta, self.cfg.algo.polyak_alpha)
        self.step += 1
        return torch.tensor(total), stats

    def _grad_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Gradients are synchronised across processes on the last micro-batch only."""
        models = [self.views.theta] + ([self.views.pi_beta] if self.qsft else [])
        stack = contextlib.ExitStack()
        if self.fsdp:
            from qsft_robot.train.fsdp import set_gradient_sync
            set_gradient_sync(models, last)
        elif not last:
            for m in models:
                stack.enter_context(self.accelerator.no_sync(m))
        return stack

    def periodic_eval(self) -> float:
        """Closed-loop success of the current weights, through the eval hook (main process)."""
        from qsft_robot.algo.policy import Policy

        e = self.cfg.eval
        self.nets.theta.eval()
        mode = e.mode if self.qsft else "argmax_behavior"
        support = self.cfg.algo.support_eps if self.qsft and mode == "argmax_q" else None
        policy = Policy(self.adapter, behavior_model=self.nets.pi_beta if self.qsft else None, mode=mode,
                        beta=e.beta, support_eps=support)
        with torch.no_grad():
            success = self.eval_hook(policy, self.step)
        self.nets.theta.train()
        return success

    def frozen_behavior_due(self) -> bool:
        a = self.cfg.algo
        return self.qsft and a.behavior == "frozen" and self.pi_cache is None and self.step >= a.behavior_steps

    # ---- the loop ------------------------------------------------------------------------------
    def train(self, stop_after: int | None = None) -> Path:
        cfg, main = self.cfg, self.accelerator.is_main_process
        prefetch = prefetcher(self.data, cfg.train.seed, cfg.train.batch_size, self.step, cfg.train.steps,
                              self.sample_probs, cfg.train.num_workers)
        probe, last = self._value_probe(), None
        bar = tqdm(total=cfg.train.steps, initial=self.step, desc=f"train {cfg.algo.name}", unit="step",
                   disable=not main)
        with RunLog(self.run_dir, self.rank, main, cfg.train.tensorboard, self.step) as log:
            while self.step < cfg.train.steps:
                row = self._logged_step(next(prefetch) if prefetch is not None else None)
                log_now = self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps
                if log_now and probe is not None and not self.frozen_behavior_due():
                    row.update(probe.measure(self))
                if log_now or row["eval_success"] is not None:
                    log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
                bar.update(1)
                if self.step % cfg.train.save_every == 0 or self.step == cfg.train.steps:
                    last = self.checkpoint()
                if stop_after is not None and self.step >= stop_after:
                    break
            bar.close()
        if probe is not None:
            from qsft_robot.train.value_probe import plot_values
            plot_values(log.path, self.run_dir / "values.png")
        if last is None and self.resumed_from is not None and self.resumed_from.name == f"step-{self.step:08d}":
            return self.resumed_from  # a finished run asked to run again: nothing new to save
        return last if last is not None else self.checkpoint()

    def _logged_step(self, prefetched) -> dict:
        """One step (freezing pi_beta first when its phase ends) and its log row, with the periodic
        closed-loop evaluation when due."""
        cfg = self.cfg
        if self.frozen_behavior_due():
            self.pi_cache = self.build_behavior_cache()
        t0 = time.perf_counter()
        loss, stats = self.train_step(prefetched)
        row = {"step": self.step, "loss": loss.item(), "lr": self.scheduler.get_last_lr()[0],
               "step_time": time.perf_counter() - t0, "eval_success": None, **stats}
        if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.accelerator.is_main_process:
            row["eval_success"] = self.periodic_eval()
            logger.info("step %d: closed-loop success %.2f on %s", self.step, row["eval_success"], cfg.eval.task)
        return row

    def _value_probe(self):
        """Q of successful vs failed episodes' first actions (train/value_probe.py), Q-SFT on one process."""
        if not (self.qsft and self.accelerator.is_main_process and self.world == 1):
            return None
        from qsft_robot.train.value_probe import ValueProbe
        probe = ValueProbe(self.data, seed=self.cfg.train.seed)
        return probe if probe.usable else None

    # ---- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> Path:
        self.accelerator.wait_for_everyone()
        path = self.run_dir / "checkpoints" / f"step-{self.step:08d}"
        gathered = self._gather_sharded() if self.fsdp else None  # collectives: every process takes part
        if self.accelerator.is_main_process:
            path = self._save(gathered)
        self.accelerator.wait_for_everyone()
        return path

    def _gather_sharded(self) -> dict:
        """Full (unsharded) weights of every network and the optimizer state keyed by parameter name."""
        from qsft_robot.train.fsdp import full_optimizer_state, full_state_dict
        return {"weights": {k: full_state_dict(m) for k, m in self.nets.saved().items()},
                "optimizer": full_optimizer_state(self.nets.trained(), self.optimizer)}

    def _save(self, gathered: dict | None = None) -> Path:
        cfgd = to_dict(self.cfg)
        cfgd["reward_rule"] = self.data.reward_rule
        state = {"step": self.step, "world_size": self.world, "distributed": "fsdp" if self.fsdp else "ddp",
                 "optimizer": gathered["optimizer"] if gathered else self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state()}
        return save_checkpoint(self.run_dir, self.step, self.nets.saved(), self.processor, self.tokenizer, cfgd,
                               state, keep_last=self.cfg.train.keep_last,
                               state_dicts=gathered["weights"] if gathered else None)


def end_distributed() -> None:
    """Leave the process group cleanly at the end of a multi-process run: every rank waits for the others
    (rank 0 may still be writing the last checkpoint), then the group is destroyed. Without it, a rank
    whose interpreter shuts down while gloo's threads still run aborts with "terminate called without an
    active exception" (exit -6, more likely on a loaded machine) and torchrun reports a failure after a
    finished run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def train(cfg: RunConfig, episodes: list[Episode] | None = None, eval_hook: EvalHook | None = None) -> Path:
    return Trainer(cfg, episodes, eval_hook).train()
