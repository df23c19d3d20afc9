"""A small episodic MDP whose actions are token sequences, and exact dynamic programming on it.

Used by the tabular correctness test of Q-SFT: the learned lookup tables must reach the fixed point
p* computed here, independently of the training code (numpy only, no qsft_robot imports).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TokenMDP:
    """S env states, actions a = (b1, b2) with D = 2 token dims of B bins each.

    outcome probabilities per (s, b1, b2): success (reward 1, terminal), failure (absorbing, reward 0,
    terminal) and continue to s' (reward 0). Behaviour: pi1[s, b1], pi2[s, b1, b2] (token-level).
    """
    num_states: int
    num_bins: int
    p_success: np.ndarray   # (S, B, B)
    p_fail: np.ndarray      # (S, B, B)
    p_next: np.ndarray      # (S, B, B, S) unnormalised share of the rest
    start: np.ndarray       # (S,)
    pi1: np.ndarray         # (S, B)
    pi2: np.ndarray         # (S, B, B)
    gamma: float = 0.9

    # token state ids: first dim -> s ; second dim -> S + s * B + b1
    @property
    def num_token_states(self) -> int:
        return self.num_states + self.num_states * self.num_bins

    def tok2(self, s, b1):
        return self.num_states + s * self.num_bins + b1

    def behaviour_table(self) -> np.ndarray:
        S, B = self.num_states, self.num_bins
        table = np.zeros((self.num_token_states, B))
        table[:S] = self.pi1
        table[S:] = self.pi2.reshape(S * B, B)
        return table

    def continue_probs(self) -> np.ndarray:
        rest = 1.0 - self.p_success - self.p_fail
        return rest[..., None] * self.p_next / self.p_next.sum(-1, keepdims=True)


def random_mdp(seed: int, num_states=4, num_bins=3, behaviour="random", gamma=0.9) -> TokenMDP:
    """Each state has one good action (likely success), several poor ones (likely absorbing failure)."""
    rng = np.random.default_rng(seed)
    S, B = num_states, num_bins
    p_success = rng.uniform(0.0, 0.1, size=(S, B, B))
    p_fail = rng.uniform(0.0, 0.3, size=(S, B, B))
    good = rng.integers(0, B, size=(S, 2))
    poor = rng.integers(0, B, size=(S, 2))
    for s in range(S):
        p_success[s, good[s, 0], good[s, 1]] = 0.7
        p_fail[s, good[s, 0], good[s, 1]] = 0.0
        if tuple(poor[s]) != tuple(good[s]):
            p_fail[s, poor[s, 0], poor[s, 1]] = 0.8
            p_success[s, poor[s, 0], poor[s, 1]] = 0.0
    p_next = rng.uniform(0.1, 1.0, size=(S, B, B, S))
    start = rng.dirichlet(np.ones(S))
    if behaviour == "random":
        pi1 = rng.dirichlet(np.ones(B), size=S)
        pi2 = rng.dirichlet(np.ones(B), size=(S, B))
    elif behaviour == "diffuse":  # noisy scripted data: close to uniform
        pi1 = rng.dirichlet(20 * np.ones(B), size=S)
        pi2 = rng.dirichlet(20 * np.ones(B), size=(S, B))
    elif behaviour == "peaked_poor":  # most mass on the poor action, little on the rest
        pi1 = np.full((S, B), 0.1 / (B - 1))
        pi2 = np.full((S, B, B), 0.1 / (B - 1))
        for s in range(S):
            pi1[s, poor[s, 0]] = 0.9
            pi2[s, :, poor[s, 1]] = 0.9
    else:
        raise ValueError(behaviour)
    return TokenMDP(S, B, p_success, p_fail, p_next, start, pi1, pi2, gamma)


def behaviour_step(mdp: TokenMDP, rng: np.random.Generator, s: int, cont: np.ndarray) -> tuple[int, int, int]:
    """One env step of the behaviour policy from state s: its two tokens and the outcome (0 success,
    1 failure, 2 + s' continue to s')."""
    b1 = rng.choice(mdp.num_bins, p=mdp.pi1[s])
    b2 = rng.choice(mdp.num_bins, p=mdp.pi2[s, b1])
    probs = np.concatenate([[mdp.p_success[s, b1, b2], mdp.p_fail[s, b1, b2]], cont[s, b1, b2]])
    return b1, b2, rng.choice(mdp.num_states + 2, p=probs / probs.sum())


def sample_dataset(mdp: TokenMDP, episodes: int, seed: int, horizon: int = 20) -> dict[str, np.ndarray]:
    """Token transitions (state, action, reward, discount, next_state) from the behaviour policy.

    Episodes longer than `horizon` are truncated: not terminal, so they bootstrap.
    """
    rng = np.random.default_rng(seed)
    S, g = mdp.num_states, mdp.gamma
    cont = mdp.continue_probs()
    rows = []
    returns = []  # discounted return-to-go of each row's env step (both tokens of a step share it)
    for _ in range(episodes):
        first = len(rows)
        s = rng.choice(S, p=mdp.start)
        for _t in range(horizon):
            b1, b2, o = behaviour_step(mdp, rng, s, cont)
            rows.append((s, b1, 0.0, 1.0, mdp.tok2(s, b1)))
            if o == 0:
                rows.append((mdp.tok2(s, b1), b2, 1.0, 0.0, 0))
                break
            if o == 1:
                rows.append((mdp.tok2(s, b1), b2, 0.0, 0.0, 0))
                break
            s_next = o - 2
            rows.append((mdp.tok2(s, b1), b2, 0.0, g, s_next))
            s = s_next
        rew = [r[2] for r in rows[first:]][1::2]  # env rewards sit on each step's second token
        G, ret = 0.0, []
        for r in reversed(rew):
            G = r + g * G
            ret.append(G)
        returns += [x for x in reversed(ret) for _ in range(2)]
    arr = np.array(rows, dtype=np.float64)
    return {"state": arr[:, 0].astype(np.int64), "action": arr[:, 1].astype(np.int64),
            "reward": arr[:, 2], "discount": arr[:, 3], "next_state": arr[:, 4].astype(np.int64),
            "return": np.array(returns)}


def q_star(mdp: TokenMDP, iters: int = 2000) -> np.ndarray:
    """Token-level Q* by value iteration: (num_token_states, B)."""
    S, B, g = mdp.num_states, mdp.num_bins, mdp.gamma
    cont = mdp.continue_probs()
    q1 = np.zeros((S, B))
    for _ in range(iters):
        v = q1.max(-1)
        q2 = mdp.p_success + g * (cont @ v)          # (S, B, B)
        q1 = q2.max(-1)
    out = np.zeros((mdp.num_token_states, B))
    out[:S] = q1
    out[S:] = q2.reshape(S * B, B)
    return out


def qsft_fixed_point(mdp: TokenMDP, leftover: str, eps: float = 1e-4, iters: int = 3000) -> np.ndarray:
    """Exact fixed point p* of the expected Q-SFT update (docs/design.md §2.4-2.5), true P and pi_beta.

    Expected loss at token state x is minimised by p(c) = pi(c) w(c) + sum_{b != c} pi(b)(1-w(b))/(B-1)
    (uniform) or p(c) = pi(c) w(c), p(dummy) = 1 - sum pi w (dummy); w is the expected clipped target.
    """
    S, B, g = mdp.num_states, mdp.num_bins, mdp.gamma
    cont = mdp.continue_probs()
    pi = mdp.behaviour_table()
    width = B + 1 if leftover == "dummy" else B
    p = np.full((mdp.num_token_states, width), 1.0 / width)

    def value(rows):  # max over supported bins of p/pi, per token state row
        ratio = np.where(pi[rows] > eps, p[rows, :B] / np.maximum(pi[rows], eps), 0.0)
        return ratio.max(-1)

    for _ in range(iters):
        w = np.zeros((mdp.num_token_states, B))
        # first dim: deterministic next token state (s, b1), reward 0, discount 1
        v2 = value(np.arange(S, mdp.num_token_states)).reshape(S, B)
        w[:S] = np.clip(v2, 0, 1)
        # last dim: success -> clip(1) = 1, failure -> 0, continue -> clip(gamma * V1(s'))
        v1 = np.clip(g * value(np.arange(S)), 0, 1)
        w[S:] = (mdp.p_success + cont @ v1).reshape(S * B, B)
        if leftover == "uniform":
            leak = (pi * (1 - w)).sum(-1, keepdims=True)
            new = pi * w + (leak - pi * (1 - w)) / (B - 1)
        else:
            new = np.concatenate([pi * w, 1 - (pi * w).sum(-1, keepdims=True)], axis=1)
        if np.abs(new - p).max() < 1e-12:
            p = new
            break
        p = new
    return p


def sigmoid_fixed_point(mdp: TokenMDP, conservative: float, eps: float = 1e-4, iters: int = 3000) -> np.ndarray:
    """Exact fixed point q* (num_token_states, B) of the expected sigmoid-critic update with max targets.

    At token state x the data bin b has weight pi(b) on its target T(x, b) and every other bin weight
    (1 - pi(b)) c / (B - 1) on 0; the Bernoulli cross-entropy is minimised by
    q(b) = pi(b) T(b) / (pi(b) + (1 - pi(b)) c / (B - 1)). T backs up max_b q over the supported bins."""
    S, B, g = mdp.num_states, mdp.num_bins, mdp.gamma
    cont = mdp.continue_probs()
    pi = mdp.behaviour_table()
    shrink = pi / (pi + (1.0 - pi) * conservative / (B - 1))
    q = np.zeros((mdp.num_token_states, B))

    def value(rows):
        return np.where(pi[rows] > eps, q[rows], 0.0).max(-1)

    for _ in range(iters):
        t = np.zeros_like(q)
        t[:S] = np.clip(value(np.arange(S, mdp.num_token_states)).reshape(S, B), 0, 1)
        v1 = np.clip(g * value(np.arange(S)), 0, 1)
        t[S:] = (mdp.p_success + cont @ v1).reshape(S * B, B)
        new = shrink * t
        if np.abs(new - q).max() < 1e-12:
            return new
        q = new
    return q


def expected_return(mdp: TokenMDP, tok_policy: np.ndarray) -> float:
    """Exact discounted return from the start distribution of a token-level policy table (rows sum 1)."""
    S, B, g = mdp.num_states, mdp.num_bins, mdp.gamma
    cont = mdp.continue_probs()
    joint = tok_policy[:S, :, None] * tok_policy[S:].reshape(S, B, B)       # pi(b1, b2 | s)
    r = (joint * mdp.p_success).sum((1, 2))
    P = np.einsum("sab,sabt->st", joint, cont)
    v = np.linalg.solve(np.eye(S) - g * P, r)
    return float(mdp.start @ v)


def greedy(table: np.ndarray) -> np.ndarray:
    out = np.zeros_like(table)
    out[np.arange(len(table)), table.argmax(-1)] = 1.0
    return out


def q_behaviour(mdp: TokenMDP) -> np.ndarray:
    """Token-level Q of the logged policy pi_beta by exact policy evaluation (a linear solve, no
    Q-SFT iteration): the fixed point that next_value="expectation" should reach."""
    S, B, g = mdp.num_states, mdp.num_bins, mdp.gamma
    cont = mdp.continue_probs()
    pi = mdp.behaviour_table()
    joint = pi[:S, :, None] * pi[S:].reshape(S, B, B)
    r = (joint * mdp.p_success).sum((1, 2))
    v1 = np.linalg.solve(np.eye(S) - g * np.einsum("sab,sabt->st", joint, cont), r)
    q2 = mdp.p_success + g * (cont @ v1)                    # (S, B, B)
    q1 = (pi[S:].reshape(S, B, B) * q2).sum(-1)             # (S, B)
    out = np.zeros((mdp.num_token_states, B))
    out[:S] = q1
    out[S:] = q2.reshape(S * B, B)
    return out


def _expectile(values: np.ndarray, weights: np.ndarray, tau: float, iters: int = 60) -> np.ndarray:
    """Row-wise tau-expectile by bisection (independent of algo/qsft.py's re-weighted-mean iteration)."""
    lo, hi = values.min(-1), values.max(-1)
    for _ in range(iters):
        v = (lo + hi) / 2
        d = values - v[..., None]
        g = (weights * np.where(d > 0, tau, 1 - tau) * d).sum(-1)  # decreasing in v; zero at the expectile
        lo, hi = np.where(g > 0, v, lo), np.where(g > 0, hi, v)
    return (lo + hi) / 2


def q_expectile(mdp: TokenMDP, tau: float, iters: int = 400) -> np.ndarray:
    """Token-level Q of next_value="expectile": V(x) = the tau-expectile of Q(x, .) under pi_beta."""
    S, B, g = mdp.num_states, mdp.num_bins, mdp.gamma
    cont = mdp.continue_probs()
    pi = mdp.behaviour_table()
    q1 = np.zeros((S, B))
    for _ in range(iters):
        q2 = np.clip(mdp.p_success + g * (cont @ _expectile(q1, pi[:S], tau)), 0, 1)   # (S, B, B)
        q1 = np.clip(_expectile(q2, pi[S:].reshape(S, B, B), tau), 0, 1)
    out = np.zeros((mdp.num_token_states, B))
    out[:S] = q1
    out[S:] = q2.reshape(S * B, B)
    return out


def sample_steps(mdp: TokenMDP, episodes: int, seed: int, horizon: int = 200) -> dict[str, np.ndarray]:
    """Env-step transitions of whole episodes from the behaviour policy, in the trainer's layout: per step
    the state, both tokens, the reward after it, whether it ended the episode, the next step's row (the
    last row of an episode points at itself). The horizon is long enough that no episode is cut
    (asserted): the n-step fixed point below assumes every episode ends by success or failure."""
    rng = np.random.default_rng(seed)
    S = mdp.num_states
    cont = mdp.continue_probs()
    s_, b1_, b2_, r_, done_, nxt_ = [], [], [], [], [], []
    for _ in range(episodes):
        s = rng.choice(S, p=mdp.start)
        for _t in range(horizon):
            b1, b2, o = behaviour_step(mdp, rng, s, cont)
            s_.append(s), b1_.append(b1), b2_.append(b2), r_.append(float(o == 0)), done_.append(o < 2)
            nxt_.append(len(s_) - 1 if o < 2 else len(s_))
            if o < 2:
                break
            s = o - 2
        assert done_[-1], "an episode reached the horizon: raise it"
    return {"state": np.array(s_), "b1": np.array(b1_), "b2": np.array(b2_), "reward": np.array(r_),
            "done": np.array(done_), "next_index": np.array(nxt_)}


def expected_max_by_enumeration(values: np.ndarray, weights: np.ndarray, samples: int) -> float:
    """E[max of `samples` i.i.d. draws] by summing over every tuple of draws (small B and N only)."""
    import itertools

    p = weights / weights.sum()
    return float(sum(np.prod(p[list(t)]) * values[list(t)].max()
                     for t in itertools.product(range(len(values)), repeat=samples)))


def q_n_step_emaq(mdp: TokenMDP, n: int, samples: int, eps: float = 1e-4, iters: int = 300) -> np.ndarray:
    """Token-level fixed point of target=n_step, next_value=emaq: both tokens of a step share the target
    w = sum_{k<n} gamma^k r_k + gamma^n V(s_n) along the behaviour's n-step continuation, V(s) = E[max of
    Q1(s, b) over `samples` draws b ~ pi1(s) on its support]; Q2(s, b1, b2) = E[w | s, b1, b2] and
    Q1(s, b1) = E_{pi2}[Q2]."""
    S, B, g = mdp.num_states, mdp.num_bins, mdp.gamma
    cont = mdp.continue_probs()
    pi = mdp.behaviour_table()
    joint = pi[:S, :, None] * pi[S:].reshape(S, B, B)                     # pi(b1, b2 | s)
    support = (mdp.pi1 > eps) | (mdp.pi1 >= mdp.pi1.max(-1, keepdims=True))
    q1 = np.zeros((S, B))
    for _ in range(iters):
        m = np.array([expected_max_by_enumeration(q1[s][support[s]], mdp.pi1[s][support[s]], samples)
                      for s in range(S)])                                  # M_0 = V
        for _k in range(n - 1):                                            # M_k: k behaviour steps, then V
            m = (joint * (mdp.p_success + g * (cont @ m))).sum((1, 2))
        q2 = mdp.p_success + g * (cont @ m)                                # (S, B, B)
        q1 = (pi[S:].reshape(S, B, B) * q2).sum(-1)
    out = np.zeros((mdp.num_token_states, B))
    out[:S] = q1
    out[S:] = q2.reshape(S * B, B)
    return out
