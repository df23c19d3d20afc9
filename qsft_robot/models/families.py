"""Per-architecture input layout: where the image tokens go and which extra tensors each model takes.

This is the only architecture-specific code. LLaVA (the default) is assembled here by hand and its
images are normalised in torch, batched: the training loop lives on that path and the processor's
per-image PIL route costs ~100x more. Every other family goes through its *own* HF processor (or,
for Qwen2-VL, its own image processor), so the image-token layout is the model's, not ours:
PaliGemma's image prefix + bos with bidirectional prefix attention (token_type_ids), Idefics3
(SmolVLM v1)'s <fake_token_around_image><global-img> frame and pixel masks, Qwen2-VL's variable patch grid
and 3-D (M-RoPE) positions.

A `Batch` knows how to grow by one token per row, which is all that teacher forcing and KV-cached
decoding need from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FAMILIES = ("llava", "paligemma", "idefics3", "qwen2_vl")  # SmolVLM v1 checkpoints are idefics3
MROPE = ("qwen2_vl",)
# per-token extras and the value an appended (action) token gets
_PER_TOKEN = {"token_type_ids": 1, "mm_token_type_ids": 0}


@dataclass
class Batch:
    """Tokenised prompts (left-padded), positions and the model's image tensors, on its device."""
    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor              # (N, L), or (3, N, L) for M-RoPE models
    pixel_values: Tensor | None
    extra: dict = field(default_factory=dict)  # token_type_ids, pixel_attention_mask, image_grid_thw, ...

    def model_inputs(self, with_images: bool = True) -> dict:
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}
        if with_images:
            out.update(pixel_values=self.pixel_values, **self.extra)
        return out

    def appended(self, tokens: Tensor) -> "Batch":
        """The batch with k more (text/action) tokens per row, tokens (N,) or (N, k): positions continue."""
        tok = tokens.reshape(self.input_ids.shape[0], -1).to(self.input_ids.device)
        pos = self.position_ids
        extra = dict(self.extra)
        for k, v in _PER_TOKEN.items():
            if k in extra:
                extra[k] = torch.cat([extra[k], torch.full_like(tok, v)], dim=1)
        more = pos[..., -1:] + torch.arange(1, tok.shape[1] + 1, device=pos.device)
        return Batch(torch.cat([self.input_ids, tok], 1), torch.cat([self.attention_mask, torch.ones_like(tok)], 1),
                     torch.cat([pos, more], -1), self.pixel_values, extra)


def family_of(model) -> str:
    fam = model.config.model_type
    if fam not in FAMILIES:
        raise ValueError(f"unsupported VLM architecture {fam!r}; supported: {', '.join(FAMILIES)}")
    return fam


def vision_encoder(model) -> torch.nn.Module:
    """The image encoder of any supported family (LLaVA/PaliGemma: vision_tower, Idefics3: vision_model,
    Qwen2-VL: visual), looked up on the inner model first (transformers >= 4.52 nests it there)."""
    for owner in (getattr(model, "model", None), model):
        for name in ("vision_tower", "vision_model", "visual"):
            enc = getattr(owner, name, None) if owner is not None else None
            if isinstance(enc, torch.nn.Module):
                return enc
    raise ValueError(f"no vision encoder found on {type(model).__name__}")


def freeze_vision_encoder(model) -> int:
    """requires_grad=False on the image encoder (LLaVA-1.5's recipe: the projector and the language
    model train, the encoder does not). Returns the number of parameters frozen.

    Why it is offered for the compact model trained from scratch too: with the encoder trainable, the
    first few hundred steps of Adam teach it to *remove* the image's variation (the language model
    cannot use it yet, so to the loss it is noise). Measured on arm_reach_red expert data after 400 BC
    steps: the spread of the encoder's patch features across images fell from 0.30 (at init) to 0.05
    while their norm grew 4x, and swapping a batch's images changed no action. Frozen, the spread
    stays 0.30 and 5% of actions change with the image; that alone did not make the policy use it
    (README, Results: the arm probe table).
    """
    enc = vision_encoder(model)
    enc.requires_grad_(False)
    return sum(p.numel() for p in enc.parameters())


def text_positions(attention_mask: Tensor) -> Tensor:
    """1-D position ids under left padding: count real tokens only."""
    return (attention_mask.cumsum(-1) - 1).clamp_min(0)


def image_placeholder(family: str, processor, n_cams: int, image_seq_length: int) -> str:
    """The text the processor expands into image tokens, once per camera."""
    if family == "llava":
        return "<image>" * image_seq_length * n_cams
    if family in MROPE:
        return "<|vision_start|><|image_pad|><|vision_end|>" * n_cams
    return processor.image_token * n_cams


