"""Every supported VLM family (real HF classes from small configs) trains a Q-SFT step and decodes."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from qsft_robot.config import load_config
from qsft_robot.data.action_tokenizer import ActionTokenizer
from qsft_robot.models.llama_step import LlamaStep
from qsft_robot.models.small_vlms import ARCHS, build_small_vlm
from qsft_robot.models.vlm_adapter import VLMAdapter
from qsft_robot.sim.collect import collect_episodes
from qsft_robot.train.trainer import Trainer

from model_checks import (check_lora_run, lora_base_weights, no_transformers_deprecations,  # noqa: E402
                          reload_gives_the_same_logits)


@pytest.fixture(scope="module")
def episodes():
    return collect_episodes("arm_reach", 4, "mixed", seed=3, image_size=64)


@pytest.fixture(scope="module")
def built(tmp_path_factory, episodes):
    root = tmp_path_factory.mktemp("archs")
    words = sorted({w for e in episodes for w in e.instruction.split()})
    return {a: build_small_vlm(a, root / a, words, hidden=64) for a in ARCHS}


def _adapter(path, two_cams=False):
    rng = np.random.default_rng(0)
    model, proc = VLMAdapter.from_pretrained(path)
    tok = ActionTokenizer.fit(rng.uniform(-1, 1, (500, 3)), 12)
    VLMAdapter.add_action_vocab(model, proc, tok)
    torch.manual_seed(0)  # the rows below must not depend on which models were built before
    with torch.no_grad():  # distinct action-token rows, so greedy decoding is not a tie at bin 0
        emb = model.get_input_embeddings().weight
        if model.get_output_embeddings().weight is emb:  # tied (PaliGemma): untie, in memory only, so the
            # large output rows are not also the inputs that would then decide every later dimension
            model.get_output_embeddings().weight = torch.nn.Parameter(emb.detach().clone())
        emb[torch.as_tensor(tok.vocab_ids)] = torch.randn(len(tok.vocab_ids), emb.shape[1]) * 0.5
        out = model.get_output_embeddings().weight
        out[torch.as_tensor(tok.vocab_ids)] = torch.randn(len(tok.vocab_ids), out.shape[1]) * 2.0
    return VLMAdapter(model, proc, tok)


def _inputs(n=3, cams=1, seed=1):
    rng = np.random.default_rng(seed)
    shape = (n, 64, 64, 3) if cams == 1 else (n, cams, 64, 64, 3)
    return (rng.integers(0, 255, shape, dtype=np.uint8), ["reach the red block", "reach the blue block", "red"][:n],
            rng.normal(size=(n, 4)).round(2))


def _step_logits_agree(ad, images, instr, state, cache_implementation="dynamic"):
    """The cached scorer's logits at every dimension equal the uncached scorer's (not just the argmax), with
    the single-token steps as plain operations (models/llama_step.py, where the decoder is a plain Llama)
    and through the decoder module."""
    from qsft_robot.models.vlm_adapter import _CachedScorer, _UncachedScorer
    batch = ad.encode(images, instr, state)
    ids = ad.logit_ids
    fast = _CachedScorer(ad.model, ids, batch, ad.num_dims, cache_implementation)
    module = _CachedScorer(ad.model, ids, batch, ad.num_dims, cache_implementation, fast_step=False)
    plain = _UncachedScorer(ad.model, ids, batch)
    prev = None
    for _ in range(ad.num_dims):
        a, b, c = fast.logits(prev), module.logits(prev), plain.logits(prev)
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b, c, atol=1e-4, rtol=1e-4)
        prev = ad.bin_token_ids[a[:, :-1].argmax(-1)]
    return fast


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cached_decode_equals_uncached_and_teacher_forcing(built, arch, monkeypatch):
    """Cached decode (DynamicCache, and StaticCache) = uncached = the teacher-forced argmax, with no
    transformers deprecation on the way (padding included: the three prompts differ in length)."""
    ad = _adapter(built[arch])
    images, instr, state = _inputs()
    with no_transformers_deprecations(), torch.no_grad():
        cached = ad.decode(images, instr, state, use_cache=True)
        plain = ad.decode(images, instr, state, use_cache=False)
        padded = _step_logits_agree(ad, images, instr, state)
        prefills = []
        plain_prefill = LlamaStep.prefill
        monkeypatch.setattr(LlamaStep, "prefill", lambda self, *a: prefills.append(1) or plain_prefill(self, *a))
        single = _step_logits_agree(ad, images[:1], instr[:1], state[:1])   # no padding: no mask at all
        monkeypatch.undo()
        # the Llama-decoder families take the plain-operation prefill and steps wherever no mask is needed (a
        # silent fall-back to the module would pass the equality above and lose the speed)
        llama = arch in ("llava", "idefics3", "smolvlm")
        assert isinstance(single.fast, LlamaStep) == llama and len(prefills) == int(llama), (arch, prefills)
        assert not isinstance(padded.fast, LlamaStep)
        ad.cache_implementation = "static"
        static = ad.decode(images, instr, state, use_cache=True)
        _step_logits_agree(ad, images, instr, state, "static")
    np.testing.assert_array_equal(cached, plain)
    np.testing.assert_array_equal(static, plain)
    assert len(np.unique(cached)) > 1, "degenerate decode: the test would not see a wrong cache"
    # the greedy tokens are the argmax of the teacher-forced logits at every dimension
    tf = ad.teacher_forced_logits(ad.model, images, instr, state, cached, with_dummy=True)
    np.testing.assert_array_equal(tf[..., :-1].argmax(-1).numpy(), cached)


@pytest.mark.parametrize("arch", ARCHS)
def test_action_logits_are_the_full_forward_s_last_positions(built, arch):
    """The training logits (the head on gathered last positions: vlm_adapter.last_positions) equal the model's
    own full-sequence logits at those positions, padding included."""
    ad = _adapter(built[arch])
    images, instr, state = _inputs()
    batch = ad.encode(images, instr, state, np.array([[1, 2], [3, 4], [5, 6]]))
    with torch.no_grad():
        full = ad.model(**batch.model_inputs(), use_cache=False).logits[:, -3:, ad.logit_ids].float()
        kept = ad.action_logits(ad.model, batch, 3, with_dummy=True)
    torch.testing.assert_close(kept, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_two_model_modes_cached_equal_uncached(built, arch):
    """tilted_behavior and support-restricted argmax_q run theta and pi_beta, each with its own cache;
    argmax_behavior runs pi_beta alone. Cached = uncached in each, without deprecations."""
    ad = _adapter(built[arch])
    behavior = copy.deepcopy(ad.model)
    with torch.no_grad():
        for p in behavior.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    images, instr, state = _inputs()
    with no_transformers_deprecations():
        for mode, eps in (("tilted_behavior", None), ("argmax_q", 0.05), ("argmax_behavior", None)):
            kw = dict(mode=mode, behavior_model=behavior, support_eps=eps)
            np.testing.assert_array_equal(ad.decode(images, instr, state, use_cache=True, **kw),
                                          ad.decode(images, instr, state, use_cache=False, **kw))


@pytest.mark.parametrize("arch", ARCHS)
def test_two_cameras_and_left_padding_do_not_change_a_row(built, arch):
    """A sample's logits must not depend on what else is in the batch (padding, positions)."""
    ad = _adapter(built[arch])
    images, instr, state = _inputs(cams=2)
    toks = np.zeros((3, 3), dtype=int)
    together = ad.teacher_forced_logits(ad.model, images, instr, state, toks, with_dummy=True)
    alone = ad.teacher_forced_logits(ad.model, images[2:], instr[2:], state[2:], toks[2:], with_dummy=True)
    torch.testing.assert_close(together[2:], alone, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("algo", ["qsft", "sft"])
@pytest.mark.parametrize("arch", ARCHS)
def test_train_steps_save_load_identical_logits(tmp_path, built, episodes, arch, algo):
    """Q-SFT and SFT train (weights move, stay finite) on each family; the checkpoint reloads through
    `from_pretrained` to the same logits and acts with the cached decoder."""
    cfg = load_config(None, ["model.preset=pretrained", f"model.path={built[arch]}", f"train.out_dir={tmp_path}",
                             f"algo.name={algo}", "train.steps=2", "train.batch_size=4", "algo.num_bins=8",
                             "train.save_every=2", "train.warmup_steps=1", "train.tensorboard=false"])
    tr = Trainer(cfg, episodes)
    before = torch.cat([p.detach().flatten() for p in tr.model.parameters()]).clone()
    ckpt = tr.train()
    after = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    pol, images, instr, state = reload_gives_the_same_logits(tr, ckpt, episodes, algo)
    with no_transformers_deprecations():
        assert pol.act(images[:, None], instr, state).shape == (len(episodes), 4)


@pytest.mark.parametrize("algo", ["qsft", "sft"])
@pytest.mark.parametrize("arch", ARCHS)
def test_lora_trains_adapters_only_and_reloads(tmp_path, built, episodes, arch, algo):
    """theta / pi_beta / theta_bar as LoRA adapters over one frozen base (one copy of the base)."""
    cfg = load_config(None, ["model.preset=pretrained", f"model.path={built[arch]}", "model.lora_rank=4",
                             f"algo.name={algo}", f"train.out_dir={tmp_path}", "train.steps=3",
                             "train.batch_size=4", "algo.num_bins=8", "train.save_every=2", "train.warmup_steps=1",
                             "train.tensorboard=false", "train.lr=0.01"])
    tr = Trainer(cfg, episodes)
    peft_model = tr.model.peft_model
    base = lora_base_weights(peft_model)
    projector = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "modules_to_save.theta." in n}
    theta0 = [p.detach().clone() for p in tr.model.parameters()]
    if algo == "qsft":  # three adapters share one base: the behaviour view holds no base weights
        ids = {id(p) for p in tr.behavior.parameters()}
        assert not ids & {id(p) for p in tr.model.parameters()} and not ids & {id(p) for p in tr.target.parameters()}
    ckpt = tr.train()
    check_lora_run(tr, ckpt, episodes, algo, base)
    assert (tmp_path / "lora_base").is_dir()
    # the projector (LLaVA, PaliGemma: multi_modal_projector; Idefics3, SmolVLM2: connector) trains whole, in
    # theta's own copy; Qwen's merger sits inside its vision tower and stays frozen with it
    assert bool(projector) == (arch not in ("qwen2_vl", "qwen2_5_vl"))
    params = dict(peft_model.named_parameters())
    assert all(p.requires_grad for n, p in params.items() if n in projector)
    assert not projector or any(not torch.equal(params[n], v) for n, v in projector.items()), "projector did not train"
    assert any(not torch.equal(a, b) for a, b in zip(theta0, tr.model.parameters())), "adapter did not train"
    if algo == "qsft":  # theta_bar moved towards theta by Polyak, but is not theta
        assert any(not torch.equal(a, b) for a, b in zip(tr.target.parameters(), theta0))
        assert any(not torch.equal(a, b) for a, b in zip(tr.target.parameters(), tr.model.parameters()))
    # resume restores the adapters exactly
    tr2 = Trainer(cfg, episodes)
    assert tr2.step == 3
    for a_, b_ in zip(tr2.model.parameters(), tr.model.parameters()):
        torch.testing.assert_close(a_, b_)


