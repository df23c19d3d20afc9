"""TESTS ONLY: plug-in policies (policy:=ros_test_policies:<class>) that declare what they emit, as a trained
checkpoint does through its action tokenizer, to check the node's start-up check against the robot profile."""
from __future__ import annotations

import numpy as np


class DeclaredPolicy:
    """Emits zeros of `emits` dims (default: the profile's) and declares `names` as its action names."""

    def __init__(self, action_dim: int, emits: int | None = None, names: list[str] | None = None):
        self.action_dim = action_dim if emits is None else int(emits)
        self.action_names = names

    def act(self, images: np.ndarray, instructions: list[str], states=None) -> np.ndarray:
        return np.zeros((len(instructions), self.action_dim))
