"""One source of truth per choice, and one config for every command (YAML < --set < the command's flags)."""
from __future__ import annotations

import typing

import pytest

from qsft_robot.cli import COLLECT_FLAGS, EVAL_FLAGS, TRAIN_FLAGS, _load, build_parser
from qsft_robot.config import ACTING_MODES, ALGORITHMS, ConfigError, RunConfig, choices, load_config, validate


def _option(sub: str, flag: str):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return next(a for a in subparsers.choices[sub]._actions if flag in a.option_strings)


def test_cli_choices_and_acting_come_from_the_config_declarations():
    from qsft_robot.algo.policy import MODES
    from qsft_robot.benchmark import BC_METHODS, Q_RECIPES, BenchSpec, methods

    assert tuple(_option("train", "--algo").choices) == ALGORITHMS == choices("algo.name")
    assert tuple(_option("eval", "--mode").choices) == ACTING_MODES == choices("eval.mode") == MODES
    assert set(BC_METHODS) | {"qsft"} == set(ALGORITHMS)   # the benchmark trains every algorithm
    assert methods(BenchSpec()) == (*BC_METHODS, *(f"qsft_{r}" for r in Q_RECIPES))   # BC first: Q-SFT needs it
    assert _option("collect", "--episodes").type is int


def test_a_bad_choice_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match="config key 'algo.name': 'dqn' is not one of qsft, sft, filtered_bc"):
        load_config(None, ["algo.name=dqn"])
    cfg = RunConfig()
    cfg.eval.mode = "greedy"  # set in code, not loaded: validate still checks the declaration
    with pytest.raises(ConfigError, match="eval.mode"):
        validate(cfg)
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"  # YAML's bare no
    with pytest.raises(ConfigError, match="`train.steps`: Couldn't parse 'abc' into an int"):
        load_config(None, ["train.steps=abc"])
    with pytest.raises(ConfigError, match="`algo`: The fields `bogus` are not valid"):
        load_config(None, ["algo.bogus=1"])
    got = load_config(None, ["model.lora_targets=[q_proj, v_proj]", "algo.per_dim_bins={3: 2}", "train.lr=1e-3"])
    assert (got.model.lora_targets, got.algo.per_dim_bins, got.train.lr) == (["q_proj", "v_proj"], {3: 2}, 1e-3)
    for key, typ in typing.get_type_hints(type(cfg.train)).items():
        if typing.get_origin(typ) is typing.Literal:
            assert getattr(cfg.train, key) in typing.get_args(typ)


@pytest.mark.parametrize("old, new", [("paper", "tilted_behavior"), ("sft", "argmax_behavior")])
def test_a_renamed_acting_mode_is_refused_with_its_new_name(tmp_path, capsys, old, new):
    from qsft_robot.algo.policy import Policy
    from qsft_robot.cli import main

    with pytest.raises(ConfigError, match=f"config key 'eval.mode': '{old}' was renamed '{new}'"):
        load_config(None, [f"eval.mode={old}"])
    yml = tmp_path / "c.yaml"
    yml.write_text(f"eval:\n  mode: {old}\n")
    with pytest.raises(ConfigError, match=f"was renamed '{new}'"):
        load_config(yml)
    with pytest.raises(SystemExit):
        main(["eval", "runs/x", "--mode", old])
    assert f"'{old}' was renamed '{new}'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"acting mode '{old}' was renamed '{new}'"):
        Policy(adapter=None, mode=old)   # what the ROS node's `mode` parameter reaches
    assert load_config(None, [f"eval.mode={new}"]).eval.mode == new


@pytest.mark.parametrize("command, flags, section", [(["collect", "--out", "x"], COLLECT_FLAGS, "collect"),
                                                     (["eval", "runs/x"], EVAL_FLAGS, "eval")])
def test_collect_and_eval_read_the_config_like_train(tmp_path, command, flags, section):
    yml = tmp_path / "c.yaml"
    yml.write_text(f"{section}:\n  task: base_goto\n  episodes: 7\n  seed: 5\n")
    a = build_parser().parse_args([command[0], "--config", str(yml), "--set", f"{section}.seed=9",
                                   "--episodes", "3", *command[1:]])
    got = getattr(_load(a, flags), section)
    assert (got.task, got.episodes, got.seed) == ("base_goto", 3, 9)  # file < --set < flag
    a = build_parser().parse_args(command)
    assert getattr(_load(a, flags), section) == getattr(RunConfig(), section)  # no flag given: the defaults


def test_train_flags_are_config_keys():
    a = build_parser().parse_args(["train", "--data", "d", "--algo", "sft", "--out", "o", "--set", "train.steps=5"])
    cfg = _load(a, TRAIN_FLAGS)
    assert (cfg.data.path, cfg.algo.name, cfg.train.out_dir, cfg.train.steps) == ("d", "sft", "o", 5)
    a = build_parser().parse_args(["train", "data.path=/x", "train.steps=7", "--algo", "sft"])  # bare KEY=VALUE
    cfg = _load(a, TRAIN_FLAGS)
    assert (cfg.data.path, cfg.train.steps, cfg.algo.name) == ("/x", 7, "sft")


def test_benchmark_flags_default_to_benchspec_and_pass_through():
    """The benchmark's defaults live in BenchSpec only: flags left out keep them, flags given replace them."""
    from qsft_robot.benchmark import BenchSpec
    from qsft_robot.cli import benchmark_spec, build_parser

    assert benchmark_spec(build_parser().parse_args(["benchmark"])) == BenchSpec()
    spec = benchmark_spec(build_parser().parse_args(
        ["benchmark", "--tasks", "base_goto_red", "--seeds", "4", "--q-steps", "7", "--quality", "stitch",
         "--set", "train.lr=0.1", "--q-set", "algo.gamma=0.5", "--config", "c.yaml", "--q-recipes", "return_to_go"]))
    assert (spec.tasks, spec.seeds, spec.q_steps, spec.quality) == (["base_goto_red"], [4], 7, "stitch")
    assert (spec.overrides, spec.q_overrides, spec.config) == (["train.lr=0.1"], ["algo.gamma=0.5"], "c.yaml")
    assert spec.bc_steps == BenchSpec().bc_steps and spec.eval_seed == BenchSpec().eval_seed
    assert spec.q_recipes == ["return_to_go"]


def test_a_setting_missing_from_an_older_checkpoint_reads_as_the_value_that_code_used():
    """Resuming a run saved before model.text_hidden / algo.label_sigma / model.position_channels existed:
    it was trained with the earlier values (3 x 192, one-hot labels, no position code), not today's
    defaults, so today's defaults are a change."""
    from qsft_robot.checkpoint import config_changes
    from qsft_robot.config import RunConfig, load_config, to_dict

    defaults = to_dict(RunConfig())
    old = to_dict(RunConfig())
    del old["model"]["text_hidden"], old["model"]["text_layers"], old["algo"]["label_sigma"]
    del old["model"]["position_channels"]
    del old["data"]["drop_nonfinite"]  # added later with an unchanged default: no change
    changes = config_changes(old, to_dict(load_config(None, [])), defaults)
    assert sorted(c.split(":")[0] for c in changes) == ["model.position_channels", "model.text_hidden",
                                                        "model.text_layers"]
    earlier = ["model.text_hidden=192", "model.text_layers=3", "model.position_channels=0"]
    assert config_changes(old, to_dict(load_config(None, [*earlier, "algo.label_sigma=0"])), defaults) == []
    assert config_changes(old, to_dict(load_config(None, [*earlier, "algo.label_sigma=4"])), defaults) == [
        "algo.label_sigma: 0.0 (saved before the setting existed) -> 4.0"]
    assert config_changes(old, to_dict(load_config(None, ["data.drop_nonfinite=true", *earlier])), defaults) == [
        "data.drop_nonfinite: False (saved before the setting existed) -> True"]


def test_every_shipped_config_loads():
    """Each YAML in configs/ is a valid run config: a key renamed in the dataclasses fails here, not for a user."""
    from pathlib import Path

    from qsft_robot.config import load_config
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 5
    presets = {p.name: load_config(str(p), []).model for p in configs}
    assert presets["model_smollm2.yaml"].preset == "smollm2" and presets["model_smollm2.yaml"].lora == 16
