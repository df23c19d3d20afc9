"""The default VLM (real transformers LLaVA built from config) through training, resume and decoding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qsft_robot.config import ACTING_MODES, load_config
from qsft_robot.sim.collect import collect_episodes
from qsft_robot.checkpoint import list_checkpoints
from qsft_robot.train.trainer import Trainer


@pytest.fixture(scope="module")
def episodes():
    return collect_episodes("arm_reach", 8, "mixed", seed=0, image_size=64)


def test_dataset_model_mismatch_is_caught_before_step_one(tmp_path, episodes):
    from qsft_robot.config import ConfigError

    Trainer(cfg_for(tmp_path, steps=2), episodes).train()
    base = collect_episodes("base_goto", 2, "mixed", seed=0, image_size=64)  # 2 action dims, not the arm's 4
    with pytest.raises(ConfigError, match="action dims"):
        Trainer(cfg_for(tmp_path, steps=4), base)


def test_resume_refuses_other_settings_and_reuses_a_finished_run(tmp_path, episodes):
    from qsft_robot.config import ConfigError

    done = Trainer(cfg_for(tmp_path, steps=2), episodes).train()
    stamp = (done / "trainer_state.pt").stat().st_mtime_ns
    # the error names every changed setting, old and new value; nothing on disk changes
    with pytest.raises(ConfigError, match=r"algo.gamma: 0.95 -> 0.5; algo.num_bins: 16 -> 8"):
        Trainer(cfg_for(tmp_path, steps=4, **{"algo.num_bins": 8, "algo.gamma": 0.5}), episodes)
    assert list_checkpoints(tmp_path)[-1] == done
    # a checkpoint from before a setting existed resumes while that setting keeps its default
    import yaml
    saved = yaml.safe_load((done / "qsft_config.yaml").read_text())
    del saved["train"]["sampling"]
    (done / "qsft_config.yaml").write_text(yaml.safe_dump(saved))
    assert Trainer(cfg_for(tmp_path, steps=2), episodes).step == 2
    with pytest.raises(ConfigError, match=r"train.sampling: 'frame' \(saved before the setting existed\) -> 'episode'"):
        Trainer(cfg_for(tmp_path, steps=2, **{"train.sampling": "episode"}), episodes)
    # running a finished run again returns its checkpoint without training or rewriting it
    again = Trainer(cfg_for(tmp_path, steps=2, **{"train.log_every": 5}), episodes)  # logging may change
    assert again.step == 2 and again.train() == done
    assert (done / "trainer_state.pt").stat().st_mtime_ns == stamp


def cfg_for(tmp, algo="qsft", steps=4, **extra):
    sets = [f"algo.name={algo}", f"train.out_dir={tmp}", f"train.steps={steps}", "train.batch_size=8",
            "algo.num_bins=16", "train.save_every=2", "train.keep_last=3", "train.log_every=1",
            "train.warmup_steps=1"] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, sets)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("algo", ["qsft", "sft", "filtered_bc"])
def test_each_algorithm_trains_and_writes_a_checkpoint(tmp_path, episodes, algo):
    tr = Trainer(cfg_for(tmp_path, algo, steps=3), episodes)
    before = params(tr.model).clone()
    ckpt = tr.train()
    assert not torch.equal(before, params(tr.model))
    for f in ("model/config.json", "action_tokenizer.json", "qsft_config.yaml", "trainer_state.pt"):
        assert (ckpt / f).exists()
    assert (ckpt / "behavior" / "config.json").exists() == (algo == "qsft")
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and len(log) == 4
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_continues_exactly(tmp_path, episodes):
    full = Trainer(cfg_for(tmp_path / "a"), episodes)
    full.train()
    part = Trainer(cfg_for(tmp_path / "b"), episodes)
    part.train(stop_after=2)  # as if killed after the step-2 checkpoint
    resumed = Trainer(cfg_for(tmp_path / "b"), episodes)
    assert resumed.step == 2
    resumed.train()
    for m in ("model", "behavior", "target"):
        a, b = params(getattr(full, m)), params(getattr(resumed, m))
        assert torch.allclose(a, b, atol=1e-6), m


def test_corrupt_latest_checkpoint_falls_back(tmp_path, episodes, caplog):
    Trainer(cfg_for(tmp_path, steps=4), episodes).train()
    ckpts = list_checkpoints(tmp_path)
    (ckpts[-1] / "trainer_state.pt").write_bytes(b"garbage")
    again = Trainer(cfg_for(tmp_path, steps=4), episodes)
    assert again.step == 2
    assert "unusable" in caplog.text


def test_a_checkpoint_saved_with_a_renamed_acting_mode_loads_and_resumes(tmp_path, episodes):
    """Renamed values are refused where a user types them, never in a checkpoint written before the rename."""
    import yaml

    from qsft_robot.algo.policy import load_policy

    ckpt = Trainer(cfg_for(tmp_path, algo="sft", steps=2), episodes).train()
    saved = yaml.safe_load((ckpt / "qsft_config.yaml").read_text())
    saved["eval"]["mode"] = "sft"
    (ckpt / "qsft_config.yaml").write_text(yaml.safe_dump(saved))
    assert load_policy(ckpt).mode == "argmax_behavior"
    assert Trainer(cfg_for(tmp_path, algo="sft", steps=2), episodes).step == 2


@pytest.mark.gpu
def test_training_and_cached_decode_on_cuda(tmp_path, episodes):
    """The CPU checks above on a CUDA device: Q-SFT trains under bf16 autocast, the checkpoint acts on CUDA,
    and the KV-cached decode picks the uncached decode's bins (GPU kernels may round differently, so a
    rare near-tie may flip: most tokens, not all, must agree) and the CPU's."""
    from qsft_robot.algo.policy import load_policy

    cfg = cfg_for(tmp_path, steps=2, **{"train.device": "cuda", "train.mixed_precision": "bf16"})
    ckpt = Trainer(cfg, episodes).train()
    pol = load_policy(ckpt, device="cuda")
    assert next(pol.adapter.model.parameters()).is_cuda
    imgs = np.stack([e.images["wrist"][:1] for e in episodes])
    instr = [e.instruction for e in episodes]
    states = np.stack([e.state[0] for e in episodes])
    for mode in ACTING_MODES:
        kw = dict(mode=mode, behavior_model=pol.behavior_model)
        cached = pol.adapter.decode(imgs, instr, states, use_cache=True, **kw)
        plain = pol.adapter.decode(imgs, instr, states, use_cache=False, **kw)
        assert (cached == plain).mean() >= 0.9, (mode, cached, plain)
    on_cpu = load_policy(ckpt, device="cpu").act_tokens(imgs, instr, states)
    assert (pol.act_tokens(imgs, instr, states) == on_cpu).mean() >= 0.9


