"""The behaviour policy's support: which action bins a greedy choice may take.

It lives with the models, below `algo/`, because two layers need the very same rule: the Bellman
targets (`algo/qsft.py`) take their max/expectile over it, and acting (`models/vlm_adapter.py`
decode) restricts argmax_q to it. One definition keeps the two from drifting apart.
"""
from __future__ import annotations

from torch import Tensor


def support_mask(pi_beta: Tensor, eps: float) -> Tensor:
    """m(b|s) = [pi_beta(b|s) > eps], always keeping pi_beta's most likely bin.

    Why the argmax is kept: with B bins the largest probability can be as low as 1/B, so a threshold
    such as 0.05 with 32+ bins can empty the support of a flat pi_beta; the max (and an action chosen
    within the support) must still have the bin the data makes most likely.
    """
    return (pi_beta > eps) | (pi_beta >= pi_beta.max(dim=-1, keepdim=True).values)
