"""Atomic checkpoint folders (docs/design.md §4): written to a temp folder, then renamed; keep-last-K;
a corrupt latest checkpoint falls back to the previous one with a warning."""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

logger = logging.getLogger(__name__)
MARKER = "trainer_state.pt"


class CheckpointError(FileNotFoundError):
    pass


def save_checkpoint(run_dir: Path, step: int, models: dict, processor, action_tokenizer, config: dict,
                    trainer_state: dict, keep_last: int = 2, state_dicts: dict | None = None) -> Path:
    """models: name -> HF model saved as a subfolder ('model' is what acts; 'behavior', 'target').
    state_dicts: name -> full weights to write instead of the module's own (FSDP-sharded modules)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}.tmp-", dir=ckpt_root))
    try:
        for name, model in models.items():
            model.save_pretrained(tmp / name, **({"state_dict": state_dicts[name]} if state_dicts else {}))
        processor.save_pretrained(tmp / "model")
        action_tokenizer.save(tmp / "action_tokenizer.json")
        (tmp / "qsft_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        torch.save(trainer_state, tmp / MARKER)  # written last: its presence marks a complete folder
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def load_trainer_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / MARKER, map_location="cpu", weights_only=False)


def latest_valid_checkpoint(run_dir: Path) -> tuple[Path, dict] | None:
    """Newest checkpoint whose trainer state loads; older ones are tried when the newest is corrupt."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            state = load_trainer_state(ckpt)
            if not (ckpt / "model" / "config.json").is_file():
                raise CheckpointError("model/config.json missing")
            return ckpt, state
        except Exception as e:  # a torn/corrupt file can raise many error types
            logger.warning("checkpoint %s is unusable (%s); falling back to the previous one", ckpt, e)
    return None


# settings a resumed run may change: how long it runs and how it saves, logs, evaluates and where it reads
# from; everything else (model, algorithm, data semantics, optimiser) would make the resumed weights
# a mix of two experiments
RESUMABLE_CHANGES = {"train.steps", "train.save_every", "train.keep_last", "train.log_every", "train.num_workers",
                     "train.tensorboard", "train.eval_every", "train.device", "train.out_dir", "data.path",
                     "data.feature_cache", "model.path", "eval", "collect", "reward_rule"}


# settings whose default differs from the value that code without the key used: a checkpoint config that
# lacks the key was trained with the value here (the current default would misread those runs)
LEGACY_VALUES = {"model.text_hidden": 192, "model.text_layers": 3, "algo.label_sigma": 0.0,
                 "model.position_channels": 0}


def config_changes(saved: dict, now: dict, defaults: dict | None = None, prefix: str = "") -> list[str]:
    """'key: saved -> now' for every setting that differs between a checkpoint's config and this run's.

    A key the checkpoint does not have counts as the value the code that wrote it used: its LEGACY_VALUES
    entry, else the current default (`defaults`: the config dataclasses' values)."""
    changes = []
    defaults = defaults or {}
    for key in sorted(set(saved) | set(now)):
        name = f"{prefix}{key}"
        if name in RESUMABLE_CHANGES:
            continue
        a, b, d = saved.get(key), now.get(key), defaults.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, d if isinstance(d, dict) else {}, f"{name}.")
        elif key not in saved and (name in LEGACY_VALUES or key in defaults):
            older = LEGACY_VALUES.get(name, d)
            if b != older:
                changes.append(f"{name}: {older!r} (saved before the setting existed) -> {b!r}")
        elif a != b:
            changes.append(f"{name}: {a!r} -> {b!r}")
    return changes


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its newest valid checkpoint)."""
    path = Path(path)
    if (path / "model" / "config.json").is_file() and (path / "action_tokenizer.json").is_file():
        return path
    found = latest_valid_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no usable checkpoint at {path} (expected a step-* folder or a run folder "
                              f"with checkpoints/step-*)")
    return found[0]