def test_kv_cached_decode_equals_uncached_and_save_load_is_identical(tmp_path, episodes):
    from qsft_robot.algo.policy import load_policy

    ckpt = Trainer(cfg_for(tmp_path, steps=2), episodes).train()
    pol = load_policy(ckpt)
    imgs = np.stack([e.images["wrist"][:1] for e in episodes])  # (N, 1 cam, H, W, 3)
    instr = [e.instruction for e in episodes]
    states = np.stack([e.state[0] for e in episodes])
    for mode in ACTING_MODES:
        pol.mode = mode
        cached = pol.adapter.decode(imgs, instr, states, mode=mode, behavior_model=pol.behavior_model, use_cache=True)
        plain = pol.adapter.decode(imgs, instr, states, mode=mode, behavior_model=pol.behavior_model, use_cache=False)
        np.testing.assert_array_equal(cached, plain)
    pol2 = load_policy(ckpt)
    tok = pol.adapter.action_tokenizer.encode(np.stack([e.actions[0] for e in episodes]))
    with torch.no_grad():
        l1 = pol.adapter.teacher_forced_logits(pol.adapter.model, imgs, instr, states, tok, True)
        l2 = pol2.adapter.teacher_forced_logits(pol2.adapter.model, imgs, instr, states, tok, True)
    assert torch.equal(l1, l2)
    acts = pol2.act(imgs, instr, states)
    assert acts.shape == (len(episodes), 4) and np.isfinite(acts).all()