def test_unsupported_architecture_is_named():
    from types import SimpleNamespace

    from qsft_robot.models.families import family_of
    with pytest.raises(ValueError, match="unsupported VLM architecture 'blip_2'.*paligemma"):
        family_of(SimpleNamespace(config=SimpleNamespace(model_type="blip_2")))


@pytest.mark.parametrize("arch", ARCHS)
def test_freeze_vision_trains_projector_and_language_model_only(tmp_path, built, episodes, arch):
    """model.freeze_vision (LLaVA-1.5's recipe) on every family: the image encoder found for it is a
    proper part of the model, stays bit-identical through Q-SFT steps, and everything else trains."""
    from qsft_robot.models.families import vision_encoder

    cfg = load_config(None, ["model.preset=pretrained", f"model.path={built[arch]}", f"train.out_dir={tmp_path}",
                             "train.steps=2", "train.batch_size=4", "algo.num_bins=8", "train.save_every=2",
                             "train.warmup_steps=1", "train.tensorboard=false", "model.freeze_vision=true"])
    tr = Trainer(cfg, episodes)
    enc = vision_encoder(tr.model)
    enc_ids = {id(p) for p in enc.parameters()}
    assert 0 < len(enc_ids) < len(list(tr.model.parameters()))
    frozen = {n: p.detach().clone() for n, p in tr.model.named_parameters() if id(p) in enc_ids}
    rest = {n: p.detach().clone() for n, p in tr.model.named_parameters() if id(p) not in enc_ids}
    tr.train()
    named = dict(tr.model.named_parameters())
    assert all(torch.equal(named[n], p) for n, p in frozen.items()), "the frozen encoder changed"
    assert sum(not torch.equal(named[n], p) for n, p in rest.items()) > len(rest) // 2
    assert not any(p.requires_grad for p in vision_encoder(tr.behavior).parameters())  # pi_beta is frozen too


