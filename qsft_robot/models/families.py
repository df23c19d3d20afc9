"""Per-architecture input layout: where the image tokens go and which extra tensors each model takes.

This is the only architecture-specific code. LLaVA (the default) is assembled here by hand and its
images are normalised in torch, batched: the training loop lives on that path and the processor's
per-image PIL route costs ~100x more. Every other family goes through its *own* HF processor (or,
where that processor insists on a torchvision video processor — SmolVLM2, Qwen2-VL, Qwen2.5-VL — its
own image processor and the model's own prompt-string rule), so the image-token layout is the model's,
not ours: PaliGemma's image prefix + bos with bidirectional prefix attention (token_type_ids), Idefics3
(SmolVLM v1)'s and SmolVLM2's <fake_token_around_image><global-img> frame (SmolVLM2 with its
<row_i_col_j> tiles when the image processor splits) and pixel masks, Qwen2-VL's and Qwen2.5-VL's
variable patch grid and 3-D (M-RoPE) positions.

A `Batch` knows how to grow by one token per row, which is all that teacher forcing and KV-cached
decoding need from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# SmolVLM v1 checkpoints are idefics3; SmolVLM2 (the VLM under LeRobot's SmolVLA) is smolvlm
FAMILIES = ("llava", "paligemma", "idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl")
MROPE = ("qwen2_vl", "qwen2_5_vl")
# families whose HF processor cannot be built without torchvision: tokenizer + image processor instead
OWN_LAYOUT = MROPE + ("smolvlm",)
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


def unwrap(model):
    """The HF model under a LoRA `AdapterView` (models/lora.py), or the model itself: for what the
    wrapper does not forward (the M-RoPE position rule, the text decoder, the output head)."""
    peft_model = getattr(model, "peft_model", None)
    return peft_model.get_base_model() if peft_model is not None else model


def _encoder_slot(model) -> tuple[torch.nn.Module, str]:
    """(owner, attribute name) of the image encoder: LLaVA/PaliGemma: vision_tower, Idefics3/SmolVLM2:
    vision_model, Qwen2-VL/Qwen2.5-VL: visual, looked up on the inner model first (transformers >= 4.52
    nests it there)."""
    for owner in (getattr(model, "model", None), model):
        for name in ("vision_tower", "vision_model", "visual"):
            if owner is not None and isinstance(getattr(owner, name, None), torch.nn.Module):
                return owner, name
    raise ValueError(f"no vision encoder found on {type(model).__name__}")


def vision_encoder(model) -> torch.nn.Module:
    """The image encoder of any supported family (see `_encoder_slot`)."""
    owner, name = _encoder_slot(model)
    return getattr(owner, name)


def share_vision_encoder(src, dst) -> bool:
    """Make dst use src's image encoder module when the two hold bit-identical weights (a frozen
    pretrained tower, as theta and pi_beta have with model.freeze_vision); returns whether it did.

    Why: acting within pi_beta's support runs both models on the same frame, and their encoders then
    compute the same features twice. Once they are one module, `VLMAdapter.decode` runs it once per
    frame (and the second copy's memory is freed). Weights are compared, not assumed from the config."""
    src, dst = unwrap(src), unwrap(dst)
    a, b = vision_encoder(src), vision_encoder(dst)
    if a is b:
        return True

    def same(x: Tensor, y: Tensor) -> bool:   # dtype too: torch.equal would equate a bf16 copy with fp32
        return x.dtype == y.dtype and x.device == y.device and x.shape == y.shape and torch.equal(x, y)

    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or not all(same(sa[k], sb[k]) for k in sa):
        return False
    owner, name = _encoder_slot(dst)
    setattr(owner, name, a)
    return True


def freeze_vision_encoder(model) -> int:
    """requires_grad=False on the image encoder (LLaVA-1.5's recipe: the projector and the language
    model train, the encoder does not). Returns the number of parameters frozen.

    Why it is offered for `tiny_scratch` (a tower trained from scratch) too: with the encoder trainable, the
    first few hundred steps of Adam teach it to *remove* the image's variation (the language model
    cannot use it yet, so to the loss it is noise). Measured on arm_reach_red expert data after 400 BC
    steps: the spread of the encoder's patch features across images fell from 0.30 (at init) to 0.05
    while their norm grew 4x, and swapping a batch's images changed no action. Frozen, the spread
    stays 0.30 and 5% of actions change with the image; that alone did not make the policy use it
    (docs/results.md, Image tower and image tokens).
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
    if family == "smolvlm":
        return (getattr(processor.tokenizer, "image_token", None) or "<image>") * n_cams
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
    elif fam == "smolvlm":
        out = _smolvlm_inputs(adapter, per_sample, texts)
    else:  # numpy out, torch here: PaliGemmaProcessor's np.array(input_ids) on torch tensors warns (numpy 2)
        out = dict(proc(text=texts, images=per_sample if fam != "paligemma" else [s[0] for s in per_sample]
                        if images.shape[1] == 1 else per_sample, return_tensors="np", padding=True))
        out = {k: torch.from_numpy(np.asarray(v)) for k, v in out.items()}
    out.pop("labels", None)
    dev = adapter.device
    out = {k: (v.to(dev, dtype=adapter.model.dtype) if k == "pixel_values" else v.to(dev)) for k, v in out.items()}
    ids, mask = out.pop("input_ids"), out.pop("attention_mask")
    pixel_values = out.pop("pixel_values")
    if fam in MROPE:
        pos, _ = unwrap(adapter.model).model.get_rope_index(ids, image_grid_thw=out["image_grid_thw"],
                                                            attention_mask=mask,
                                                            mm_token_type_ids=out["mm_token_type_ids"])
    else:
        pos = text_positions(mask)
    return Batch(ids, mask, pos, pixel_values, out)


def _smolvlm_inputs(adapter, per_sample: list, texts: list[str]) -> dict:
    """SmolVLM2's layout, as SmolVLMProcessor builds it (that class needs torchvision and num2words,
    for video only): its image processor resizes (and, if configured, splits into tiles, returning
    rows x cols per image), then every <image> becomes transformers' own `get_image_prompt_string`:
    <fake_token_around_image>[<row_i_col_j><image>*n per tile] <global-img><image>*n <fake_token...>.
    n = (image_size / patch_size)^2 / scale_factor^2 image tokens per tile, from the model's config."""
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    tok = adapter.tokenizer
    vis = dict(adapter.processor.image_processor(images=per_sample, return_tensors="pt", return_row_col_info=True))
    rows, cols = vis.pop("rows"), vis.pop("cols")
    cfg = adapter.model.config
    seq = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 // cfg.scale_factor ** 2
    image = getattr(tok, "image_token", None) or "<image>"
    fake = getattr(tok, "fake_image_token", None) or "<fake_token_around_image>"
    glob = getattr(tok, "global_image_token", None) or "<global-img>"
    expanded = []
    for text, r_s, c_s in zip(texts, rows, cols):
        parts = text.split(image)
        if len(parts) - 1 != len(r_s):
            raise ValueError(f"{len(parts) - 1} image placeholders for {len(r_s)} images")
        expanded.append(parts[0] + "".join(get_image_prompt_string(r, c, seq, fake, image, glob) + rest
                                           for r, c, rest in zip(r_s, c_s, parts[1:])))
    return {**tok(expanded, return_tensors="pt", padding=True), **vis}


def encode_prompts(adapter, images: np.ndarray, texts: list[str]) -> Batch:
    """images (N, cams, H, W, 3) uint8; texts already carry the image placeholder."""
    if adapter.family == "llava":
        return _llava(adapter, torch.as_tensor(np.ascontiguousarray(images), device=adapter.device), texts)
    if adapter.tokenizer.padding_side != "left":
        adapter.tokenizer.padding_side = "left"
    return _with_processor(adapter, images, texts)


class ImageTextProcessor:
    """Tokenizer + image processor saved and loaded as one HF folder, for families whose own
    processor cannot be built here (Qwen2VLProcessor, Qwen2_5_VLProcessor and SmolVLMProcessor require a
    torchvision video processor, and PyPI torchvision does not import beside the CPU-only torch wheel).
    A downloaded checkpoint's folder loads the same way: its image processor and tokenizer files."""

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
    if model_type in OWN_LAYOUT:
        return ImageTextProcessor.from_pretrained(path)
    return AutoProcessor.from_pretrained(path)