def test_frozen_behavior_is_trained_first_then_cached(tmp_path, episodes):
    tr = Trainer(cfg_for(tmp_path, steps=4, **{"algo.behavior": "frozen", "algo.behavior_steps": 2}), episodes)
    theta0 = params(tr.model).clone()
    tr.train(stop_after=2)
    assert torch.equal(theta0, params(tr.model)), "theta must wait while pi_beta trains first"
    phi_after_pretrain = params(tr.behavior).clone()
    tr.train()
    assert tr.pi_cache is not None and tr.pi_cache.shape[:2] == (len(tr.data), 4)
    assert torch.equal(phi_after_pretrain, params(tr.behavior)), "frozen pi_beta must not change"
    assert not torch.equal(theta0, params(tr.model))
    # the cache holds exactly what the frozen model computes
    idx = np.arange(3)
    imgs, instr, st = tr.data.inputs(idx)
    live = tr.adapter.teacher_forced_logits(tr.behavior, imgs, instr, st, tr.data.tokens[idx], with_dummy=False)
    assert torch.allclose(live, tr.pi_cache[idx].float(), atol=2e-2)


def test_grad_accumulation_matches_the_full_batch(tmp_path, episodes):
    full = Trainer(cfg_for(tmp_path / "full", steps=2), episodes)
    full.train()
    acc = Trainer(cfg_for(tmp_path / "acc", steps=2, **{"train.grad_accum": 2}), episodes)
    acc.train()
    for a, b in zip(full.model.parameters(), acc.model.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_periodic_eval_hook_logs_closed_loop_success(tmp_path, episodes):
    import csv
    import json

    from qsft_robot.cli import closed_loop_eval_hook

    cfg = cfg_for(tmp_path, algo="sft", steps=2, **{"train.eval_every": 2, "eval.episodes": 2, "eval.num_envs": 2})
    Trainer(cfg, episodes, eval_hook=closed_loop_eval_hook(cfg)).train()
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    evals = [r for r in rows if r["eval_success"]]
    saved = json.loads((tmp_path / "eval" / "eval_step2_arm_reach.json").read_text())   # the hook's evaluation
    assert len(evals) == 1 and evals[0]["step"] == "2"
    assert float(evals[0]["eval_success"]) == pytest.approx(saved["success_rate"]) and saved["episodes"] == 2


@pytest.mark.parametrize("sets, key", [(["train.distributed=fsdp", "model.lora_rank=4"], "train.distributed"),
                                       (["train.distributed=fsdp", "train.eval_every=10"], "train.eval_every"),
                                       (["train.distributed=zero3"], "train.distributed")])
def test_unsupported_distributed_settings_name_the_key(sets, key):
    from qsft_robot.config import ConfigError
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, sets)


def test_mc_lower_bound_raises_targets_to_the_logged_return():
    """w = max(Bellman, G_t): G_t = gamma^(T-1-t) on a successful episode, 0 on a failed one, the same
    for every token of a step; an already higher target is left alone."""
    from qsft_robot.algo.qsft import mc_lower_bound
    from qsft_robot.data.action_tokenizer import ActionTokenizer
    from qsft_robot.data.transitions import build_transitions

    eps = collect_episodes("arm_reach", 4, "mixed", seed=1, image_size=32)
    tok = ActionTokenizer.fit(np.concatenate([e.actions for e in eps]), 8)
    d = build_transitions(eps, tok, gamma=0.9, reward_rule="success")
    assert any(e.success for e in eps) and not all(e.success for e in eps)
    start = 0
    for e in eps:
        T = len(e)
        want = (0.9 ** np.arange(T - 1, -1, -1)) * float(e.success)
        np.testing.assert_allclose(d.mc_return[start:start + T], want, rtol=1e-6)
        start += T
    w = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.95, 0.95])  # 3 steps x D=2, row-major
    out = mc_lower_bound(w, torch.tensor([0.2, 0.9, 0.0]))
    assert out.tolist() == pytest.approx([0.2, 0.2, 0.9, 0.9, 0.95, 0.95])


def test_bf16_mixed_precision_on_cpu_computes_in_bf16_and_keeps_fp32_weights(tmp_path, episodes):
    """accelerate's autocast path, exercised on CPU (bf16 autocast exists there too): the trained step
    differs from the fp32 one by bf16 rounding only (Adam's first step is ~lr per weight, so a rounding
    change can at most flip a direction: <= 2 lr), and master weights and checkpoints stay fp32."""
    lr = 3e-4
    runs = {}
    for prec in ("no", "bf16"):
        tr = Trainer(cfg_for(tmp_path / prec, steps=1, **{"train.mixed_precision": prec, "train.lr": lr}), episodes)
        ckpt = tr.train()
        runs[prec] = params(tr.model)
        assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    from safetensors.torch import load_file
    saved = load_file(str(next((ckpt / "model").glob("*.safetensors")))).values()
    assert all(t.dtype == torch.float32 for t in saved if t.is_floating_point())  # (BatchNorm counters are int64)
    diff = (runs["no"] - runs["bf16"]).abs().max().item()
    assert 0 < diff <= 2 * lr * 1.01


