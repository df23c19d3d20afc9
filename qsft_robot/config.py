"""Dataclass configs loaded from YAML, with `--set a.b=c` overrides; errors name the offending key."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    # "tiny": the compact default (ImageNet EfficientNet-Lite0 tower + a small Llama, built offline);
    # "tiny_scratch": the same with the earlier CLIP-style tower trained from scratch (comparison only);
    # "pretrained": a local HF folder (model.path)
    preset: str = "tiny"
    path: str = ""                  # local HF folder for preset=pretrained (from_pretrained(path))
    image_size: int = 64
    patch_size: int = 16            # tiny_scratch: vision patch size ((image_size/patch_size)^2 image tokens)
    output_stride: int = 16         # tiny: EfficientNet feature map stride (4, 8, 16, 32); 16 -> 4x4 tokens at 64 px
    image_position: str = "first"   # first | after_instruction (image tokens after the question)
    use_state: bool = True          # proprio state as text in the prompt
    token_mapping: str = "added_tokens"  # or "least_used" (OpenVLA)
    dtype: str = "float32"
    # train projector + language model only (LLaVA-1.5's recipe; see models/families.py). With the tiny
    # preset's pretrained tower frozen, image features are computed once per frame and cached
    freeze_vision: bool = True
    lora_rank: int = 0              # >0: theta, pi_beta, theta_bar as LoRA adapters over one frozen base (peft)
    lora_alpha: int = 32
    lora_targets: list = field(default_factory=list)  # module names; empty: attention, MLP and lm_head


@dataclass
class AlgoConfig:
    name: str = "qsft"              # qsft | sft | filtered_bc
    gamma: float = 0.95
    polyak_alpha: float = 0.005
    support_eps: float = 1e-4
    next_value: str = "max"         # max (DESIGN §2.4) | expectation | expectile (in-sample; algo/qsft.py)
    expectile: float = 0.9          # tau of next_value=expectile (0.5: expectation, -> 1: max over the support)
    target: str = "bellman"         # bellman | return_to_go (w = the logged discounted return G_t: Q of pi_beta)
    mc_lower_bound: bool = False    # w = max(Bellman target, logged discounted return-to-go); see algo/qsft.py
    leftover: str = "dummy"         # dummy | uniform (see README: why dummy is the default)
    behavior: str = "joint"         # joint | frozen (train pi_beta first, then freeze)
    behavior_steps: int = 0         # steps of pi_beta pre-training when behavior=frozen
    behavior_init: str = ""         # a BC (sft) checkpoint/run: pi_beta = it, frozen; theta, theta_bar start from it
    num_bins: int = 256
    per_dim_bins: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    path: str = ""
    format: str = "auto"            # auto | lerobot | hdf5
    reward: str = "auto"            # auto | success | reward | python:module:function
    cameras: list = field(default_factory=list)  # empty: all cameras in the dataset
    instruction: str = ""           # for logs without language (ALOHA HDF5)
    end_is_terminal: bool = False   # last step of every episode is terminal (failed time-out = value 0)
    drop_nonfinite: bool = False    # drop frames with NaN/inf actions (counted in the log) instead of failing
    feature_cache: str = ""         # frozen-tower feature cache folder; "": $QSFT_ROBOT_CACHE or ~/.cache/qsft_robot


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    sampling: str = "frame"         # frame (uniform) | episode (each episode equal weight; train/trainer.py)
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    schedule: str = "cosine"        # cosine | constant
    grad_clip: float = 1.0
    seed: int = 0
    out_dir: str = "runs/default"
    save_every: int = 250
    keep_last: int = 2
    log_every: int = 25
    num_workers: int = 0
    grad_accum: int = 1             # micro-batches per optimizer step (per process)
    mixed_precision: str = "no"     # no | bf16 | fp16 (GPU; accelerate autocast, or FSDP's MixedPrecisionPolicy)
    distributed: str = "ddp"        # ddp | fsdp (shard theta, pi_beta, theta_bar over the processes)
    device: str = "auto"            # auto | cpu | cuda
    tensorboard: bool = True
    eval_every: int = 0             # >0: closed-loop success in sim (eval.task, eval.episodes) every N steps


@dataclass
class EvalConfig:
    task: str = "arm_reach"
    episodes: int = 20
    seed: int = 1000
    num_envs: int = 10
    mode: str = "argmax_q"          # argmax_q | paper | sft
    beta: float = 1.0
    videos: int = 2
    max_steps: int = 0              # 0: the task's own limit


@dataclass
class CollectConfig:
    task: str = "arm_reach"
    episodes: int = 100
    quality: str = "mixed"
    seed: int = 0
    image_size: int = 64
    workers: int = 1


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)


def _coerce(value, typ, key):
    origin = typing.get_origin(typ) or typ
    if origin in (list, dict):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, origin):
            raise ConfigError(f"config key '{key}': expected {origin.__name__}, got {value!r}")
        return value
    if typ is bool:
        if isinstance(value, str):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected a boolean, got {value!r}")
    if typ is str and isinstance(value, bool):
        # YAML 1.1 reads a bare no/off (yes/on) as a boolean; the string keys that accept such words
        # (train.mixed_precision: no) mean the word itself
        return "yes" if value else "no"
    try:
        return typ(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key '{key}': expected {typ.__name__}, got {value!r}") from e


def _fill(obj, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(names))})")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' must be a mapping")
            _fill(cur, v, key + ".")
        else:
            setattr(obj, k, _coerce(v, hints[k], key))
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    cfg = RunConfig()
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        _fill(cfg, yaml.safe_load(path.read_text()) or {})
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override must look like key=value, got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        nested: dict = {}
        cur = nested
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = yaml.safe_load(value)
        _fill(cfg, nested)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    checks = [
        ("algo.name", cfg.algo.name in ("qsft", "sft", "filtered_bc")),
        ("algo.leftover", cfg.algo.leftover in ("dummy", "uniform")),
        ("algo.behavior", cfg.algo.behavior in ("joint", "frozen")),
        ("algo.next_value", cfg.algo.next_value in ("max", "expectation", "expectile")),
        ("algo.expectile", 0.0 < cfg.algo.expectile < 1.0),
        ("algo.target", cfg.algo.target in ("bellman", "return_to_go")),
        ("algo.gamma", 0.0 <= cfg.algo.gamma <= 1.0),
        ("algo.polyak_alpha", 0.0 < cfg.algo.polyak_alpha <= 1.0),
        ("algo.num_bins", cfg.algo.num_bins >= 2),
        ("train.batch_size", cfg.train.batch_size >= 1),
        ("train.schedule", cfg.train.schedule in ("cosine", "constant")),
        ("train.sampling", cfg.train.sampling in ("frame", "episode")),
        ("train.grad_accum", cfg.train.grad_accum >= 1 and cfg.train.batch_size % cfg.train.grad_accum == 0),
        ("train.mixed_precision", cfg.train.mixed_precision in ("no", "bf16", "fp16")),
        ("train.device", cfg.train.device in ("auto", "cpu", "cuda")),
        ("train.distributed", cfg.train.distributed in ("ddp", "fsdp")),
        ("eval.mode", cfg.eval.mode in ("argmax_q", "paper", "sft")),
        ("model.preset", cfg.model.preset in ("tiny", "tiny_scratch", "pretrained")),
        ("model.output_stride", cfg.model.output_stride in (4, 8, 16, 32)),
    ]
    for key, ok in checks:
        if not ok:
            raise ConfigError(f"invalid value for config key '{key}'")
    if cfg.train.distributed == "fsdp" and cfg.model.lora_rank > 0:
        raise ConfigError("config key 'train.distributed': fsdp with model.lora_rank > 0 is not supported (three "
                          "adapters over one shared base); LoRA's trainable part is small, use ddp")
    if cfg.train.distributed == "fsdp" and cfg.train.eval_every > 0:
        raise ConfigError("config key 'train.eval_every' must be 0 with train.distributed=fsdp (closed-loop eval "
                          "needs the whole model in one process); evaluate checkpoints with `qsft-robot eval`")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
