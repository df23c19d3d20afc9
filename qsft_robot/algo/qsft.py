"""Q-SFT: Bellman targets and the weighted soft-label cross-entropy (docs/design.md §2.4-2.5).

Model-agnostic on purpose: everything here sees (N, B) logit matrices, one row per action token,
so the same two functions train a 7B VLM and the lookup tables of the tabular correctness test.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qsft_robot.models.support import support_mask  # noqa: F401 - re-exported: the targets' support


def expectile(values: Tensor, weights: Tensor, tau: float, iters: int = 30) -> Tensor:
    """Row-wise tau-expectile of discrete distributions: values (N, B) with weights (N, B) >= 0.

    Solves sum_b w_b |tau - [x_b <= v]| (x_b - v) = 0 by the re-weighted-mean iteration (exact for a
    discrete distribution once the set {x_b > v} stops changing, which takes a few steps). tau = 0.5
    is the weighted mean, tau -> 1 the max over bins with weight: an in-distribution soft max.
    """
    v = (weights * values).sum(-1) / weights.sum(-1).clamp_min(1e-12)
    above = None
    for _ in range(iters):
        now = values > v[:, None]
        if above is not None and torch.equal(now, above):  # same split as last time: v is exact
            break
        above = now
        k = torch.where(now, tau, 1.0 - tau) * weights
        v = (k * values).sum(-1) / k.sum(-1).clamp_min(1e-12)
    return v


def expected_max(values: Tensor, weights: Tensor, samples: int) -> Tensor:
    """Row-wise E[max_{i <= N} x_{b_i}] for N independent draws b_i from the weights (N = `samples`).

    Exact for a discrete distribution: sort the values, and the k-th smallest is the max of N draws with
    probability F_k^N - F_{k-1}^N (F the cumulative weight in that order). N = 1 is the weighted mean,
    N -> infinity the max over bins with weight. Why it suits noisy ratios: a bin of weight pi can be the
    max only with probability <= N * pi, so a rare bin's estimation noise enters with that small weight,
    where a plain max lets it set the value (EMaQ, Ghasemipour et al. 2021).
    """
    order = values.argsort(dim=-1)
    x = values.gather(-1, order)
    w = weights.gather(-1, order)
    cdf = (w / w.sum(-1, keepdim=True).clamp_min(1e-12)).cumsum(-1).clamp(0.0, 1.0)
    below = torch.cat([torch.zeros_like(cdf[:, :1]), cdf[:, :-1]], dim=-1)
    return (x * (cdf.pow(samples) - below.pow(samples))).sum(-1)


def bin_q_values(q_logits: Tensor, pi_beta: Tensor, critic: str = "ratio") -> Tensor:
    """Q(s, b) of every real bin, (..., B), from theta's (or theta_bar's) logits over the bins [+ dummy] and
    pi_beta's probabilities (..., B).

    - "ratio" (Q-SFT): p_theta(b) / pi_beta(b), the quotient that undoes the behaviour weighting the loss
      builds into p_theta (p_theta ~ pi_beta * Q).
    - "sigmoid": sigmoid(logit(b)), each bin its own Bernoulli value (sigmoid_q_loss), no quotient.
    """
    num_bins = pi_beta.shape[-1]
    if critic == "sigmoid":
        return q_logits.float()[..., :num_bins].sigmoid()
    if critic == "ratio":
        return q_logits.float().softmax(-1)[..., :num_bins] / pi_beta.clamp_min(1e-12)  # drops the dummy column
    raise ValueError(f"critic must be 'ratio' or 'sigmoid', got {critic!r}")


def bellman_targets(next_q_logits: Tensor, next_behavior_logits: Tensor, rewards: Tensor,
                    discounts: Tensor, support_eps: float = 1e-4, next_value: str = "max",
                    tau: float = 0.9, samples: int = 4, critic: str = "ratio") -> Tensor:
    """w = clip(r + discount * V(s'), 0, 1), without gradient, from Q(s', b) = bin_q_values (by default
    the ratio p_target(b) / pi_beta(b)).

    The support mask m (support_mask) keeps every V off bins pi_beta does not take. V is:
    - "max" (the paper, docs/design.md §2.4): max_b m(b) Q(b). Kept selectable, but it saturates: Q is a
      quotient of two separately trained networks and the max picks its noise upward, so the targets
      pin at the clip value 1 (docs/design.md §2.8: 98% of targets >= 0.999 whatever the start).
    - "expectation": E_{pi_beta | m}[Q] = sum_b m p_target / sum_b m pi_beta, the logged policy's value
      (SARSA / one-step RL, Brandfonbrener et al. 2021), improved on at acting time by argmax
      p_theta ~ pi_beta * Q. Normalised over the support: without the denominator pi_beta's
      unsupported mass (~0.28 per token with 32 bins) was dropped at every token and values collapsed.
    - "expectile": the tau-expectile of Q under pi_beta on the support, IQL's in-sample maximum: it
      moves towards the best *likely* bins without letting one unlikely bin's noisy ratio decide.
    - "emaq": the expected max of Q over `samples` draws from pi_beta on the support (expected_max):
      1 draw is "expectation", many the "max"; in between, an improvement over the logged policy in which
      a bin's ratio counts in proportion to how likely pi_beta is to propose it.
    The ratio is meaningful with leftover="dummy" only: with the uniform leftover the real bins' mass is ~1.
    """
    with torch.no_grad():
        pi_beta = next_behavior_logits.float().softmax(-1)
        support = support_mask(pi_beta, support_eps)
        zero = torch.zeros_like(pi_beta)
        q = torch.where(support, bin_q_values(next_q_logits, pi_beta, critic), zero)
        weights = torch.where(support, pi_beta, zero)
        if next_value == "expectation":   # with the ratio: sum_b m p_target / sum_b m pi_beta
            value = (weights * q).sum(-1) / weights.sum(-1).clamp_min(1e-12)
        elif next_value == "expectile":
            value = expectile(q, weights, tau)
        elif next_value == "emaq":
            value = expected_max(q, weights, samples)
        elif next_value == "max":
            value = q.max(dim=-1).values
        else:
            raise ValueError(f"next_value must be 'max', 'expectation', 'expectile' or 'emaq', got {next_value!r}")
        return (rewards.float() + discounts.float() * value).clamp(0.0, 1.0)


def mc_lower_bound(targets: Tensor, returns: Tensor) -> Tensor:
    """w = max(w, G): the logged discounted return-to-go G of the transition, per token.

    Why: with a sparse success reward the Bellman target learns a state's value only after the
    target network has carried it back step by step (D tokens per env step, one hop per refresh);
    a few hundred offline updates leave early-episode targets at their initial guess. G is what the
    logged policy actually earned from here, so with non-negative rewards it is a lower bound on the
    optimal Q (Cal-QL's argument) and taking the max can only pull the target towards Q*, never
    past it. The token MDP has no reward and no discount inside a step, so every token of step t
    shares G_t. `targets` (T*D,) flattened row-major, `returns` (T,).
    """
    num_dims = targets.numel() // returns.numel()
    return torch.maximum(targets, returns.float().repeat_interleave(num_dims).clamp(0.0, 1.0))


def qsft_loss(logits: Tensor, actions: Tensor, weights: Tensor, leftover: str = "uniform", sigma: float = 0.0,
              num_bins: Tensor | None = None) -> Tensor:
    """L = -[w log p(b) + sum_{b' != b} (1 - w)/(B - 1) log p(b')], mean over tokens.

    With leftover="dummy" the last column of `logits` is an extra dummy token that takes the whole
    1 - w, so the real bins' probabilities equal pi_beta * w exactly at the fixed point.
    sigma > 0 (dummy leftover): the data bin's share w is spread like pi_beta's own smoothed label
    (behavior_loss, over the row's `num_bins`), so that p_theta / pi_beta stays w bin by bin. Why: a
    one-hot theta over a smoothed pi_beta puts w on the logged bin where pi_beta has only part of its
    mass, and every ratio there reads several times w (measured: logged actions' Q 4-5, 72% of
    bootstrapped targets clipped at 1).
    """
    log_p = logits.float().log_softmax(dim=-1)
    w = weights.detach().float()
    if sigma > 0 and leftover == "dummy":
        labels = smoothed_labels(actions, log_p.shape[-1] - 1, sigma, num_bins)
        log_p_data = (labels * log_p[:, :-1]).sum(-1)
    else:
        log_p_data = log_p.gather(1, actions.long()[:, None]).squeeze(1)
    if leftover == "uniform":
        num_bins = log_p.shape[-1]
        log_p_rest = (log_p.sum(dim=-1) - log_p_data) / (num_bins - 1)
    elif leftover == "dummy":
        log_p_rest = log_p[:, -1]
    else:
        raise ValueError(f"leftover must be 'uniform' or 'dummy', got {leftover!r}")
    return -(w * log_p_data + (1.0 - w) * log_p_rest).mean()


def sigmoid_q_loss(logits: Tensor, actions: Tensor, weights: Tensor, conservative: float = 1.0,
                   num_bins: Tensor | None = None) -> Tensor:
    """L = BCE(sigmoid(z_a), w) + c * mean_{b != a} BCE(sigmoid(z_b), 0), mean over tokens (critic="sigmoid").

    Each bin's logit is its own Q in [0, 1] (a discrete-action Q head as in Q-Transformer, Chebotar et al.
    2023): no quotient of two networks, so a max over bins is a max over values the critic itself fitted.
    The second term is the conservative part: every bin the data did not take at this token is pulled to
    0, the least return. In expectation over the logged bin its fixed point is
    q_b = pi_b E[w | b] / (pi_b + (1 - pi_b) c / (B - 1)): a bin pi_beta takes often keeps its value, a rare
    one shrinks toward 0, which is what keeps a max over bins from feeding on unseen actions. `logits`
    (N, >= B): columns past max(num_bins) (the dummy) are ignored; with num_bins None every column is a bin.
    `num_bins` (N,): each row's real bins; a row's padded bins (algo.per_dim_bins) are no action, so they are
    pulled to 0 with the same weight and never win a max backed up from them.
    """
    z = logits.float()[:, : int(num_bins.max()) if num_bins is not None else logits.shape[-1]]
    width = z.shape[-1]
    nb = torch.full_like(actions, width) if num_bins is None else num_bins.long().to(actions.device)
    a = actions.long()
    data = F.binary_cross_entropy_with_logits(z.gather(1, a[:, None]).squeeze(1), weights.detach().float(),
                                              reduction="none")
    others = F.one_hot(a, width) == 0
    push_down = (F.softplus(z) * others).sum(-1) / (nb - 1).clamp_min(1)   # BCE(sigmoid(z), 0) = softplus(z)
    return (data + conservative * push_down).mean()


def behavior_loss(logits: Tensor, actions: Tensor, sigma: float = 0.0, num_bins: Tensor | None = None) -> Tensor:
    """Cross-entropy of pi_beta on the data tokens: this is also the SFT/BC baseline.

    sigma > 0: the label is not the data bin alone but a Gaussian of width sigma (in bins) around it,
    integrated over each bin and renormalised over the row's `num_bins` (HL-Gauss, Imani & White 2018;
    Farebrother et al. 2024). Why: action bins are ordered, and one-hot labels treat bin 14 as unlike
    bin 15 as it is unlike bin 0; with noisy logs (an operator's 0.2 action noise is ~3 bins) a one-hot
    model fits each frame's noise exactly and its argmax follows it, a smoothed one learns where the
    mass is. Rows with <= 2 bins (a binary gripper) keep the one-hot label.
    """
    if sigma <= 0:
        return F.cross_entropy(logits.float(), actions.long())
    labels = smoothed_labels(actions, logits.shape[-1], sigma, num_bins)
    return -(labels * logits.float().log_softmax(-1)).sum(-1).mean()


def smoothed_labels(actions: Tensor, width: int, sigma: float, num_bins: Tensor | None = None) -> Tensor:
    """(N, width) HL-Gauss labels: the mass of N(a + 0.5, sigma^2) on each bin [k, k + 1), zero past num_bins."""
    a = actions.long()
    nb = torch.full_like(a, width) if num_bins is None else num_bins.long().to(a.device)
    edges = torch.arange(width + 1, device=a.device, dtype=torch.float32)
    normal = torch.distributions.Normal(a.float()[:, None] + 0.5, sigma)
    cdf = normal.cdf(edges[None, :])
    q = (cdf[:, 1:] - cdf[:, :-1]) * (edges[None, :-1] < nb[:, None])
    q = q / q.sum(-1, keepdim=True).clamp_min(1e-12)
    one_hot = F.one_hot(a, width).float()
    return torch.where((nb <= 2)[:, None], one_hot, q)


def token_rewards_discounts(rewards: Tensor, dones: Tensor, num_dims: int, gamma: float) -> tuple[Tensor, Tensor]:
    """Per-token reward and discount of the token MDP (docs/design.md §2.2), shape (T, D) each.

    Inside an env step: reward 0, discount 1. Last dimension: the env reward and gamma * (1 - done).
    `dones` must be true terminations only; a time-limit truncation is not terminal and bootstraps.
    """
    steps = rewards.shape[0]
    tok_r = torch.zeros(steps, num_dims, dtype=torch.float32, device=rewards.device)
    tok_d = torch.ones(steps, num_dims, dtype=torch.float32, device=rewards.device)
    tok_r[:, -1] = rewards.float()
    tok_d[:, -1] = gamma * (1.0 - dones.float())
    return tok_r, tok_d


@torch.no_grad()
def polyak_update(target: torch.nn.Module, online: torch.nn.Module, alpha: float) -> None:
    """theta_bar <- (1 - alpha) theta_bar + alpha theta, over every parameter (frozen ones are equal in
    both, so averaging them changes nothing and needs no filter)."""
    for p_t, p in zip(target.parameters(), online.parameters()):
        p_t.lerp_(p.detach().to(p_t.dtype), alpha)