def test_theta_bar_over_both_prompts_in_one_call_equals_two_calls(tmp_path, episodes):
    """The frozen-pi_beta step scores P_t (+ b^{1:D-1}) and P_{t+1} with theta_bar in one batched call, the
    next prompts carrying their own logged tokens: the logits at the end of P_{t+1} must not see them."""
    tr = Trainer(cfg_for(tmp_path, steps=1), episodes)
    ad, d = tr.adapter, tr.data
    idx = tr.batch_indices(0)
    nidx = d.next_index[idx]
    D = ad.num_dims
    instr = [d.instructions[i] for i in idx]
    n_instr = [d.instructions[i] for i in nidx]
    with torch.no_grad():
        for p in tr.target.parameters():  # away from the near-uniform init, so a leak would show
            p.add_(torch.randn_like(p) * 0.02)
        cur = ad.encode(d.images[idx], instr, d.state[idx], d.tokens[idx][:, :-1])
        nxt = ad.encode(d.images[nidx], n_instr, d.state[nidx], None)
        sep_cur = ad.action_logits(tr.target, cur, D, with_dummy=True)
        sep_next = ad.action_logits(tr.target, nxt, 1, with_dummy=True)[:, 0]
        one_cur, one_next = ad.teacher_forced_and_next_logits(
            tr.target, d.images[idx], instr, d.state[idx], d.tokens[idx], d.images[nidx], n_instr, d.state[nidx],
            d.tokens[nidx], with_dummy=True)
    assert sep_next.std() > 1e-3
    assert torch.allclose(one_cur, sep_cur, atol=2e-4)
    assert torch.allclose(one_next, sep_next, atol=2e-4)


def test_acting_honours_the_support_the_targets_used(tmp_path, episodes):
    """A Q-SFT checkpoint acts (argmax_q) within pi_beta's support at the threshold it was trained with:
    every chosen bin has pi_beta > support_eps (or is pi_beta's own argmax), whatever theta prefers."""
    from qsft_robot.algo.policy import load_policy

    ckpt = Trainer(cfg_for(tmp_path, steps=2, **{"algo.support_eps": 0.2}), episodes).train()
    pol = load_policy(ckpt)
    assert pol.support_eps == 0.2 and load_policy(ckpt, support_eps=None).support_eps is None
    with torch.no_grad():  # make theta prefer bins pi_beta finds unlikely: the mask must overrule it
        emb = pol.adapter.model.get_output_embeddings().weight
        ids = pol.adapter.bin_token_ids
        emb[ids] = torch.randn_like(emb[ids]) * 5
    imgs = np.stack([e.images["wrist"][:1] for e in episodes])
    instr = [e.instruction for e in episodes]
    states = np.stack([e.state[0] for e in episodes])
    chosen = pol.act_tokens(imgs, instr, states)
    with torch.no_grad():  # pi_beta at each chosen token's own context (P, b^1..b^{d-1})
        pi = pol.adapter.teacher_forced_logits(pol.behavior_model, imgs, instr, states, chosen, False).softmax(-1)
    p_chosen = pi.gather(-1, torch.as_tensor(chosen)[..., None])[..., 0]
    assert ((p_chosen > 0.2) | (p_chosen >= pi.max(-1).values)).all()
    free = load_policy(ckpt, support_eps=None)
    free.adapter.model = pol.adapter.model
    assert (free.act_tokens(imgs, instr, states) != chosen).any()  # without the mask theta's choice differs


