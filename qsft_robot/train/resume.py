"""What a run may start from: a finished BC run as pi_beta (algo.behavior_init) or its own last
checkpoint (resume). Both must match the data and settings the weights were trained with."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import yaml

from qsft_robot.checkpoint import config_changes, resolve_checkpoint
from qsft_robot.config import ConfigError, RunConfig, to_dict
from qsft_robot.data.action_tokenizer import ActionTokenizer

logger = logging.getLogger("qsft_robot.train.trainer")


def behavior_init_tokenizer(cfg: RunConfig, fitted: ActionTokenizer) -> ActionTokenizer:
    """pi_beta from a finished BC run (docs/design.md §2.3, frozen, without re-training it): same data
    statistics required; pi_beta is then frozen (algo.behavior=frozen) with its logits cached."""
    a = cfg.algo
    if a.name != "qsft":
        raise ConfigError(f"config key 'algo.behavior_init' applies to algo.name=qsft, not {a.name!r}")
    src = resolve_checkpoint(a.behavior_init)
    saved = ActionTokenizer.load(src / "action_tokenizer.json")
    if saved.chunk != fitted.chunk:
        raise ConfigError(f"algo.behavior_init={src} decides {saved.chunk} env step(s) at a time, this run "
                          f"{fitted.chunk} (algo.chunk): train the BC run with the same algo.chunk")
    if saved.bins != fitted.bins or not np.allclose(saved.low, fitted.low) or not np.allclose(saved.high, fitted.high):
        raise ConfigError(f"algo.behavior_init={src} was trained with other action bins/statistics "
                          f"({saved.bins}); train it on the same data and algo.num_bins")
    a.behavior, a.behavior_steps = "frozen", 0
    logger.info("pi_beta, theta and theta_bar start from %s; pi_beta frozen", src)
    return saved


def resumed_tokenizer(run_dir: Path, cfg: RunConfig, ckpt: Path, fitted: ActionTokenizer) -> ActionTokenizer:
    """Resuming: the same experiment only (a changed setting is refused with the list of changes), and
    the action statistics the weights were trained with."""
    saved_file = ckpt / "qsft_config.yaml"
    if saved_file.is_file():  # every checkpoint writes it; a folder without one has nothing to compare
        changes = config_changes(yaml.safe_load(saved_file.read_text()) or {}, to_dict(cfg), to_dict(RunConfig()))
        if changes:
            raise ConfigError(f"{run_dir} holds a run with other settings ({'; '.join(changes)}): resume it "
                              f"with its own config, or use a new train.out_dir")
    saved = ActionTokenizer.load(ckpt / "action_tokenizer.json")
    if saved.bins != fitted.bins or saved.chunk != fitted.chunk:
        raise ConfigError(f"run {run_dir} was trained on {saved.num_dims} action dims with bins {saved.bins}; "
                          f"this dataset/config gives {fitted.bins}: use a new train.out_dir or the original data")
    return saved
