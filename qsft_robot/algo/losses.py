"""The loss of one batch: behaviour cloning for pi_beta, Q-SFT for theta (docs/design.md §2.4-2.5).

Model-agnostic pieces (targets, loss, token rewards) are in algo/qsft.py; this module runs the
networks over a batch of transitions through the VLM adapter and puts the pieces together.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qsft_robot.algo.networks import Networks
from qsft_robot.algo.qsft import (behavior_loss, bellman_targets, mc_lower_bound, qsft_loss, sigmoid_q_loss,
                                  token_rewards_discounts)
from qsft_robot.data.transitions import Transitions


@dataclass
class LossContext:
    """What a batch loss needs besides the batch: the adapter, the data, the algorithm settings
    (config.AlgoConfig), the networks (`nets`) and the views gradients flow through (`views`), and
    frozen pi_beta's cached logits (N, D, B) once pi_beta is frozen, and the training step (algo.sarsa_steps)."""
    adapter: object
    data: Transitions
    algo: object
    nets: Networks
    views: Networks
    pi_cache: torch.Tensor | None = None
    step: int = 0

    @property
    def next_value(self) -> str:
        """The backup of this step: pi_beta's own value (expectation) for the first algo.sarsa_steps."""
        return "expectation" if self.step < self.algo.sarsa_steps else self.algo.next_value


def batch_loss(ctx: LossContext, idx: np.ndarray, images=None, next_images=None) -> tuple[torch.Tensor, dict]:
    """Loss and statistics of transitions idx. `images`/`next_images`: frames prefetched by a worker."""
    ad, d, D = ctx.adapter, ctx.data, ctx.adapter.num_dims
    images, instr, state = d.inputs(idx, images)
    tokens = torch.as_tensor(d.tokens[idx])
    # one encoding of (P_t, b_t^{1:D-1}) serves pi_beta, theta and theta_bar
    cur = ad.encode(images, instr, state, d.tokens[idx][:, :-1])
    if ctx.pi_cache is not None:
        beh_logits = ctx.pi_cache[idx].float()
    else:
        beh_logits = ad.action_logits(ctx.views.pi_beta, cur, D, with_dummy=False)
    bins = torch.as_tensor(ad.action_tokenizer.bins).repeat(len(idx))  # each row's bin count, row-major (N, D)
    bc = behavior_loss(beh_logits.reshape(-1, beh_logits.shape[-1]), tokens.reshape(-1), ctx.algo.label_sigma, bins)
    with torch.no_grad():
        entropy = float(-(beh_logits.softmax(-1) * beh_logits.log_softmax(-1)).sum(-1).mean())
    stats = {"bc_loss": bc.item(), "pi_entropy": entropy}
    behavior_first = ctx.algo.behavior == "frozen" and ctx.pi_cache is None
    if not ctx.nets.qsft or behavior_first:  # BC baselines, or pi_beta's own phase before it freezes
        with torch.no_grad():
            p_data = float(beh_logits.softmax(-1).gather(-1, tokens[..., None]).mean())
        return bc, {**stats, "q_loss": 0.0, "mean_target": 0.0, "mean_p_data": p_data}
    q_logits = ad.action_logits(ctx.views.theta, cur, D, with_dummy=True)
    if ctx.algo.target == "return_to_go":  # Monte-Carlo targets: no target network, no bootstrap
        w = torch.as_tensor(d.mc_return[idx]).float().clamp(0.0, 1.0).repeat_interleave(D)
    elif ctx.algo.target == "n_step":
        w = _n_step_weights(ctx, idx, next_images)
    else:
        w = _bellman_weights(ctx, idx, images, instr, state, cur, beh_logits, next_images)
    if ctx.algo.mc_lower_bound:
        w = mc_lower_bound(w, torch.as_tensor(d.mc_return[idx]))
    q_logits, tokens = q_logits.reshape(-1, q_logits.shape[-1]), tokens.reshape(-1)
    rewarded = torch.as_tensor(np.repeat(d.reward[idx] >= 0.999, D))  # a logged success: w = 1 by right
    if d.boot_valid is not None:   # a cut log's last action has no n-step target (data/n_step.py)
        keep = torch.as_tensor(np.repeat(d.boot_valid[idx], D))
        q_logits, tokens, bins, w, rewarded = (x[keep] for x in (q_logits, tokens, bins, w, rewarded))
    return _q_loss(ctx, q_logits, tokens, w, bins, bc, stats, rewarded)