def test_episode_sampling_weights_every_episode_equally():
    """train.sampling=episode: a 30-frame failure and a 5-frame success are drawn equally often."""
    from qsft_robot.data.sampling import batch_indices, sampling_probs
    episode = np.r_[np.zeros(30, int), np.ones(5, int)]
    assert sampling_probs(episode, "frame") is None
    probs = sampling_probs(episode, "episode")
    np.testing.assert_allclose([probs[:30].sum(), probs[30:].sum()], [0.5, 0.5])
    draws = np.concatenate([batch_indices(0, s, len(episode), 64, probs) for s in range(50)])
    assert abs((draws >= 30).mean() - 0.5) < 0.05            # uniform frames would give 5/35 = 0.14
    np.testing.assert_array_equal(batch_indices(3, 7, 35, 8, probs), batch_indices(3, 7, 35, 8, probs))
    # data.decision_stride 4: only steps 0, 4, 8, ... of each episode start a decision; episodes keep equal weight
    strided = sampling_probs(episode, "episode", 4)
    starts = np.r_[np.arange(0, 30, 4), 30 + np.arange(0, 5, 4)]
    np.testing.assert_array_equal(np.flatnonzero(strided), starts)
    np.testing.assert_allclose([strided[:30].sum(), strided[30:].sum()], [0.5, 0.5])
    np.testing.assert_allclose(sampling_probs(episode, "frame", 4)[starts], 1 / len(starts))


def test_sigmoid_critic_trains_and_acts_on_its_own_bin_values(tmp_path, episodes):
    """algo.critic=sigmoid end to end: the checkpoint remembers the critic, and acting reads theta's logits as
    Q = sigmoid(logit) per bin: argmax_q is the bin of the highest logit, tilted_behavior maximises
    log pi_beta + beta * sigmoid(logit) (not theta's softmax, which a sigmoid critic is not)."""
    from qsft_robot.algo.policy import load_policy

    ckpt = Trainer(cfg_for(tmp_path, steps=2, **{"algo.critic": "sigmoid", "algo.next_value": "max"}),
                   episodes).train()
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert len(log) == 3 and "nan" not in log[-1]
    imgs = np.stack([e.images["wrist"][:1] for e in episodes])
    instr = [e.instruction for e in episodes]
    states = np.stack([e.state[0] for e in episodes])
    greedy = load_policy(ckpt, support_eps=None)
    assert greedy.adapter.critic == "sigmoid"
    torch.manual_seed(0)
    with torch.no_grad():   # theta's logits spread wide, so the two modes' choices can part
        emb = greedy.adapter.model.get_output_embeddings().weight
        emb[greedy.adapter.bin_token_ids] = torch.randn_like(emb[greedy.adapter.bin_token_ids]) * 5
    first = torch.as_tensor(greedy.act_tokens(imgs, instr, states))[:, :1]
    with torch.no_grad():
        z = greedy.adapter.teacher_forced_logits(greedy.adapter.model, imgs, instr, states, first.repeat(1, 4),
                                                 with_dummy=True)[:, 0, :16]
        pi = greedy.adapter.teacher_forced_logits(greedy.behavior_model, imgs, instr, states, first.repeat(1, 4),
                                                  with_dummy=False)[:, 0, :16].log_softmax(-1)
    assert torch.equal(first[:, 0], z.argmax(-1))
    from qsft_robot.algo.qvalues import logged_q_values   # what the bench probes read: the same sigmoid, gathered
    q, p = logged_q_values(greedy, imgs, instr, states, first.repeat(1, 4).numpy())
    torch.testing.assert_close(q[:, 0], z.sigmoid().gather(-1, first)[:, 0])
    torch.testing.assert_close(p[:, 0], pi.exp().gather(-1, first)[:, 0])
    tilted = load_policy(ckpt, mode="tilted_behavior", beta=3.0)
    tilted.adapter.model = greedy.adapter.model
    want = (pi + 3.0 * z.sigmoid()).argmax(-1)
    assert torch.equal(torch.as_tensor(tilted.act_tokens(imgs, instr, states))[:, 0], want)
    assert not torch.equal(want, (pi + 3.0 * z.softmax(-1)).argmax(-1))   # the test tells the two readings apart


