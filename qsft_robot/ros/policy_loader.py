"""Which policy the node runs: a trained checkpoint, the scripted color_seek, or a plug-in class.

Kept apart from the node so the choice (and its errors) is testable without rclpy, and so the node
can check, before the first frame, that the policy's action size matches the robot profile: a
mismatch found on the first frame used to kill the control thread and leave the node silent.
"""
from __future__ import annotations

import importlib
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
                policy_args: str = "") -> ActingPolicy:
    """Build the policy. Scripted and plug-in policies get the profile's action_dim (and policy_args)."""
    if kind == "color_seek":
        from qsft_robot.ros.scripted_policy import ColorSeekPolicy

        return ColorSeekPolicy(action_dim=action_dim, **parse_policy_args(policy_args))
    if ":" in kind:
        module, _, name = kind.partition(":")
        factory = getattr(importlib.import_module(module), name)
        return factory(action_dim=action_dim, **parse_policy_args(policy_args))
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


def policy_action_dim(policy: Any) -> int | None:
    """The number of action dims the policy emits, when it says so (None: unknown, checked per action)."""
    dim = getattr(policy, "action_dim", None)
    if dim is None and hasattr(policy, "action_tokenizer"):
        dim = getattr(policy.action_tokenizer, "num_dims", None)
    return None if dim is None else int(dim)