@pytest.mark.parametrize("preset,arch", [("configs/model_smolvlm2_local.yaml", "smolvlm"),
                                         ("configs/model_qwen2_5_vl_local.yaml", "qwen2_5_vl")])
def test_backbone_presets_train_and_act(tmp_path, built, episodes, preset, arch):
    """Each backbone preset, as shipped (bf16, added action tokens, LoRA for Qwen2.5-VL),
    with model.path pointed at its family's small config instead of the real download: one Q-SFT step,
    then the checkpoint acts through the cached decoder without deprecations."""
    from pathlib import Path

    from qsft_robot.algo.policy import load_policy
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / preset, [f"model.path={built[arch]}", f"train.out_dir={tmp_path}", "train.steps=1",
                                      "train.batch_size=4", "algo.num_bins=8", "train.save_every=1",
                                      "train.warmup_steps=1", "train.tensorboard=false"])
    assert cfg.model.preset == "pretrained" and cfg.model.dtype == "bfloat16"
    ckpt = Trainer(cfg, episodes).train()
    pol = load_policy(ckpt)
    assert pol.adapter.family == arch
    images = np.stack([e.images["wrist"][0] for e in episodes])
    with no_transformers_deprecations():
        actions = pol.act(images[:, None], [e.instruction for e in episodes], np.stack([e.state[0] for e in episodes]))
    assert actions.shape == (len(episodes), 4) and np.isfinite(actions).all()


