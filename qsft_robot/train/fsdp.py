"""FSDP2 sharding for big backbones: theta, pi_beta and theta_bar each sharded the same way.

Why torch's `fully_shard` and not accelerate's FSDP plugin: accelerate turns FSDP on only for
accelerator devices (MULTI_GPU/NPU/...), never for multi-process CPU, so its path could not be
tested on the CPU machines CI runs on. `fully_shard` is the engine accelerate's FSDP2 plugin calls;
it runs on CUDA/NCCL and on CPU/gloo alike, so the 2-process equality test exercises the same code
a GPU cluster runs. accelerate still owns the process group, device placement and logging.

Sharding all three networks with one recipe makes their DTensor parameters line up shard by shard,
so the Polyak update theta_bar <- lerp(theta_bar, theta) stays a local, communication-free op.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def layer_classes(model: nn.Module) -> set[str]:
    """The transformer block classes to shard one by one: HF lists them in `_no_split_modules`."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return names


def shard(model: nn.Module, world: int, device: torch.device, mixed_precision: str = "no") -> nn.Module:
    """One FSDP unit per transformer block (parameters gathered just in time) + the root for the rest."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy()
    if mixed_precision in ("bf16", "fp16"):  # compute in half precision, reduce gradients in fp32
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16,
                                  reduce_dtype=torch.float32)
    classes = layer_classes(model)
    blocks = [m for m in model.modules() if type(m).__name__ in classes]
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    logger.info("FSDP: %s sharded over %d processes (%d blocks of %s)", type(model).__name__, world, len(blocks),
                ", ".join(sorted(classes)) or "none")
    return model


def full_state_dict(model: nn.Module) -> dict:
    """The unsharded weights on CPU (a collective: every process must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(models: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state keyed by parameter name (collective); the same on every world size."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(nn.ModuleDict(models), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(models: dict[str, nn.Module], optimizer: torch.optim.Optimizer, state: dict) -> None:
    """strict=False: parameters that never received a gradient (e.g. a vision tower's unused last
    layer norm) have no Adam state to restore, exactly as in the unsharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(nn.ModuleDict(models), optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True, strict=False))


def set_gradient_sync(models, sync: bool) -> None:
    """Gradient accumulation: skip the reduce-scatter on all but the last micro-batch."""
    for m in models:
        m.set_requires_gradient_sync(sync)
