"""Small-config builds of every supported VLM family: real HF classes, random weights, no download.

They exist so the adapter, the training loop and the decoders are exercised on each architecture's
own modelling code and input layout (tests, `bench/decode.py`); for real work the same code loads
the full-size weights with `from_pretrained(local_dir)`. Each is saved as an ordinary HF folder
(model + processor or tokenizer/image processor), exactly what a downloaded checkpoint looks like.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from qsft_robot.models.tiny_vlm import build_tiny_vlm, build_tokenizer

ARCHS = ("llava", "paligemma", "idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl")


def _tokenizer(extra_words, specials):
    tok = build_tokenizer(extra_words)
    tok.add_special_tokens({"additional_special_tokens": ["<image>", *specials]})
    return tok


def _text(vocab_size: int, hidden: int, layers: int, **kw) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, **kw)


def _vision(image_size: int, patch: int, hidden: int, layers: int) -> dict:
    return dict(image_size=image_size, patch_size=patch, hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4)


def _paligemma(image_size: int, hidden: int, layers: int, extra_words) -> tuple:
    import transformers as tf

    ip = tf.SiglipImageProcessor(size={"height": image_size, "width": image_size})
    ip.image_seq_length = (image_size // 16) ** 2
    proc = tf.PaliGemmaProcessor(image_processor=ip, tokenizer=_tokenizer(extra_words, []))
    tok = proc.tokenizer
    config = tf.PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", **_vision(image_size, 16, hidden, layers)),
        text_config=dict(model_type="gemma", head_dim=hidden // 4, pad_token_id=tok.pad_token_id,
                         **_text(len(tok), hidden, layers)),
        image_token_index=proc.image_token_id, projection_dim=hidden)
    return tf.PaliGemmaForConditionalGeneration(config), proc


def _idefics3(image_size: int, hidden: int, layers: int, extra_words) -> tuple:
    import transformers as tf

    ip = tf.Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": image_size},
                                   max_image_size={"longest_edge": image_size})
    scale = 2
    seq = (image_size // 16) ** 2 // scale ** 2
    proc = tf.Idefics3Processor(image_processor=ip, image_seq_len=seq, tokenizer=_tokenizer(
        extra_words, ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]))
    tok = proc.tokenizer
    config = tf.Idefics3Config(vision_config=_vision(image_size, 16, hidden, layers),
                               text_config=dict(model_type="llama", pad_token_id=tok.pad_token_id,
                                                **_text(len(tok), hidden, layers)),
                               image_token_id=proc.image_token_id, scale_factor=scale)
    return tf.Idefics3ForConditionalGeneration(config), proc


def _smolvlm(image_size: int, hidden: int, layers: int, extra_words) -> tuple:
    """SmolVLM2: Idefics3's connector, its own processor rules; tiles as the real one."""
    import transformers as tf

    from qsft_robot.models.families import ImageTextProcessor
    # longest_edge 2x the tile: a frame is resized to 2*image_size and split into 2x2 tiles + the global
    # image, the layout (<row_i_col_j> tokens) that the real SmolVLM2 checkpoints use by default
    ip = tf.SmolVLMImageProcessor(do_image_splitting=True, size={"longest_edge": 2 * image_size},
                                  max_image_size={"longest_edge": image_size})
    tiles = [f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2)]
    tok = _tokenizer(extra_words, ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *tiles])
    config = tf.SmolVLMConfig(vision_config=_vision(image_size, 16, hidden, layers),
                              text_config=dict(model_type="llama", pad_token_id=tok.pad_token_id,
                                               **_text(len(tok), hidden, layers)),
                              image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2)
    return tf.SmolVLMForConditionalGeneration(config), ImageTextProcessor(ip, tok)


def _qwen(arch: str, image_size: int, hidden: int, layers: int, extra_words) -> tuple:
    """qwen2_vl / qwen2_5_vl: 8-px patches merged 2x2 -> 16 image tokens at 64 px."""
    import transformers as tf

    from qsft_robot.models.families import ImageTextProcessor
    ip = tf.Qwen2VLImageProcessor(patch_size=8, merge_size=2, temporal_patch_size=2,
                                  min_pixels=image_size * image_size, max_pixels=image_size * image_size)
    tok = _tokenizer(extra_words, ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    half = hidden // 4 // 2  # M-RoPE sections (temporal, height, width) split head_dim / 2
    sections = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    vision = dict(depth=layers, hidden_size=hidden, num_heads=4, patch_size=8, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
    if arch == "qwen2_vl":
        vision["embed_dim"] = hidden
    else:  # Qwen2.5-VL: windowed attention (2x2 merged patches) except in the last block, SwiGLU MLP
        vision.update(out_hidden_size=hidden, intermediate_size=2 * hidden, window_size=32,
                      fullatt_block_indexes=[layers - 1])
    cls, config_cls = ((tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLConfig) if arch == "qwen2_vl"
                       else (tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLConfig))
    config = config_cls(
        vision_config=vision,
        text_config=_text(len(tok), hidden, layers, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, rope_scaling={"type": "mrope", "mrope_section": sections}),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"))
    return cls(config), ImageTextProcessor(ip, tok)


def build_small_vlm(arch: str, out_dir: str | Path, extra_words=(), image_size: int = 64, hidden: int = 128,
                    layers: int = 2, seed: int = 0) -> Path:
    """Build `arch` from a small config and save model + processor to out_dir (returned)."""
    import torch

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHS}")
    out_dir = Path(out_dir)
    if arch == "llava":
        return build_tiny_vlm(out_dir, extra_words, image_size=image_size, text_hidden=hidden,
                              text_layers=layers, seed=seed)
    torch.manual_seed(seed)
    builders = {"paligemma": _paligemma, "idefics3": _idefics3, "smolvlm": _smolvlm,
                "qwen2_vl": partial(_qwen, "qwen2_vl"), "qwen2_5_vl": partial(_qwen, "qwen2_5_vl")}
    model, proc = builders[arch](image_size, hidden, layers, extra_words)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir
