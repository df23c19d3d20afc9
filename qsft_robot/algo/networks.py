"""The networks of one run, as one value (docs/design.md §2.3)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Networks:
    """theta: the model that acts (the Q model for Q-SFT); pi_beta: the behaviour policy (for the BC
    baselines it *is* theta); theta_bar: theta's Polyak-averaged target copy (Q-SFT only, never trained).

    A trainer holds two of these: the modules themselves (decoding, Polyak, saving) and the views the
    loss runs through (DDP-wrapped theta and pi_beta when several processes train; theta_bar as is)."""
    theta: torch.nn.Module
    pi_beta: torch.nn.Module
    theta_bar: torch.nn.Module | None = None

    @property
    def qsft(self) -> bool:
        return self.theta_bar is not None

    def trained(self) -> dict[str, torch.nn.Module]:
        """The networks with an optimizer, by checkpoint subfolder name."""
        return {"model": self.theta, "behavior": self.pi_beta} if self.qsft else {"model": self.theta}

    def saved(self) -> dict[str, torch.nn.Module]:
        """Every network a checkpoint holds, by subfolder name."""
        return {**self.trained(), **({"target": self.theta_bar} if self.qsft else {})}
