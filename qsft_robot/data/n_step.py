"""n-step windows over the logged steps: where each transition's target bootstraps, and with what.

Why per env step, not per token: the paper's chain backs a value up one action token per target
refresh, D tokens per env step, and with a Polyak target (alpha 0.005: ~200 updates a hop) a sparse
success reward 15-40 env steps away has not reached the first steps after a thousand updates (the
measured "collapse" of the expectation backup). Summing n logged rewards before bootstrapping moves
it n env steps a hop; sharing one target across the D tokens of a step needs theta_bar over the
bootstrap state's prompt only, one forward over N sequences instead of 2N (in-sample n-step values:
Park et al., "Horizon Reduction Makes RL Scalable", 2025; Q-chunking, Li et al. 2025).

The window never crosses an episode and stops at a true termination (no bootstrap). A log cut short
(a time limit, a recording stopped part-way) has no observation after its last action, so that last
transition has no target: it is left out of the Q loss (`valid` false) and serves only as the state
the windows before it bootstrap from, whose value comes from what the network learned at similar
states. Bootstrapping it from itself instead (one-step convention) makes its value the fixed point of
its own logged action, V = gamma * V for a stop; it then depends on the ratio p_theta / pi_beta of one
memorised frame, which measured 4-5 there: the max-like backups saturated on it.
n = 1 gives the one-step transitions otherwise.
"""
from __future__ import annotations

import numpy as np


def n_step_windows(reward: np.ndarray, done: np.ndarray, next_index: np.ndarray, n: int,
                   gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bootstrap index, discounted reward sum, bootstrap discount, valid) of every transition: its target
    is reward_sum + discount * V(s_bootstrap) where valid. Inputs are the one-step arrays (N,); the last
    row of an episode points at itself."""
    if n < 1:
        raise ValueError(f"n-step windows need n >= 1, got {n}")
    size = len(reward)
    rows = np.arange(size)
    cut_end = (next_index == rows) & ~done   # the last action of a log cut short: no next state logged
    total = np.zeros(size, np.float64)
    discount = np.zeros(size, np.float64)
    boot = rows.copy()
    power = np.ones(size, np.float64)        # gamma^k for the k-th step of each window
    cur = rows.copy()
    open_ = ~cut_end
    for k in range(n):
        at_cut = open_ & cut_end[cur]        # reached a cut log's last frame: bootstrap there, before its action
        boot[at_cut], discount[at_cut] = cur[at_cut], power[at_cut]
        open_ &= ~at_cut
        total += np.where(open_, power * reward[cur], 0.0)
        nxt = next_index[cur]
        ends = open_ & (done[cur] | (k == n - 1))  # a termination, or n steps
        boot[ends] = nxt[ends]
        discount[ends] = np.where(done[cur], 0.0, power * gamma)[ends]
        open_ &= ~ends
        cur = np.where(open_, nxt, cur)
        power = power * gamma
    return boot, total.astype(np.float32), discount.astype(np.float32), ~cut_end
