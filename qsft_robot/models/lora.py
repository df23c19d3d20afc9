"""LoRA for large backbones: theta, pi_beta and theta_bar as three adapters over one frozen base.

A 7B VLM then sits in memory once; the three networks of Q-SFT (docs/design.md §2.3) differ only in their
low-rank adapters, and theta_bar is a Polyak average of theta's adapter. Each network is an
`AdapterView`: an nn.Module whose parameters are *its* adapter's tensors (so the optimizer, Polyak
and the checkpoint code treat it like a whole model) and whose forward runs the shared model with
that adapter active.

Why not peft's `set_adapter` for switching: it also flips requires_grad, which would freeze theta's
adapter when pi_beta runs in the same step; switching the layers' active adapter directly leaves
gradients alone.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

BASE_POINTER = "lora_base.json"   # in each adapter folder: where the frozen base model lives
# attention + MLP projections of Llama/Gemma/Qwen/CLIP/SigLIP, and the output head (the bins' logits)
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj",
                   "fc1", "fc2", "lm_head"]


# a VLM's projector is new for every task (random in a preset built here), so it trains whole, as LLaVA's LoRA
# recipe trains it: peft's modules_to_save, one full copy per adapter
PROJECTORS = ("multi_modal_projector", "connector")


def _layers(peft_model):
    """The adapter-holding layers: LoRA layers and the modules_to_save copies (the projector)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper
    return [m for m in peft_model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


def projector_names(model) -> list[str]:
    """The projector module names of `model` (PROJECTORS) that peft should train whole."""
    inner = getattr(model, "model", model)
    return [n for n in PROJECTORS if isinstance(getattr(inner, n, None), torch.nn.Module)]


class AdapterView(torch.nn.Module):
    def __init__(self, peft_model, name: str):
        super().__init__()
        self._shared = [peft_model]          # a list: not registered as a submodule
        self.adapter_name = name
        self.adapter_params = torch.nn.ParameterList(
            [p for n, p in peft_model.named_parameters() if f".{name}." in n or n.endswith(f".{name}")])
        if not len(self.adapter_params):
            raise ValueError(f"no parameters for adapter {name!r}")
        from peft.utils.other import AuxiliaryTrainingWrapper
        # the layers `activate` switches, found once (they do not change after the adapters are added) instead of
        # walking every module of the model on every forward. A modules_to_save wrapper holds one adapter name, a
        # LoRA layer a list
        self._switch = [(layer, isinstance(layer, AuxiliaryTrainingWrapper)) for layer in _layers(peft_model)]

    @property
    def peft_model(self):
        return self._shared[0]

    @property
    def config(self):
        return self.peft_model.base_model.model.config

    @property
    def dtype(self):
        return self.peft_model.base_model.model.dtype

    def activate(self) -> None:
        for layer, one_name in self._switch:   # a fresh list each time: peft may edit the one it holds
            layer._active_adapter = self.adapter_name if one_name else [self.adapter_name]

    def forward(self, **kw):
        self.activate()
        return self.peft_model(**kw)

    def get_input_embeddings(self):
        return self.peft_model.get_input_embeddings()

    def save_pretrained(self, path, base_dir: str | Path | None = None) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = self.peft_model.peft_config[self.adapter_name]
        cfg.save_pretrained(str(path))
        state = get_peft_model_state_dict(self.peft_model, adapter_name=self.adapter_name,
                                          save_embedding_layers=False)  # the base holds them, once
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path / "adapter_model.safetensors"))
        self.config.save_pretrained(path)  # config.json: the folder still reads as a model checkpoint
        base = Path(base_dir or self.peft_model.base_dir)
        (path / BASE_POINTER).write_text(json.dumps({"base": os.path.relpath(base.resolve(), path.resolve())}))

    def load_adapter_weights(self, path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        state = load_file(str(Path(path) / "adapter_model.safetensors"))
        set_peft_model_state_dict(self.peft_model, state, adapter_name=self.adapter_name)


def wrap_with_lora(model, base_dir: str | Path, names: list[str], rank: int = 16, alpha: int = 32,
                   targets: list[str] | None = None) -> dict[str, AdapterView]:
    """Freeze `model` and give it one LoRA adapter per name; returns name -> AdapterView.

    Adapters after the first start as copies of the first (theta_bar = theta at step 0; pi_beta
    from the same point, as in full fine-tuning where all three are copies of one model). The projector
    (PROJECTORS) is not low-rank: each adapter has its own whole copy of it."""
    from peft import LoraConfig, get_peft_model
    model.requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets or DEFAULT_TARGETS, lora_dropout=0.0,
                     init_lora_weights="gaussian", modules_to_save=projector_names(model) or None)
    peft_model = get_peft_model(model, cfg, adapter_name=names[0])
    for n in names[1:]:
        peft_model.add_adapter(n, cfg)
    peft_model.base_dir = Path(base_dir)
    views = {n: AdapterView(peft_model, n) for n in names}
    with torch.no_grad():
        for n in names[1:]:
            for p_dst, p_src in zip(views[n].parameters(), views[names[0]].parameters()):
                p_dst.copy_(p_src)
    for v in views.values():
        v.requires_grad_(True)
    return views


def is_lora_folder(path) -> bool:
    return (Path(path) / BASE_POINTER).is_file()


def base_of(adapter_folder) -> Path:
    """The frozen base model folder an adapter folder was trained over (its BASE_POINTER)."""
    folder = Path(adapter_folder)
    return (folder / json.loads((folder / BASE_POINTER).read_text())["base"]).resolve()


def adapter_rank(adapter_folder) -> int:
    return int(json.loads((Path(adapter_folder) / "adapter_config.json").read_text())["r"])


def load_lora(paths: dict[str, Path], device="cpu", dtype=None) -> dict[str, AdapterView]:
    """name -> adapter folder (all over the same base) -> name -> AdapterView, ready to act."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText
    first_name, first = next(iter(paths.items()))
    base = base_of(first)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype or torch.float32).to(device)
    peft_model = PeftModel.from_pretrained(model, str(first), adapter_name=first_name)
    for n, p in list(paths.items())[1:]:
        peft_model.load_adapter(str(p), adapter_name=n)
    peft_model.base_dir = base
    peft_model.eval()
    return {n: AdapterView(peft_model, n) for n in paths}