def _llava(adapter, images: Tensor, texts: list[str]) -> Batch:
    enc = [adapter.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    bos = adapter.tokenizer.bos_token_id
    enc = [([bos] if bos is not None else []) + e for e in enc]
    length = max(len(e) for e in enc)
    ids = torch.full((len(enc), length), adapter.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(enc), length), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, length - len(e):] = torch.tensor(e)
        mask[i, length - len(e):] = 1
    ids, mask = ids.to(adapter.device), mask.to(adapter.device)
    return Batch(ids, mask, text_positions(mask), normalise_images(adapter, images))


def normalise_images(adapter, images: Tensor) -> Tensor:
    """(N, cams, H, W, 3) uint8 -> (N * cams, 3, h, w) with the image processor's size, mean and std.

    The one place pixels are normalised for the LLaVA family: training, sim evaluation and the ROS node
    all reach it through `VLMAdapter.encode`, so the three cannot disagree. A floating-point input is
    not pixels but the frozen tower's cached feature maps (N, cams, C, h, w) (data/feature_cache.py),
    which the tower takes as they are.
    """
    if images.is_floating_point():
        return images.reshape(-1, *images.shape[2:]).to(adapter.model.dtype)
    ip = adapter.processor.image_processor
    size = ip.crop_size["height"] if getattr(ip, "crop_size", None) else ip.size["height"]
    n, cams = images.shape[:2]
    x = images.reshape(n * cams, *images.shape[2:]).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(ip.image_mean, device=x.device)[None, :, None, None]
    std = torch.tensor(ip.image_std, device=x.device)[None, :, None, None]
    return ((x - mean) / std).to(adapter.model.dtype)


def _with_processor(adapter, images: np.ndarray, texts: list[str]) -> Batch:
    fam, proc = adapter.family, adapter.processor
    per_sample = [list(s) for s in images]                    # cams images per sample
    if fam in MROPE:  # tokenizer + image processor (Qwen2VLProcessor insists on a torchvision video processor)
        vis = proc.image_processor(images=[im for s in per_sample for im in s], return_tensors="pt")
        merge = proc.image_processor.merge_size ** 2
        counts = iter((vis["image_grid_thw"].prod(-1) // merge).tolist())
        expanded = []
        for t in texts:
            while "<|image_pad|>" in t:
                t = t.replace("<|image_pad|>", "<|placeholder|>" * next(counts), 1)
            expanded.append(t.replace("<|placeholder|>", "<|image_pad|>"))
        enc = adapter.tokenizer(expanded, return_tensors="pt", padding=True, add_special_tokens=False)
        image_id = adapter.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        out = {**enc, **vis, "mm_token_type_ids": (enc["input_ids"] == image_id).long()}
    else:
        out = dict(proc(text=texts, images=per_sample if fam != "paligemma" else [s[0] for s in per_sample]
                        if images.shape[1] == 1 else per_sample, return_tensors="pt", padding=True))
    out.pop("labels", None)
    dev = adapter.device
    out = {k: (v.to(dev, dtype=adapter.model.dtype) if k == "pixel_values" else v.to(dev)) for k, v in out.items()}
    ids, mask = out.pop("input_ids"), out.pop("attention_mask")
    pixel_values = out.pop("pixel_values")
    if fam in MROPE:
        pos, _ = adapter.model.model.get_rope_index(ids, image_grid_thw=out["image_grid_thw"], attention_mask=mask,
                                                    mm_token_type_ids=out["mm_token_type_ids"])
    else:
        pos = text_positions(mask)
    return Batch(ids, mask, pos, pixel_values, out)


def encode_prompts(adapter, images: np.ndarray, texts: list[str]) -> Batch:
    """images (N, cams, H, W, 3) uint8; texts already carry the image placeholder."""
    if adapter.family == "llava":
        return _llava(adapter, torch.as_tensor(np.ascontiguousarray(images), device=adapter.device), texts)
    if adapter.tokenizer.padding_side != "left":
        adapter.tokenizer.padding_side = "left"
    return _with_processor(adapter, images, texts)


class ImageTextProcessor:
    """Tokenizer + image processor saved and loaded as one HF folder, for families whose own
    processor cannot be built here (Qwen2VLProcessor requires a torchvision video processor, and
    PyPI torchvision does not import beside the CPU-only torch wheel)."""

    def __init__(self, image_processor, tokenizer):
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    def save_pretrained(self, path) -> None:
        self.image_processor.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path) -> "ImageTextProcessor":
        from transformers import AutoImageProcessor, AutoTokenizer
        return cls(AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path))


def load_processor(path, model_type: str):
    from transformers import AutoProcessor
    if model_type in MROPE:
        return ImageTextProcessor.from_pretrained(path)
    return AutoProcessor.from_pretrained(path)