@pytest.mark.parametrize("target", ["bellman", "n_step"])
def test_the_configured_critic_reaches_the_targets_and_the_loss(tmp_path, episodes, monkeypatch, target):
    """algo.critic is what the batch loss hands to bellman_targets on both bootstrapped paths, and the sigmoid
    critic is fitted by sigmoid_q_loss, not by the Q-SFT cross-entropy."""
    import qsft_robot.algo.losses as losses

    seen = {"critic": [], "sigmoid_loss": 0, "qsft_loss": 0}

    def spy_targets(*args, **kw):
        seen["critic"].append(args[8] if len(args) > 8 else kw.get("critic", "ratio"))
        return real_targets(*args, **kw)

    def count(name, fn):
        def wrapped(*args, **kw):
            seen[name] += 1
            return fn(*args, **kw)
        return wrapped

    real_targets = losses.bellman_targets
    monkeypatch.setattr(losses, "bellman_targets", spy_targets)
    monkeypatch.setattr(losses, "sigmoid_q_loss", count("sigmoid_loss", losses.sigmoid_q_loss))
    monkeypatch.setattr(losses, "qsft_loss", count("qsft_loss", losses.qsft_loss))
    Trainer(cfg_for(tmp_path, steps=2, **{"algo.critic": "sigmoid", "algo.target": target}), episodes).train()
    assert seen["critic"] and set(seen["critic"]) == {"sigmoid"}
    assert seen["sigmoid_loss"] == 2 and seen["qsft_loss"] == 0


def test_action_chunks_train_act_and_run_k_env_steps_per_decision(tmp_path, episodes):
    """algo.chunk=3 end to end: BC and the n-step critic train on 3-step chunks (12 tokens for the arm's 4 dims), the
    checkpoint acts with (N, 3, 4) chunks, and the closed loop runs eval.action_steps of each chunk per decision
    (all 3 by default) while act() hands a re-planning caller (the ROS node) the chunk's first action."""
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.config import ConfigError
    from qsft_robot.sim.evaluate import evaluate

    chunk = {"algo.chunk": 3, "algo.num_bins": 8}
    bc = Trainer(cfg_for(tmp_path / "bc", "sft", steps=2, **chunk), episodes)
    assert bc.data.tokens.shape == (sum(len(e) for e in episodes), 12)
    bc_ckpt = bc.train()
    with pytest.raises(ConfigError, match="algo.chunk"):   # pi_beta must decide as many steps at a time
        Trainer(cfg_for(tmp_path / "q1", steps=2, **{"algo.target": "n_step", "algo.n_step": 3,
                                                      "algo.behavior_init": bc_ckpt, "algo.num_bins": 8}), episodes)
    tr = Trainer(cfg_for(tmp_path / "q", steps=2, **chunk, **{"algo.target": "n_step", "algo.n_step": 3,
                                                              "algo.critic": "sigmoid", "algo.behavior_init": bc_ckpt,
                                                              "data.decision_stride": 3}), episodes)
    assert tr.data.boot_index[0] == 3            # the target bootstraps after the chunk's 3 steps
    step_in_episode = np.concatenate([np.arange(len(e)) for e in episodes])
    assert set(step_in_episode[tr.sample_probs > 0] % 3) == {0}   # decisions start every 3rd step only
    pol = load_policy(tr.train())
    assert (pol.chunk, pol.action_dim) == (3, 4)
    imgs = np.stack([e.images["wrist"][:1] for e in episodes[:2]])
    states = np.stack([e.state[0] for e in episodes[:2]])
    plan = pol.act_chunk(imgs, [e.instruction for e in episodes[:2]], states)
    assert plan.shape == (2, 3, 4)
    np.testing.assert_array_equal(pol.act(imgs, [e.instruction for e in episodes[:2]], states), plan[:, 0])

    rows = []
    act_chunk = pol.act_chunk
    pol.act_chunk = lambda *a: rows.append(len(a[0])) or act_chunk(*a)
    for steps in (0, 1):
        rows.clear()
        s = evaluate(pol, "arm_reach", episodes=2, seed=5, num_envs=2, videos=0, max_steps=7, action_steps=steps)
        per_step = steps or 3
        assert sum(rows) == sum(-(-e["length"] // per_step) for e in s["per_episode"])
        assert all(e["length"] <= 7 for e in s["per_episode"])


@pytest.mark.parametrize("sets, key", [({"algo.chunk": 2}, "algo.chunk"),
                                       ({"algo.chunk": 2, "algo.target": "n_step", "algo.n_step": 3}, "algo.n_step")])
def test_chunk_settings_that_would_misplace_the_bootstrap_are_refused(tmp_path, sets, key):
    from qsft_robot.config import ConfigError

    with pytest.raises(ConfigError, match=key):
        cfg_for(tmp_path, **sets)