@pytest.mark.parametrize("arch", ["llava", "smolvlm", "qwen2_vl"])
def test_frozen_encoder_is_shared_and_runs_once(built, arch):
    """theta and pi_beta with bit-identical (frozen) image encoders get one encoder module, and acting
    within pi_beta's support then encodes each frame once; a differing encoder is never shared."""
    from qsft_robot.models.families import share_vision_encoder, vision_encoder

    ad = _adapter(built[arch])
    behavior = copy.deepcopy(ad.model)
    enc_ids = {id(p) for p in vision_encoder(behavior).parameters()}
    with torch.no_grad():
        for p in behavior.parameters():
            if id(p) not in enc_ids:
                p.add_(torch.randn_like(p) * 0.05)
    other = copy.deepcopy(behavior)
    with torch.no_grad():
        next(vision_encoder(other).parameters()).add_(1e-3)
    assert not share_vision_encoder(ad.model, other)
    assert not share_vision_encoder(ad.model, copy.deepcopy(behavior).to(torch.bfloat16))  # same values, not dtype
    assert vision_encoder(other) is not vision_encoder(ad.model)
    assert share_vision_encoder(ad.model, behavior) and vision_encoder(behavior) is vision_encoder(ad.model)
    runs = []
    inner = next(m for m in vision_encoder(ad.model).modules() if not list(m.children()))  # a leaf: real compute
    handle = inner.register_forward_hook(lambda *a: runs.append(1))
    images, instr, state = _inputs()
    kw = dict(mode="argmax_q", behavior_model=behavior, support_eps=0.05)
    with no_transformers_deprecations():
        cached = ad.decode(images, instr, state, use_cache=True, **kw)
        once = len(runs)
        plain = ad.decode(images, instr, state, use_cache=False, **kw)
    handle.remove()
    np.testing.assert_array_equal(cached, plain)
    per_encoding = (len(runs) - once) // (2 * ad.num_dims)   # uncached: every model and dimension encodes
    if arch != "smolvlm":   # the model hands the batch's pixel tensor to the encoder as is: reused
        assert once == per_encoding
    else:                 # SmolVLM2 reshapes/casts it first: a new tensor, recomputed (never a stale result)
        assert once == 2 * per_encoding


def test_qsft_on_a_lora_bc_run_starts_every_adapter_from_it(tmp_path, built, episodes):
    """The benchmark's flow with a LoRA backbone: BC trains an adapter (the checkpoint holds adapters only), then
    Q-SFT with algo.behavior_init = that run: theta, pi_beta and theta_bar all start as the BC model (its base,
    its adapter), as the whole-model copies do; a run of another LoRA rank is refused with the reason."""
    from qsft_robot.config import ConfigError

    common = ["model.preset=pretrained", f"model.path={built['llava']}", "model.lora_rank=4", "train.batch_size=4",
              "algo.num_bins=8", "train.warmup_steps=1", "train.tensorboard=false", "train.lr=0.01"]
    bc = Trainer(load_config(None, [*common, "algo.name=sft", f"train.out_dir={tmp_path / 'bc'}", "train.steps=3",
                                    "train.save_every=3"]), episodes)
    bc_ckpt = bc.train()
    q = Trainer(load_config(None, [*common, "algo.name=qsft", f"train.out_dir={tmp_path / 'q'}", "train.steps=1",
                                   f"algo.behavior_init={bc_ckpt}"]), episodes)
    ad = q.adapter
    images = np.stack([e.images[next(iter(e.images))][0] for e in episodes])
    instr, state = [e.instruction for e in episodes], np.stack([e.state[0] for e in episodes])
    toks = np.zeros((len(episodes), ad.num_dims), dtype=int)
    with torch.no_grad():
        want = ad.teacher_forced_logits(bc.model, images, instr, state, toks, with_dummy=True)
        for net in (q.model, q.behavior, q.target):
            torch.testing.assert_close(ad.teacher_forced_logits(net, images, instr, state, toks, with_dummy=True),
                                       want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="rank-4 adapter"):
        Trainer(load_config(None, [*common[:2], "model.lora_rank=8", *common[3:], "algo.name=qsft",
                                   f"train.out_dir={tmp_path / 'q8'}", f"algo.behavior_init={bc_ckpt}"]), episodes)
