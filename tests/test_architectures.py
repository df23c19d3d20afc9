"""Every supported VLM family (real HF classes from small configs) trains a Q-SFT step and decodes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qsft_robot.config import load_config
from qsft_robot.data.action_tokenizer import ActionTokenizer
from qsft_robot.models.small_vlms import ARCHS, build_small_vlm
from qsft_robot.models.vlm_adapter import VLMAdapter
from qsft_robot.sim.collect import collect_episodes
from qsft_robot.train.trainer import Trainer


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
    with torch.no_grad():  # distinct action-token rows, so greedy decoding is not a tie at bin 0
        emb = model.get_input_embeddings().weight
        emb[torch.as_tensor(tok.vocab_ids)] = torch.randn(len(tok.vocab_ids), emb.shape[1]) * 0.5
        out = model.get_output_embeddings().weight
        out[torch.as_tensor(tok.vocab_ids)] = torch.randn(len(tok.vocab_ids), out.shape[1]) * 2.0
    return VLMAdapter(model, proc, tok)


def _inputs(n=3, cams=1, seed=1):
    rng = np.random.default_rng(seed)
    shape = (n, 64, 64, 3) if cams == 1 else (n, cams, 64, 64, 3)
    return (rng.integers(0, 255, shape, dtype=np.uint8), ["reach the red block", "reach the blue block", "red"][:n],
            rng.normal(size=(n, 4)).round(2))


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cached_decode_equals_uncached_and_teacher_forcing(built, arch):
    ad = _adapter(built[arch])
    images, instr, state = _inputs()
    cached = ad.decode(images, instr, state, use_cache=True)
    plain = ad.decode(images, instr, state, use_cache=False)
    np.testing.assert_array_equal(cached, plain)
    assert len(np.unique(cached)) > 1, "degenerate decode: the test would not see a wrong cache"
    # the greedy tokens are the argmax of the teacher-forced logits at every dimension
    tf = ad.teacher_forced_logits(ad.model, images, instr, state, cached, with_dummy=True)
    np.testing.assert_array_equal(tf[..., :-1].argmax(-1).numpy(), cached)


@pytest.mark.parametrize("arch", ARCHS)
def test_two_cameras_and_left_padding_do_not_change_a_row(built, arch):
    """A sample's logits must not depend on what else is in the batch (padding, positions)."""
    ad = _adapter(built[arch])
    images, instr, state = _inputs(cams=2)
    toks = np.zeros((3, 3), dtype=int)
    together = ad.teacher_forced_logits(ad.model, images, instr, state, toks, with_dummy=True)
    alone = ad.teacher_forced_logits(ad.model, images[2:], instr[2:], state[2:], toks[2:], with_dummy=True)
    torch.testing.assert_close(together[2:], alone, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_qsft_step_save_load_identical_logits(tmp_path, built, episodes, arch):
    cfg = load_config(None, ["model.preset=pretrained", f"model.path={built[arch]}", f"train.out_dir={tmp_path}",
                             "train.steps=2", "train.batch_size=4", "algo.num_bins=8", "train.save_every=2",
                             "train.warmup_steps=1", "train.tensorboard=false"])
    tr = Trainer(cfg, episodes)
    before = torch.cat([p.detach().flatten() for p in tr.model.parameters()]).clone()
    ckpt = tr.train()
    after = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    from qsft_robot.algo.policy import load_policy
    pol = load_policy(ckpt)
    images = np.stack([e.images["wrist"][0] for e in episodes])
    instr = [e.instruction for e in episodes]
    state = np.stack([e.state[0] for e in episodes])
    toks = tr.data.tokens[:len(episodes)]
    a = tr.adapter.teacher_forced_logits(tr.model.eval(), images, instr, state, toks, with_dummy=True)
    b = pol.adapter.teacher_forced_logits(pol.adapter.model, images, instr, state, toks, with_dummy=True)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert pol.act(images[:, None], instr, state).shape == (len(episodes), 4)


@pytest.mark.parametrize("algo", ["qsft", "sft"])
def test_lora_trains_adapters_only_and_reloads(tmp_path, built, episodes, algo):
    """theta / pi_beta / theta_bar as LoRA adapters over one frozen base (one copy of the base)."""
    cfg = load_config(None, ["model.preset=pretrained", f"model.path={built['llava']}", "model.lora_rank=4",
                             f"algo.name={algo}", f"train.out_dir={tmp_path}", "train.steps=3",
                             "train.batch_size=4", "algo.num_bins=8", "train.save_every=2", "train.warmup_steps=1",
                             "train.tensorboard=false", "train.lr=0.01"])
    tr = Trainer(cfg, episodes)
    peft_model = tr.model.peft_model
    base = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" not in n}
    theta0 = [p.detach().clone() for p in tr.model.parameters()]
    if algo == "qsft":  # three adapters share one base: the behaviour view holds no base weights
        ids = {id(p) for p in tr.behavior.parameters()}
        assert not ids & {id(p) for p in tr.model.parameters()} and not ids & {id(p) for p in tr.target.parameters()}
    ckpt = tr.train()
    for n, p in peft_model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), f"base weight {n} changed"
    assert any(not torch.equal(a, b) for a, b in zip(theta0, tr.model.parameters())), "adapter did not train"
    if algo == "qsft":  # theta_bar moved towards theta by Polyak, but is not theta
        assert any(not torch.equal(a, b) for a, b in zip(tr.target.parameters(), theta0))
        assert any(not torch.equal(a, b) for a, b in zip(tr.target.parameters(), tr.model.parameters()))
    assert (ckpt / "model" / "adapter_model.safetensors").is_file() and (tmp_path / "lora_base").is_dir()
    assert not list((ckpt / "model").glob("model*.safetensors")), "a LoRA checkpoint must not copy the base"
    from qsft_robot.algo.policy import load_policy
    pol = load_policy(ckpt)
    images = np.stack([e.images["wrist"][0] for e in episodes])
    instr = [e.instruction for e in episodes]
    state = np.stack([e.state[0] for e in episodes])
    toks = tr.data.tokens[:len(episodes)]
    a = tr.adapter.teacher_forced_logits(tr.model.eval(), images, instr, state, toks, with_dummy=algo == "qsft")
    b = pol.adapter.teacher_forced_logits(pol.adapter.model, images, instr, state, toks, with_dummy=algo == "qsft")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if algo == "qsft":
        np.testing.assert_array_equal(pol.act_tokens(images[:, None], instr, state),
                                      pol.adapter.decode(images[:, None], instr, state, use_cache=False))
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
