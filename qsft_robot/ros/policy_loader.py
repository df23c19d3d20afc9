"""Which policy the node runs: a trained checkpoint, the scripted color_seek, or a plug-in class.

Kept apart from the node so the choice (and its errors) is testable without rclpy, and so the node
can check, before the first frame, that the policy's action size matches the robot profile: a
mismatch found only on the first frame would kill the control thread and leave the node silent.
"""
from __future__ import annotations

import importlib
import inspect
import json
from typing import Any, Protocol

import numpy as np

from qsft_robot.ros.params import KINDS


class ActingPolicy(Protocol):
    def act(self, images: np.ndarray, instructions: list[str], states=None) -> np.ndarray: ...


def parse_policy_args(text: str) -> dict[str, Any]:
    """`policy_args` is a JSON object of keyword arguments for a plug-in policy ('' = none)."""
    if not text.strip():
        return {}
    args = json.loads(text)
    if not isinstance(args, dict):
        raise TypeError(f"policy_args must be a JSON object, got {text!r}")
    return args


def load_policy(kind: str, checkpoint: str, mode: str, device: str, action_dim: int,
                policy_args: str = "", action_space: str = "base_velocity") -> ActingPolicy:
    """Build the policy. Scripted and plug-in policies get the profile's action_dim (and policy_args), and its
    action_space when their constructor takes one (plug-ins written before it existed still load)."""
    if kind == "color_seek":
        from qsft_robot.ros.scripted_policy import ColorSeekPolicy

        factory = ColorSeekPolicy
    elif ":" in kind:
        module, _, name = kind.partition(":")
        factory = getattr(importlib.import_module(module), name)
    else:
        factory = None
    if factory is not None:
        kwargs = {"action_dim": action_dim, **parse_policy_args(policy_args)}
        if _accepts(factory, "action_space"):
            kwargs["action_space"] = action_space
        return factory(**kwargs)
    if kind != "checkpoint":
        raise ValueError(f"unknown policy kind {kind!r} ({KINDS})")
    if not checkpoint:
        raise ValueError("policy:=checkpoint needs checkpoint:=<run or checkpoint folder> "
                         "(or policy:=color_seek for a scripted bring-up policy)")
    import torch

    from qsft_robot.algo.policy import load_policy as load_ckpt

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_ckpt(checkpoint, mode=mode, device=device)


def _accepts(factory, name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def policy_action_dim(policy: Any) -> int | None:
    """The number of action dims the policy emits, when it says so (None: unknown, checked per action)."""
    dim = getattr(policy, "action_dim", None)
    if dim is None and hasattr(policy, "action_tokenizer"):
        dim = getattr(policy.action_tokenizer, "action_dim", None)
    return None if dim is None else int(dim)


def policy_action_names(policy: Any) -> list[str] | None:
    """The names of the action dims the policy was trained on (a checkpoint's, from the dataset), or None."""
    names = getattr(policy, "action_names", None)
    if names is None and hasattr(policy, "action_tokenizer"):
        names = getattr(policy.action_tokenizer, "names", None)
    return None if names is None else [str(n) for n in names]