def _n_step_weights(ctx: LossContext, idx, boot_images) -> torch.Tensor:
    """One target per env step, shared by its D tokens (data/n_step.py): the logged rewards of the window
    plus the discounted value of its bootstrap state, V from theta_bar at that state's prompt alone (one
    forward over N prompts) and pi_beta there (cached when frozen). Flattened (N*D,), no gradient."""
    ad, d, nets = ctx.adapter, ctx.data, ctx.nets
    boot = d.boot_index[idx]
    b_images, b_instr, b_state = d.inputs(boot, boot_images)
    with torch.no_grad():
        prompts = ad.encode(b_images, b_instr, b_state, None)
        q_boot = ad.action_logits(nets.theta_bar, prompts, 1, with_dummy=True)[:, 0]
        beh_boot = (ctx.pi_cache[boot, 0].float() if ctx.pi_cache is not None
                    else ad.action_logits(nets.pi_beta, prompts, 1, with_dummy=False)[:, 0])
    a = ctx.algo
    w = bellman_targets(q_boot, beh_boot, torch.as_tensor(d.boot_reward[idx]), torch.as_tensor(d.boot_discount[idx]),
                        a.support_eps, ctx.next_value, a.expectile, a.emaq_samples, a.critic)
    return w.repeat_interleave(ad.num_dims)


def _bellman_weights(ctx: LossContext, idx, images, instr, state, cur, beh_logits, next_images) -> torch.Tensor:
    """Targets w of every action token of the batch (flattened (N*D,)), no gradient (§2.4)."""
    ad, d, D, nets = ctx.adapter, ctx.data, ctx.adapter.num_dims, ctx.nets
    nidx = d.next_index[idx]
    n_images, n_instr, n_state = d.inputs(nidx, next_images)
    with torch.no_grad():
        if ctx.pi_cache is not None:
            tq_cur, tq_next = ad.teacher_forced_and_next_logits(
                nets.theta_bar, images, instr, state, d.tokens[idx], n_images, n_instr, n_state, d.tokens[nidx],
                with_dummy=True)
            beh_next = ctx.pi_cache[nidx, 0].float()
        else:
            tq_cur = ad.action_logits(nets.theta_bar, cur, D, with_dummy=True)
            nxt = ad.encode(n_images, n_instr, n_state, None)
            tq_next = ad.action_logits(nets.theta_bar, nxt, 1, with_dummy=True)[:, 0]
            beh_next = ad.action_logits(nets.pi_beta, nxt, 1, with_dummy=False)[:, 0]
    r, disc = token_rewards_discounts(torch.as_tensor(d.reward[idx]), torch.as_tensor(d.done[idx]), D,
                                      ctx.algo.gamma)
    # next token state of dim i < D is (prompt, b^1..b^i): position i+1 of the same sequence
    next_q = torch.cat([tq_cur[:, 1:], tq_next[:, None]], dim=1)
    next_b = torch.cat([beh_logits.detach()[:, 1:], beh_next[:, None]], dim=1)
    a = ctx.algo
    return bellman_targets(next_q.reshape(-1, next_q.shape[-1]), next_b.reshape(-1, next_b.shape[-1]),
                           r.reshape(-1), disc.reshape(-1), a.support_eps, ctx.next_value, a.expectile,
                           a.emaq_samples, a.critic)


def _q_loss(ctx: LossContext, q_logits, tokens, w, bins, bc, stats, rewarded) -> tuple[torch.Tensor, dict]:
    """The Q-SFT loss and its statistics. frac_saturated counts the targets >= 0.999 that no logged
    success explains (`rewarded`: the token's step earned the success reward): the backup's own
    saturation, which short successful logs would otherwise hide among their reward steps."""
    if len(w) == 0:  # every row of a (tiny) batch was a cut log's last action: nothing to fit this step
        return (bc if ctx.pi_cache is None else q_logits.sum() * 0.0), {**stats, "q_loss": 0.0}
    a = ctx.algo
    if a.critic == "sigmoid":
        ql = sigmoid_q_loss(q_logits, tokens, w, a.conservative, bins)
        p_data = q_logits.gather(-1, tokens[..., None]).sigmoid().mean()   # the logged bins' Q
    else:
        ql = qsft_loss(q_logits, tokens, w, a.leftover, a.label_sigma, bins)
        p_data = q_logits.softmax(-1).gather(-1, tokens[..., None]).mean()
    loss = ql if ctx.pi_cache is not None else ql + bc
    return loss, {**stats, "q_loss": ql.item(), "mean_target": w.mean().item(), "mean_p_data": p_data.item(),
                  "frac_saturated": ((w >= 0.999) & ~rewarded).float().mean().item()}
